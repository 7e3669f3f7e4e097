"""Grad-ELLM: gradient-weighted value vectors read through a loosened attention map.

Grad-ELLM (Huang & Chan, "Grad-ELLM: Gradient-based Explanations for Decoder-only LLMs",
arXiv:2601.03089, 2026) carries Grad-ECLIP (Zhao et al., ICML 2024; code at
github.com/Cyang-Zhao/Grad-Eclip) over to decoder-only models. The logit ``l_t`` of the token
generated at step ``t`` is approximated layer by layer as a linear function of the attention output
``o_t`` at the position that predicts it, ``l_t ≈ wᵀ o_t`` with ``w = ∂l_t/∂o_t`` ("channel
importance"), and ``o_t[c] = Σ_i softmax(q_t·k_i/√d)_i v_ic`` is a sum over input tokens. Replacing
the softmax by a *loosened* attention ``λ_i`` in [0, 1] ("spatial importance", because softmax maps
are too peaked to rank tokens) gives the heatmap of one layer::

    H_i = ReLU( Σ_c  w_c · λ_i · v_ic )

The paper's text was not available here beyond its abstract and secondary summaries (the equations
above are taken from them); the official Grad-ECLIP code was read for the open details. How each
detail is settled in this implementation:

**Target and steps.** Each answer token ``a_t`` is one generation step, teacher forced: one forward
pass over prompt + answer, then ``l_t`` is the raw *logit* of ``a_t`` at position
``p_t = n_prompt - 1 + t`` (the LM head runs on the ``T`` answer positions only). ``w`` comes from
:func:`torch.autograd.grad` of ``l_t`` with respect to the hooked attention outputs only (no
parameter gradients); all ``T`` steps are differentiated together in vectorised backward passes of
``backward_batch`` steps (``is_grads_batched``), which the per-step gradients equal exactly.

**Attention output, values, heads.** ``o_t`` is the input of ``o_proj`` (the heads' outputs
concatenated, before the output projection, as Grad-ECLIP differentiates the attention output
before ``out_proj``), so channel ``c`` belongs to head ``h = c // head_dim``. ``v_i`` is the output
of ``v_proj`` at position ``i``, repeated over the query heads that share it (grouped-query
attention), so ``o_t[c] = Σ_i A_h[t, i] v_ic`` holds channel by channel. The sum over ``c`` is a sum
over heads of ``λ_{h,i} · (w_h · v_{h,i})``: each head has its own spatial map.

**Loosened attention** (``spatial=``). ``"cosine"`` (default, as in the Grad-ECLIP code): the
cosine similarity of the post-RoPE query ``q_{h,t}`` and each key ``k_{h,i}``, min-max normalised to
[0, 1] over the keys position ``p_t`` can see (causal mask and, for sliding-window layers, the
window). ``"scores"``: the same normalisation applied to the scaled dot products ``q·k·scaling``
(the pre-softmax attention logits). Positions the query cannot see get ``λ = 0``; a head whose
visible scores are all equal gets ``λ = 1`` everywhere it sees. Queries and keys come from
:func:`attribsdk.scoring.capture.recording` during the same forward pass; the model keeps its SDPA
attention (no ``S × S`` weights are ever formed).

**Layers** (``n_layers=``, ``layers=``). The heatmaps of the last ``n_layers`` layers (default 4,
clamped to the model's depth) are summed; ``layers`` lists layer indices explicitly instead
(negative counts from the end). **Rectification** (``rectify=``): ``"relu"`` (default, the paper)
clips each layer's map at zero before the sum; with ``rectify_each_layer=False`` the layer maps
are summed first and the sum is clipped (as Grad-ECLIP's text-encoder code does). ``"abs"`` keeps
magnitudes and ``"none"`` the signed sum -- not the paper's method, but see the caveat below.

**Aggregation over the answer.** Each step's map over the prompt tokens (earlier answer tokens are
explained too by the paper but are not features here) is divided by its L1 norm -- every step
counts equally, as Grad-ECLIP normalises its maps by their sum -- and the ``T`` maps are averaged.
Scores are >= 0 with ``"relu"``/``"abs"`` and sum to 1 over the prompt (unless a map is all zero).

**Caveat, measured.** The gradient is a linearisation at the input. On the planted test model
(tests/tiny_models.py) the answer depends on one city word, read by layer 0's attention, but the
logit is saturated along that attention output: scaling the output at the predicting position by
0.9 or 1.1 moves the answer logit by +0.05 / -0.06 (the *wrong* way), while removing it (scale 0)
drops the logit by 3.2 and log p(answer) from -0.015 to -3.3 (means over 20 held-out prompts). The
city's contribution is therefore the largest in magnitude but *negative*, and the paper's ReLU
discards it. Over those 20 prompts: with the defaults the city ranks first on 0/20; with
``rectify="none"`` its score is the most negative on 20/20; with ``rectify="abs"`` it ranks first
on 20/20 (tests/unit/test_whitebox_grad_ellm.py).

Cost: one forward pass and ``ceil(T / backward_batch)`` batched backward passes; memory: the
autograd graph of one sequence plus, per explained layer, its queries, keys and values.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, StrictInt, field_validator

from ..errors import ConfigError, ScoringError
from ..scoring.capture import recording, resolve_layer
from ._core import WhiteboxInput, answer_logits, embed
from ._method import WhiteboxConfig, WhiteboxMethod, WhiteboxScores

__all__ = ["GradELLM", "GradELLMConfig", "head_values", "loosened_attention", "resolve_layers"]


class GradELLMConfig(WhiteboxConfig):
    """Options of :class:`GradELLM` (see the module docs for what each one means).

    ``n_layers``: how many of the last layers to explain (clamped to the model's depth).
    ``layers``: explicit layer indices (negative counts from the end); overrides ``n_layers``.
    ``spatial``: the loosened attention, ``"cosine"`` or ``"scores"``. ``rectify``: ``"relu"``
    (the paper), ``"abs"`` or ``"none"``; ``rectify_each_layer``: rectify every layer's map
    (default) or only their sum. ``backward_batch``: answer steps per vectorised backward pass.
    """

    n_layers: StrictInt = Field(default=4, ge=1, le=1024)
    layers: tuple[StrictInt, ...] | None = None
    spatial: Literal["cosine", "scores"] = "cosine"
    rectify: Literal["relu", "abs", "none"] = "relu"
    rectify_each_layer: bool = True
    backward_batch: StrictInt = Field(default=8, ge=1, le=1024)

    @field_validator("layers")
    @classmethod
    def _check_layers(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("layers must name at least one layer (or be None)")
        if len(set(value)) != len(value):
            raise ValueError(f"layers has duplicates: {value}")
        return value


def resolve_layers(n_layers: int, layers: tuple[int, ...] | None, depth: int) -> list[int]:
    """Sorted absolute layer indices: ``layers`` resolved against a model of ``depth`` layers
    (negative indices count from the end; :class:`ConfigError` when out of range or when two
    indices name the same layer), else the last ``min(n_layers, depth)`` layers."""
    if layers is None:
        return list(range(max(0, depth - n_layers), depth))
    resolved = [resolve_layer(int(layer), depth) for layer in layers]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"layers {layers} name the same layer twice in a {depth}-layer model")
    return sorted(resolved)


def loosened_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    position: int,
    *,
    kind: str = "cosine",
    scaling: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Grad-ECLIP's "loosened" attention of one query position: ``[heads, S]`` float32 in [0, 1].

    ``query`` is ``[heads, head_dim]`` (the post-RoPE query at ``position``), ``keys`` is
    ``[heads, S, head_dim]`` (post-RoPE, already repeated over grouped query heads). ``kind`` is
    ``"cosine"`` (cosine similarity) or ``"scores"`` (``q·k·scaling``, ``scaling`` defaulting to
    ``head_dim ** -0.5``). Scores are min-max normalised per head over the keys the query sees
    (``j <= position`` and, with a sliding ``window``, ``j > position - window``); invisible keys
    get 0, and a head whose visible scores are all equal gets 1 on them.
    """
    q = query.float()
    k = keys.float()
    if kind == "cosine":
        raw = torch.nn.functional.cosine_similarity(q.unsqueeze(1), k, dim=-1)  # [H, S]
    elif kind == "scores":
        scale = float(scaling) if scaling is not None else float(q.shape[-1]) ** -0.5
        raw = torch.einsum("hd,hsd->hs", q, k) * scale
    else:
        raise ConfigError(f"unknown loosened attention {kind!r}; use 'cosine' or 'scores'")
    pos = torch.arange(k.shape[1], device=k.device)
    visible = pos <= position
    if window:
        visible &= pos > position - int(window)
    vis = visible.unsqueeze(0).expand_as(raw)
    lo = raw.masked_fill(~vis, float("inf")).amin(-1, keepdim=True)
    hi = raw.masked_fill(~vis, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    flat = span <= 0
    lam = torch.where(flat, torch.ones_like(raw), (raw - lo) / torch.where(flat, torch.ones_like(span), span))
    return lam.masked_fill(~vis, 0.0)


def head_values(value: torch.Tensor, kv_heads: int, heads: int) -> torch.Tensor:
    """``v_proj`` output ``[S, kv_heads · head_dim]`` → per query head ``[heads, S, head_dim]``
    float32, each KV head repeated over the ``heads // kv_heads`` query heads that share it (the
    layout of transformers' ``repeat_kv``), so that ``o_t[h·D + d] = Σ_i A_h[t, i] · out[h, i, d]``
    for the attention output ``o`` (the input of ``o_proj``)."""
    dim = int(value.shape[-1]) // kv_heads
    per_kv = value.float().reshape(-1, kv_heads, dim).transpose(0, 1)  # [kv, S, D]
    return per_kv.repeat_interleave(heads // kv_heads, dim=0)


def _attention_modules(lm: Any, layers: list[int]) -> dict[int, Any]:
    modules: dict[int, Any] = {}
    for layer in layers:
        try:
            module = lm.decoder.layers[layer].self_attn
        except (AttributeError, IndexError, TypeError) as exc:
            raise ConfigError(
                f"grad-ellm: cannot find the self-attention module of layer {layer} in "
                f"{type(lm.decoder).__name__} (expected decoder.layers[i].self_attn)"
            ) from exc
        if not all(hasattr(module, name) for name in ("v_proj", "o_proj")):
            raise ConfigError(
                f"grad-ellm: {type(module).__name__} has no v_proj/o_proj projections to read "
                "values and attention outputs from"
            )
        if getattr(module, "sinks", None) is not None:
            raise ConfigError(f"grad-ellm: {type(module).__name__} uses attention sinks (not supported)")
        modules[layer] = module
    return modules


class GradELLM(WhiteboxMethod):
    """Grad-ELLM (Huang & Chan, 2026): per answer token, ``ReLU(Σ_c w_c λ_i v_ic)`` summed over the
    last few layers, with ``w`` the gradient of the answer token's logit with respect to the
    attention output at the predicting position and ``λ`` the loosened (min-max normalised)
    attention; the per-token maps are L1-normalised and averaged over the answer. Every detail the
    paper leaves open is settled in :mod:`attribsdk.whitebox.grad_ellm`. One forward pass; scores
    are >= 0 with the default rectification.
    """

    name = "grad-ellm"
    Config: ClassVar[type[WhiteboxConfig]] = GradELLMConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        cfg = self.cfg
        assert isinstance(cfg, GradELLMConfig)
        lm = wi.lm
        layers = resolve_layers(cfg.n_layers, cfg.layers, lm.n_layers)
        modules = _attention_modules(lm, layers)
        outputs: dict[int, torch.Tensor] = {}
        values: dict[int, torch.Tensor] = {}

        def keep_output(layer: int) -> Any:
            def hook(module: Any, args: tuple[Any, ...]) -> None:
                outputs[layer] = args[0]

            return hook

        def keep_values(layer: int) -> Any:
            def hook(module: Any, args: tuple[Any, ...], out: torch.Tensor) -> None:
                values[layer] = out.detach()

            return hook

        handles = []
        try:
            for layer, module in modules.items():
                handles.append(module.o_proj.register_forward_pre_hook(keep_output(layer)))
                handles.append(module.v_proj.register_forward_hook(keep_values(layer)))
            wanted = {(layer, which) for layer in layers for which in ("query", "key")}
            with torch.inference_mode(False), torch.enable_grad(), recording(wanted) as rec:  # type: ignore[arg-type]
                # A leaf that requires grad keeps the graph even if the parameters are frozen.
                x = embed(wi).detach().clone().requires_grad_(True)
                logits, _ = answer_logits(wi, x)  # [1, T, V]
                picked = logits[0].gather(-1, wi.answer_tensor.view(-1, 1)).squeeze(-1)  # [T]
                missing = [layer for layer in layers if layer not in outputs or layer not in values]
                if missing:
                    raise ScoringError(f"grad-ellm: layers {missing} ran no attention output projection")
                weights = self._channel_weights(wi, picked, [outputs[layer] for layer in layers], cfg)
        finally:
            for handle in handles:
                handle.remove()
        target_logit = picked.detach()
        outputs.clear()  # free the graph: only the detached weights, queries, keys and values are needed
        rec.tensors.update({k: v.detach() for k, v in rec.tensors.items()})
        del logits, picked, x

        n = wi.n_prompt
        positions = wi.answer_positions.tolist()
        total = torch.zeros(n, dtype=torch.float64)
        for t, p in enumerate(positions):
            maps = []
            for li, layer in enumerate(layers):
                query, key = rec.tensors.get((layer, "query")), rec.tensors.get((layer, "key"))
                if query is None or key is None:
                    raise ScoringError(
                        f"grad-ellm: layer {layer} recorded no query/key vectors (is the model's "
                        "attention still attribsdk's capture implementation?)"
                    )
                maps.append(
                    self._layer_map(
                        modules[layer],
                        query[0].detach(),
                        key[0].detach(),
                        values[layer][0],
                        weights[li][t],
                        p,
                        n,
                        cfg,
                    )
                )
            step = self._combine(maps, cfg)
            norm = float(step.abs().sum())
            total += step / norm if norm > 0 else step
        scores = (total / len(positions)).numpy()
        return WhiteboxScores(
            token_scores=np.asarray(scores, dtype=np.float64),
            forward_passes=1,
            extras={
                "grad_ellm_layers": ",".join(str(layer) for layer in layers),
                "grad_ellm_backward_passes": -(-len(positions) // cfg.backward_batch),
                "target_logit_mean": float(target_logit.mean()),
            },
        )

    @staticmethod
    def _channel_weights(
        wi: WhiteboxInput, picked: torch.Tensor, outputs: list[torch.Tensor], cfg: GradELLMConfig
    ) -> list[torch.Tensor]:
        """``w`` per layer: ``[T, heads·head_dim]`` float32, the gradient of step ``t``'s logit with
        respect to that layer's attention output at the position predicting step ``t``."""
        steps = int(picked.shape[0])
        positions = wi.answer_positions
        rows: list[list[torch.Tensor]] = [[] for _ in outputs]
        eye = torch.eye(steps, dtype=picked.dtype, device=picked.device)
        for lo in range(0, steps, cfg.backward_batch):
            hi = min(steps, lo + cfg.backward_batch)
            grads = torch.autograd.grad(
                picked, outputs, grad_outputs=eye[lo:hi], retain_graph=True, is_grads_batched=True
            )  # each [b, 1, S, C]
            idx = torch.arange(lo, hi, device=picked.device)
            for li, grad in enumerate(grads):
                rows[li].append(grad[idx - lo, 0, positions[lo:hi]].detach().float())
        return [torch.cat(r) for r in rows]

    @staticmethod
    def _layer_map(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        weight: torch.Tensor,
        position: int,
        n_prompt: int,
        cfg: GradELLMConfig,
    ) -> torch.Tensor:
        """One layer's unrectified map ``Σ_h λ_{h,i} (w_h · v_{h,i})`` over the prompt: ``[n_prompt]``
        float64 on the CPU. ``query`` ``[heads, S, D]``, ``key`` ``[kv_heads, S, D]``, ``value``
        ``[S, kv·D]``, ``weight`` ``[heads·D]``."""
        heads, kv_heads, dim = int(query.shape[0]), int(key.shape[0]), int(query.shape[-1])
        if heads % kv_heads or value.shape[-1] != kv_heads * dim or weight.shape[-1] != heads * dim:
            raise ScoringError(
                f"grad-ellm: unexpected attention shapes (query {tuple(query.shape)}, key "
                f"{tuple(key.shape)}, value {tuple(value.shape)}, output gradient {tuple(weight.shape)})"
            )
        keys = key.float().repeat_interleave(heads // kv_heads, dim=0)  # [H, S, D], as repeat_kv
        vals = head_values(value, kv_heads, heads)  # [H, S, D]
        scaling = getattr(module, "scaling", None)
        lam = loosened_attention(
            query[:, position],
            keys,
            position,
            kind=cfg.spatial,
            scaling=float(scaling) if scaling is not None else None,
            window=getattr(module, "sliding_window", None),
        )  # [H, S]
        w = weight.view(heads, dim)
        per_head = torch.einsum("hsd,hd->hs", vals[:, :n_prompt], w)  # w_h · v_{h,i}
        return (lam[:, :n_prompt] * per_head).sum(0).double().cpu()

    @staticmethod
    def _combine(maps: list[torch.Tensor], cfg: GradELLMConfig) -> torch.Tensor:
        def rect(x: torch.Tensor) -> torch.Tensor:
            if cfg.rectify == "relu":
                return torch.relu(x)
            if cfg.rectify == "abs":
                return x.abs()
            return x

        if cfg.rectify_each_layer:
            return torch.stack([rect(m) for m in maps]).sum(0)
        return rect(torch.stack(maps).sum(0))
