"""HEAT: semantic flow x (Hessian sensitivity + information loss), after Pramanik et al.

The method is HETA, "Hessian-Enhanced Token Attribution: Interpreting Autoregressive LLMs"
(Pramanik, Maliha, Bastian & Jha, ICLR 2026, arXiv:2604.13258; the issue calls it HEAT). Its
official code (github.com/VishalPramanik/HETA, Apache-2.0) was read for every detail the paper's
summary leaves open; where this implementation departs from it, it says so below. The attribution
of prompt token ``x_i`` to the answer ``x_T`` is (the paper's Eq. 5)::

    tr(x_i → x_T) = M_T[i] · (β · S_i + γ · I_i)

**The target.** The answer is fixed and teacher forced. ``f = (1/T) Σ_t log p(a_t | prompt, a_<t)``
(nats/token) is the target of ``S``; ``M_T`` is read at the ``T`` positions that predict the
answer tokens; ``I`` averages over the same ``T`` positions. (The official code explains one target
token; a multi-token answer is explained as a whole, as every white-box method here does.)

**M_T, semantic flow.** Attention rollout (Abnar & Zuidema, 2020) conditioned on the target: per
layer the eager attention weights averaged over heads, ``Â = 0.5·A + 0.5·I`` (the residual
connection) with rows renormalised, multiplied from the top layer down, ``R = Â_L ⋯ Â_1``; the rows
of ``R`` at the ``T`` answer-predicting positions are averaged and restricted to the feature
tokens, then renormalised to sum to 1 over them (tokens no path reaches get 0 -- the causal gate).
The official code normalises over all context tokens instead; over a deep model nearly all of the
rollout mass sits outside the features (SmolLM2, 30 layers, a HotpotQA prompt: 0.9992 on the first
token, the attention sink, and 0.00006 on the features), which would only shrink every score by
one common factor. The share of the rollout mass on prompt tokens that reaches the features,
before renormalising, is reported as ``extras["heat_flow_on_features"]``.
Departures from the official code: heads are averaged per layer before the rollout (the official
code chains head ``h`` of one layer with head ``h`` of the next, although heads of different layers
are unrelated), the final rollout is used (not a sum over per-layer partial rollouts), and rows are
not weighted by value-vector norms. The weights come from a forward pass with transformers'
``"eager"`` attention (the only implementation that returns them, and the only one that is twice
differentiable: PyTorch's CPU SDPA kernel has no double backward); the model's attention is switched
for the pass and restored to :data:`~attribsdk.scoring.capture.ATTENTION_NAME` in a ``finally``.

**S_i, Hessian sensitivity.** ``S_i = ‖H_ii‖_F``, the Frobenius norm of token ``i``'s diagonal block
of the Hessian of ``f`` with respect to the residual stream (the input embeddings by default): how
strongly the target curves when token ``i``'s own representation moves, in any direction. The
official code estimates ``E_r ‖Π_i H Π_i r‖₁`` with Rademacher probes ``r`` restricted to block
``i`` -- ``m`` Hessian-vector products *per token*, thousands for a real prompt. Here the blocks are
probed in groups ("colouring", ``estimator="hutchinson"``): each of ``probes`` rounds draws one
Rademacher vector ``ρ`` over the feature tokens, splits the feature tokens at random into
``colors`` groups and runs one HVP per group with ``ρ`` restricted to it; token ``i`` accumulates
``‖(H ρ_group)_i‖²``. ``E‖(H ρ_g)_i‖² = ‖H_ii‖²_F + Σ_{j in g, j≠i} ‖H_ij‖²_F``: unbiased when
``colors`` is at least the number of feature tokens (then it *is* the official block-restricted
estimator, in the L2 norm), otherwise it includes the curvature coupling to the ~(n/colors - 1)
tokens sharing the group. Cost: ``probes · min(colors, n)`` HVPs, each about three forward passes
(measured on SmolLM2); the defaults ``probes=1, colors=8`` spend 8 (on the planted model one probe in
2 groups already ranks the city first on 20/20 prompts). ``estimator="low_rank"`` is the
authors' listed low-rank option: a randomised range finder (``rank`` HVPs on Gaussian probes,
QR, ``rank`` more HVPs) gives ``H ≈ Q B Qᵀ`` on the feature tokens' subspace and
``S_i = ‖Q_i B Q_iᵀ‖_F``; exact when ``rank`` reaches the subspace's dimension, otherwise it keeps the
dominant curvature directions. No Hessian is ever formed: every HVP is one double-backward pass
(Pearlmutter's trick, :func:`torch.autograd.grad` with ``create_graph=True`` once, then
``retain_graph`` per product), with respect to the hidden states only.

Why this quantity (measured on the planted test model, 8 prompts where one city word decides the
answer): the exact ``‖H_ii‖_F``, ``|tr H_ii|`` and the official ``E‖H_ii r‖₁`` all rank the city
first on 8/8; the norm of the whole block row ``Σ_j ‖H_ij‖²`` (what probes over *all* tokens at
once estimate) on 7/8 with smaller margins; ``‖(H g)_i‖`` on 7/8; and the curvature along the
masking direction, ``|x_iᵀ H_ii x_i|``, on 0/8. The planted model is saturated (p(answer) ≈ 0.98),
so first-order signals are weak and the curvature of the token's own block is what stands out.

**I_i, information loss.** ``KL(p(·|prompt) ‖ p(·|prompt without x))`` over the answer positions,
averaged over the ``T`` answer tokens (nats). ``masking="feature"`` (default): ``x`` is the feature
that contains token ``i`` -- the prompt is re-rendered without it (exactly as RoPE-LIME masks) and
all ``M + 1`` prompts are re-scored in one batched
:func:`~attribsdk.scoring.engine.score_request` with the ``"kl"`` target; every token of a feature
gets the feature's value. ``masking="token"``: each feature token's input embedding is set to zero
(the official code's default ``"zero"`` scheme; positions are kept) and the masked sequences run in
batches bounded by the model's batch limits, the LM head on the answer positions only. Tiny
negative values (float noise) are clipped to 0.

**Combination.** ``S`` and ``I`` have different units (curvature per squared embedding unit vs.
nats), so with ``normalize=True`` (default) each is divided by its sum over the feature tokens
before ``β · S + γ · I``; ``β`` and ``γ`` are then relative weights (defaults 0.5/0.5, as the
official configuration). ``normalize=False`` adds the raw values, as the official code does.
Only feature tokens get scores (the rest are in no feature); a feature's score is the sum over its
tokens, so all scores are >= 0.

**Approximations the authors list** (all optional): *layer sampling* (``layers=k``): only the
last ``k`` layers are differentiated -- ``S`` is the curvature with respect to the residual stream
entering layer ``L - k`` (the layers below run without a graph) and the rollout multiplies those
``k`` layers only; memory and time of the HVPs shrink about in proportion. *Low rank*
(``estimator="low_rank"``). *Windowing* (``window=w``): when the feature tokens span more than
``w`` tokens, the span is cut into windows of ``w`` tokens overlapping by ``window_overlap``; each
window runs as its own sequence -- the prompt tokens before the first feature, the window, the
prompt tokens after the last feature, then the answer -- and ``M`` and ``S`` are averaged over the
windows that contain a token (then ``M`` is renormalised), as in the official code. ``I`` always
uses the whole prompt (it is batched re-scoring, already memory-bounded).

Memory: the eager pass keeps the ``heads × S × S`` attention of each differentiated layer for the
double backward, plus one ``S × S`` head average per layer for the rollout; the LM head runs on the
answer positions only, so no ``S × V`` tensor exists. Use ``layers`` and ``window`` to bound it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, StrictInt, model_validator

from ..errors import ConfigError, ScoringError
from ..scoring.capture import ATTENTION_NAME
from ._core import WhiteboxInput, answer_logits, embed, leave_one_out
from ._method import WhiteboxConfig, WhiteboxMethod, WhiteboxScores

__all__ = [
    "Heat",
    "HeatConfig",
    "TargetGraph",
    "attention_rollout",
    "block_curvature_hutchinson",
    "block_curvature_low_rank",
    "eager_attention",
    "make_hvp",
    "target_graph",
]

#: An HVP operator: ``v`` (``[S, hidden]``) → ``H v`` (``[S, hidden]``), ``H`` the target's Hessian.
Hvp = Callable[[torch.Tensor], torch.Tensor]


class HeatConfig(WhiteboxConfig):
    """Options of :class:`Heat` (the module docs explain each one).

    ``beta``/``gamma``: weights of the Hessian sensitivity and the information loss (>= 0, not
    both 0). ``estimator``: ``"hutchinson"`` (``probes`` rounds of ``colors`` grouped HVPs) or
    ``"low_rank"`` (``2 · rank`` HVPs). ``layers``: differentiate and roll out only the last
    ``layers`` layers (``None``: all; larger values are clamped to the model's depth).
    ``window``/``window_overlap``: windowed passes over long feature spans (``None``: off).
    ``masking``: ``"feature"`` or ``"token"`` for the information loss. ``normalize``: scale ``S``
    and ``I`` to unit sum before combining. ``batch_size``: sequences per pass for token masking
    (``None``: the model's batch limits).
    """

    beta: float = Field(default=0.5, ge=0.0, allow_inf_nan=False)
    gamma: float = Field(default=0.5, ge=0.0, allow_inf_nan=False)
    estimator: Literal["hutchinson", "low_rank"] = "hutchinson"
    probes: StrictInt = Field(default=1, ge=1, le=4096)
    colors: StrictInt = Field(default=8, ge=1, le=65536)
    rank: StrictInt = Field(default=16, ge=1, le=4096)
    layers: StrictInt | None = Field(default=None, ge=1, le=4096)
    window: StrictInt | None = Field(default=None, ge=2, le=1_000_000)
    window_overlap: float = Field(default=0.5, ge=0.0, lt=1.0)
    masking: Literal["feature", "token"] = "feature"
    normalize: bool = True
    batch_size: StrictInt | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _check_weights(self) -> HeatConfig:
        if self.beta == 0.0 and self.gamma == 0.0:
            raise ValueError("beta and gamma are both 0: every score would be 0")
        return self


# --------------------------------------------------------------------------------------------------
# semantic flow


def attention_rollout(attentions: Sequence[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (``[R]`` positions) of the attention rollout ``Â_L ⋯ Â_1``: ``[R, S]`` float32.

    ``attentions`` holds one ``[S, S]`` (or ``[heads, S, S]``, averaged over heads) attention matrix
    per layer, bottom layer first. Each layer becomes ``Â = 0.5·A + 0.5·I`` with rows renormalised
    to sum to 1, so every returned row sums to 1 (row-stochastic matrices multiply to one). Computed
    from the top down as ``e_rᵀ Â_L ⋯ Â_1`` (``R × S`` work per layer, never ``S × S × S``).
    """
    if not attentions:
        raise ConfigError("attention rollout needs at least one layer")
    seq = int(attentions[0].shape[-1])
    device = attentions[0].device
    out = torch.zeros(int(rows.shape[0]), seq, dtype=torch.float32, device=device)
    out[torch.arange(int(rows.shape[0]), device=device), rows.to(device)] = 1.0
    eye = torch.eye(seq, dtype=torch.float32, device=device)
    for attn in reversed(attentions):
        a = attn.float()
        if a.dim() == 3:
            a = a.mean(0)
        if tuple(a.shape) != (seq, seq):
            raise ScoringError(f"attention rollout: expected [{seq}, {seq}] weights, got {tuple(a.shape)}")
        mixed = 0.5 * a + 0.5 * eye
        mixed = mixed / mixed.sum(-1, keepdim=True).clamp_min(1e-12)
        out = out @ mixed
    return out


# --------------------------------------------------------------------------------------------------
# Hessian-vector products


def make_hvp(target: torch.Tensor, variable: torch.Tensor) -> Hvp:
    """Hessian-vector products of the scalar ``target`` with respect to ``variable`` (a tensor that
    requires grad and that ``target`` depends on), by double backward: the gradient is taken once
    with ``create_graph=True``; each product ``v ↦ ∂(∇f · v)/∂x`` is one more backward pass.
    ``v`` has ``variable``'s shape; the result is detached. Nothing is ever ``numel² `` sized."""
    (grad,) = torch.autograd.grad(target, variable, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(grad, variable, grad_outputs=v.to(grad.dtype), retain_graph=True)
        return hv.detach()

    return hvp


def _rademacher(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0


def block_curvature_hutchinson(
    hvp: Hvp,
    shape: tuple[int, int],
    tokens: np.ndarray,
    *,
    probes: int,
    colors: int,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, int]:
    """Estimate ``‖H_ii‖_F`` for every token ``i`` in ``tokens`` by grouped Rademacher probes.

    ``hvp`` maps ``[S, hidden]`` (``shape``) to ``H v``. Each of ``probes`` rounds draws a Rademacher
    vector over the tokens, splits them at random into ``min(colors, len(tokens))`` near-equal
    groups and applies ``H`` to the vector restricted to each group; token ``i`` accumulates the
    squared norm of its block of the product. Returns (``[S]`` float32 estimates, 0 outside
    ``tokens``; the number of HVPs). Unbiased for ``‖H_ii‖²_F`` when every group holds one token;
    otherwise biased upwards by the couplings ``‖H_ij‖²_F`` to the other tokens of the group.
    """
    seq, hidden = shape
    idx = np.asarray(tokens, dtype=np.int64)
    acc = torch.zeros(seq, dtype=torch.float64)
    if idx.size == 0:
        return acc.float(), 0
    n_groups = min(colors, idx.size)
    count = 0
    for _ in range(probes):
        rho = _rademacher((idx.size, hidden), generator)
        perm = torch.randperm(idx.size, generator=generator).numpy()
        for group in np.array_split(perm, n_groups):
            v = torch.zeros(seq, hidden, dtype=torch.float32)
            v[idx[group]] = rho[group]
            hv = hvp(v.to(device) if device is not None else v).float().cpu()
            acc[idx[group]] += hv[idx[group]].pow(2).sum(-1).double()
            count += 1
    return (acc / probes).sqrt().float(), count


def block_curvature_low_rank(
    hvp: Hvp,
    shape: tuple[int, int],
    tokens: np.ndarray,
    *,
    rank: int,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, int]:
    """Estimate ``‖H_ii‖_F`` from a rank-``rank`` approximation of the Hessian on the tokens' subspace.

    Randomised range finder (Halko, Martinsson & Tropp, 2011): ``Y = H Ω`` for Gaussian ``Ω``
    (``rank`` HVPs), ``Q = qr(Y)``, ``B = Qᵀ H Q`` (``rank`` more HVPs, symmetrised), so
    ``H ≈ Q B Qᵀ`` and ``‖H_ii‖_F ≈ ‖Q_i B Q_iᵀ‖_F = sqrt(tr((B G_i)²))`` with ``G_i = Q_iᵀ Q_i``.
    Exact when ``rank`` is at least ``len(tokens) · hidden``. Returns (``[S]`` float32, 0 outside
    ``tokens``; the number of HVPs).
    """
    seq, hidden = shape
    idx = np.asarray(tokens, dtype=np.int64)
    out = torch.zeros(seq, dtype=torch.float32)
    if idx.size == 0:
        return out, 0
    dim = idx.size * hidden
    k = min(rank, dim)

    def apply(columns: torch.Tensor) -> torch.Tensor:  # [dim, k] -> H restricted, [dim, k]
        cols = []
        for j in range(columns.shape[1]):
            v = torch.zeros(seq, hidden, dtype=torch.float32)
            v[idx] = columns[:, j].view(idx.size, hidden).float()
            hv = hvp(v.to(device) if device is not None else v).float().cpu()
            cols.append(hv[idx].reshape(dim).double())
        return torch.stack(cols, dim=1)

    omega = torch.randn(dim, k, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(apply(omega))  # [dim, k]
    b = q.T @ apply(q)
    b = 0.5 * (b + b.T)
    qi = q.view(idx.size, hidden, k)
    g = torch.einsum("ihr,ihs->irs", qi, qi)  # [n, k, k]
    bg = b.unsqueeze(0) @ g
    sq = torch.einsum("irs,isr->i", bg, bg).clamp_min(0.0)
    out[idx] = sq.sqrt().float()
    return out, 2 * k


# --------------------------------------------------------------------------------------------------
# the differentiated forward pass


@contextmanager
def eager_attention(lm: Any) -> Iterator[None]:
    """Run the block with ``lm``'s model on transformers' eager attention (weights returned, twice
    differentiable); attribsdk's capture attention is restored in a ``finally``."""
    try:
        lm.model.set_attn_implementation("eager")
    except Exception as exc:
        lm.model.set_attn_implementation(ATTENTION_NAME)
        raise ConfigError(f"heat: {type(lm.model).__name__} cannot switch to eager attention: {exc}") from exc
    try:
        yield
    finally:
        lm.model.set_attn_implementation(ATTENTION_NAME)


@dataclass
class TargetGraph:
    """One eager forward pass of a sequence with the autograd graph from layer ``depth`` up.

    ``hidden`` is the residual stream entering layer ``depth`` (``[S, hidden]``, detached; the
    input embeddings when ``depth`` is 0), ``target`` the mean answer log-probability (a scalar in
    the graph), ``attentions`` the head-averaged attention (``[S, S]`` float32) of layers
    ``depth..L-1`` and ``hvp`` the Hessian-vector product of ``target`` with respect to ``hidden``.
    """

    hidden: torch.Tensor
    target: torch.Tensor
    attentions: list[torch.Tensor]
    hvp: Hvp = field(repr=False)


def _layer_stack(lm: Any) -> Any:
    layers = getattr(lm.decoder, "layers", None)
    if layers is None or len(layers) != lm.n_layers:
        raise ConfigError(
            f"heat: cannot find the {lm.n_layers} decoder layers of {type(lm.decoder).__name__}"
        )
    return layers


@contextmanager
def target_graph(
    lm: Any, ids: torch.Tensor, n_prompt: int, answer_ids: Sequence[int], depth: int
) -> Iterator[TargetGraph]:
    """Build :class:`TargetGraph` for ``ids`` (``[S]``: ``n_prompt`` prompt tokens then the answer
    ``answer_ids``), differentiating from layer ``depth`` up. Call inside :func:`eager_attention`
    (else no attention weights come back). The graph lives until the block exits.

    Layers below ``depth`` run without autograd; a forward pre-hook on layer ``depth`` swaps its
    input for a leaf that requires grad and turns autograd on for the rest of the pass. The LM head
    runs on the ``T`` answer-predicting positions only.
    """
    layers = _layer_stack(lm)
    if not 0 <= depth < len(layers):
        raise ConfigError(f"heat: depth {depth} is outside a {len(layers)}-layer model")
    answer = torch.as_tensor(list(answer_ids), dtype=torch.long, device=ids.device)
    positions = torch.arange(n_prompt - 1, n_prompt - 1 + len(answer_ids), device=ids.device)
    leaf: list[torch.Tensor] = []
    attentions: dict[int, torch.Tensor] = {}

    def start_graph(
        module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        torch.set_grad_enabled(True)  # undone when the enclosing no_grad block exits
        if args:
            x = args[0].detach().requires_grad_(True)
            args = (x, *args[1:])
        else:
            x = kwargs["hidden_states"].detach().requires_grad_(True)
            kwargs = {**kwargs, "hidden_states": x}
        leaf.append(x)
        return args, kwargs

    def keep_attention(layer: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], out: Any) -> None:
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if weights is None:
                raise ScoringError(
                    f"heat: layer {layer} returned no attention weights (eager attention is off)"
                )
            attentions[layer] = weights.detach()[0].float().mean(0)

        return hook

    handles = [layers[depth].register_forward_pre_hook(start_graph, with_kwargs=True)]
    try:
        for layer in range(depth, len(layers)):
            handles.append(layers[layer].self_attn.register_forward_hook(keep_attention(layer)))
        with torch.inference_mode(False):
            with torch.no_grad():
                out = lm.decoder(input_ids=ids.unsqueeze(0), use_cache=False)
            for handle in handles:
                handle.remove()
            handles = []
            if len(leaf) != 1:
                raise ScoringError(f"heat: layer {depth} ran {len(leaf)} times in one forward pass")
            with torch.enable_grad():
                hidden = out[0][0, positions]  # [T, hidden]
                logits = lm.head_logits(hidden)
                picked = logits.gather(-1, answer.view(-1, 1)).squeeze(-1)
                target = (picked - torch.logsumexp(logits, dim=-1)).mean()
                hvp3 = make_hvp(target, leaf[0])
            del out, hidden, logits, picked

            def hvp(v: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    return hvp3(v.unsqueeze(0))[0]

            yield TargetGraph(
                hidden=leaf[0].detach()[0],
                target=target,
                attentions=[attentions[layer] for layer in range(depth, len(layers))],
                hvp=hvp,
            )
    finally:
        for handle in handles:
            handle.remove()
        leaf.clear()
        attentions.clear()


# --------------------------------------------------------------------------------------------------
# the method


def _windows(start: int, end: int, window: int | None, overlap: float) -> list[tuple[int, int]]:
    """``(lo, hi)`` windows of at most ``window`` tokens covering ``[start, end)``."""
    if window is None or end - start <= window:
        return [(start, end)]
    stride = max(1, int(window * (1.0 - overlap)))
    out = []
    lo = start
    while True:
        hi = min(lo + window, end)
        out.append((lo, hi))
        if hi >= end:
            return out
        lo += stride


class Heat(WhiteboxMethod):
    """HEAT / HETA (Pramanik et al., ICLR 2026): ``M_T[i] · (β S_i + γ I_i)`` with a target-conditioned
    attention rollout ``M_T``, the Hessian sensitivity ``S_i = ‖H_ii‖_F`` estimated from
    Hessian-vector products and the KL information loss ``I_i`` when ``x_i``'s feature (or token) is
    masked. Every choice is documented in :mod:`attribsdk.whitebox.heat`. Scores are >= 0.

    Cost (defaults): one eager forward pass with a double-backward graph, ``probes · min(colors,
    n)`` HVPs (``n`` feature tokens) and one batched re-scoring of the ``M + 1`` prompts. Measured on
    SmolLM2-135M (30 layers, fp32) with a 240-token HotpotQA prompt and a 7-token answer, on 2 CPU
    cores shared with another job: 31 s and 3.1 GB peak RSS (model included) with the defaults,
    14 s and 1.5 GB with ``layers=6``.

    ``extras``: ``heat_hvps``, ``heat_depth`` (first differentiated layer), ``heat_windows``,
    ``heat_target_logprob`` (nats/token), ``heat_flow_on_features`` (share of the rollout mass on
    prompt tokens that falls on the features, before renormalising) and, per feature,
    ``heat_flow``, ``heat_curvature`` and ``heat_information`` (lists; an
    :class:`~attribsdk.explanation.Explanation` keeps the scalars).
    """

    name = "heat"
    Config: ClassVar[type[WhiteboxConfig]] = HeatConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        cfg = self.cfg
        assert isinstance(cfg, HeatConfig)
        lm = wi.lm
        if cfg.masking == "feature" and wi.prompt is None:
            raise ConfigError(
                "heat with masking='feature' re-renders the prompt: the WhiteboxInput carries none "
                "(build it with prepare_input, or use masking='token')"
            )
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        n = wi.n_prompt
        feature_mask = wi.feature_mask
        features = np.nonzero(feature_mask)[0]
        depth = lm.n_layers - min(cfg.layers, lm.n_layers) if cfg.layers is not None else 0

        flow, curvature, stats = self._flow_and_curvature(wi, features, depth, generator)
        information, info_passes = self._information(wi, features)

        s = curvature.astype(np.float64)
        i = information.astype(np.float64)
        if cfg.normalize:
            s = s / s.sum() if s.sum() > 0 else s
            i = i / i.sum() if i.sum() > 0 else i
        scores = np.zeros(n, dtype=np.float64)
        scores[features] = flow[features] * (cfg.beta * s[features] + cfg.gamma * i[features])

        def per_feature(values: np.ndarray, reduce: str = "sum") -> list[float]:
            out = []
            for idx in wi.feature_tokens:
                if idx is None or not len(idx):
                    out.append(0.0)
                else:
                    out.append(float(values[idx].mean() if reduce == "mean" else values[idx].sum()))
            return out

        return WhiteboxScores(
            token_scores=scores,
            forward_passes=int(stats["passes"]) + info_passes,
            extras={
                "heat_hvps": int(stats["hvps"]),
                "heat_depth": depth,
                "heat_windows": int(stats["windows"]),
                "heat_target_logprob": float(stats["target"]),
                "heat_flow_on_features": float(stats["flow_on_features"]),
                "heat_flow": per_feature(flow),
                "heat_curvature": per_feature(curvature),
                # feature masking: the feature's own KL (each of its tokens carries it)
                "heat_information": per_feature(information, "mean" if cfg.masking == "feature" else "sum"),
            },
        )

    # -- M_T and S -----------------------------------------------------------------------------------

    def _flow_and_curvature(
        self, wi: WhiteboxInput, features: np.ndarray, depth: int, generator: torch.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """``[n_prompt]`` flow and curvature (both 0 outside the feature tokens; the flow sums to 1
        over them) and counters, over one pass or one pass per window."""
        cfg = self.cfg
        assert isinstance(cfg, HeatConfig)
        lm = wi.lm
        n = wi.n_prompt
        ids = wi.ids
        flow_sum = np.zeros(n, dtype=np.float64)
        curv_sum = np.zeros(n, dtype=np.float64)
        counts = np.zeros(n, dtype=np.float64)
        first, last = int(features.min()), int(features.max()) + 1
        windows = _windows(first, last, cfg.window, cfg.window_overlap)
        hvps = 0
        target = 0.0
        with eager_attention(lm):
            for lo, hi in windows:
                if len(windows) == 1:
                    index = np.arange(n)
                else:
                    index = np.concatenate([np.arange(first), np.arange(lo, hi), np.arange(last, n)])
                seq = torch.cat([ids[torch.as_tensor(index, device=ids.device)], ids[n:]])
                local = np.nonzero(np.isin(index, features))[0]  # window's feature tokens, local indices
                with target_graph(lm, seq, len(index), wi.answer_ids, depth) as graph:
                    shape = (int(graph.hidden.shape[0]), int(graph.hidden.shape[1]))
                    if cfg.estimator == "hutchinson":
                        curv, used = block_curvature_hutchinson(
                            graph.hvp,
                            shape,
                            local,
                            probes=cfg.probes,
                            colors=cfg.colors,
                            generator=generator,
                            device=ids.device,
                        )
                    else:
                        curv, used = block_curvature_low_rank(
                            graph.hvp, shape, local, rank=cfg.rank, generator=generator, device=ids.device
                        )
                    rows = torch.arange(len(index) - 1, len(index) - 1 + wi.n_answer, device=ids.device)
                    rolled = attention_rollout(graph.attentions, rows).mean(0)[: len(index)]
                    target += float(graph.target.detach()) / len(windows)
                    del graph  # its closures hold this window's double-backward graph
                hvps += used
                flow_sum[index] += rolled.double().cpu().numpy()
                curv_sum[index] += curv[: len(index)].double().numpy()
                counts[index] += 1.0
        flow = flow_sum / np.maximum(counts, 1.0)
        on_features = float(flow[features].sum()) / max(float(flow.sum()), 1e-300)
        flow[~np.isin(np.arange(n), features)] = 0.0
        total = flow.sum()
        flow = flow / total if total > 0 else flow
        curvature = curv_sum / np.maximum(counts, 1.0)
        stats = {
            "passes": len(windows),
            "hvps": hvps,
            "windows": len(windows),
            "target": target,
            "flow_on_features": on_features,
        }
        return flow, curvature, stats

    # -- I ----------------------------------------------------------------------------------------------

    def _information(self, wi: WhiteboxInput, features: np.ndarray) -> tuple[np.ndarray, int]:
        """``[n_prompt]`` information loss in nats (0 outside feature tokens) and the number of
        sequences run."""
        cfg = self.cfg
        assert isinstance(cfg, HeatConfig)
        out = np.zeros(wi.n_prompt, dtype=np.float64)
        if cfg.masking == "feature":
            result = leave_one_out(wi, "kl")
            kl = np.clip(np.asarray(result.targets[1:], dtype=np.float64), 0.0, None)
            for f, idx in enumerate(wi.feature_tokens):
                if idx is not None:
                    out[idx] = kl[f]
            return out, int(result.n_sequences)
        return self._token_information(wi, features, out)

    def _token_information(
        self, wi: WhiteboxInput, features: np.ndarray, out: np.ndarray
    ) -> tuple[np.ndarray, int]:
        cfg = self.cfg
        assert isinstance(cfg, HeatConfig)
        lm = wi.lm
        limits = lm.batch_limits
        seq = int(wi.ids.shape[0])
        by_logits = limits.max_logit_elements // max(1, wi.n_answer * lm.vocab_size)
        rows = cfg.batch_size or max(1, min(limits.max_sequences, limits.max_tokens // seq, by_logits))
        with torch.inference_mode(False), torch.no_grad():
            x = embed(wi).detach().clone()  # [1, S, H]
            ref_logits, _ = answer_logits(wi, x)
            ref = torch.log_softmax(ref_logits[0], dim=-1)  # [T, V]
            passes = 1
            for lo in range(0, features.size, rows):
                chunk = features[lo : lo + rows]
                batch = x.expand(chunk.size, -1, -1).clone()
                masked = torch.as_tensor(chunk, device=x.device)
                batch[torch.arange(chunk.size, device=x.device), masked] = 0.0  # row r zeroes token chunk[r]
                logits, _ = answer_logits(wi, batch)
                lp = torch.log_softmax(logits, dim=-1)  # [b, T, V]
                kl = torch.nn.functional.kl_div(
                    lp, ref.unsqueeze(0).expand_as(lp), reduction="none", log_target=True
                )
                out[chunk] = np.clip(kl.sum(-1).mean(-1).double().cpu().numpy(), 0.0, None)
                passes += int(chunk.size)
        return out, passes
