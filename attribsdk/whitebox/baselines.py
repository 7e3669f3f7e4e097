"""Classic white-box baselines: gradients, integrated gradients, attention, occlusion and random.

Every method explains the same quantity, the surrogate's support for the fixed answer, and reports
signed scores (positive = supports the answer) that :func:`~attribsdk.whitebox.aggregate` sums over
each feature's tokens, so they are compared with RoPE-LIME on exactly the same features.

**The target of the gradient methods.** ``f = (1/T) Σ_t log p(a_t | prompt, a_<t)`` in nats/token:
the mean teacher-forced log-probability of the ``T`` answer tokens. The LM head runs on the ``T``
answer positions only (:func:`~attribsdk.whitebox.answer_logits`), never on the whole sequence, and
the log-probability is ``logit[a_t] - logsumexp(logits)`` in float32. Gradients are taken with
:func:`torch.autograd.grad` with respect to the input embeddings only -- the model's parameters never
accumulate ``.grad`` -- inside ``torch.inference_mode(False)`` and ``torch.enable_grad()``, so the
methods work when the caller runs under inference mode or ``no_grad``.

* :class:`Saliency` -- ``‖∂f/∂e_i‖₂`` per prompt token (unsigned: a magnitude, never negative).
* :class:`InputXGradient` -- ``Σ_d e_id · ∂f/∂e_id`` per prompt token (signed).
* :class:`IntegratedGradients` -- the path integral from a baseline to the input (see the class).
* :class:`Attention` -- attention weights from the answer positions to the prompt tokens.
* :class:`Occlusion` -- leave-one-feature-out on the surrogate itself (delta NLL, signed).
* :class:`RandomAttribution` -- seeded uniform scores, the floor every method must beat.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError, ScoringError
from ..scoring.capture import recording, resolve_layer
from ._core import WhiteboxInput, answer_logits, embed, leave_one_out
from ._method import WhiteboxConfig, WhiteboxMethod, WhiteboxScores

__all__ = [
    "Attention",
    "AttentionConfig",
    "InputXGradient",
    "InputXGradientConfig",
    "IntegratedGradients",
    "IntegratedGradientsConfig",
    "Occlusion",
    "OcclusionConfig",
    "RandomAttribution",
    "RandomConfig",
    "Saliency",
    "SaliencyConfig",
    "answer_logprob",
    "answer_logprob_grad",
    "attention_weights",
    "quadrature",
]


# --------------------------------------------------------------------------------------------------
# the target and its gradient


def answer_logprob(wi: WhiteboxInput, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """``[B]`` float32: mean over the ``T`` answer tokens of ``log p(a_t | prefix)`` (nats/token) for
    each row of ``inputs_embeds`` (``[B, S, hidden]``). Differentiable; the LM head runs on the
    answer positions only."""
    logits, _ = answer_logits(wi, inputs_embeds)  # [B, T, V] float32
    answer = wi.answer_tensor.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    picked = logits.gather(-1, answer).squeeze(-1)  # [B, T]
    return (picked - torch.logsumexp(logits, dim=-1)).mean(-1)


def answer_logprob_grad(wi: WhiteboxInput, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target (``[B]``) and its gradient with respect to ``inputs_embeds`` (``[B, S, hidden]``,
    the embeddings' dtype), both detached. Rows are independent, so one backward pass of the summed
    target gives every row's own gradient. Only the embeddings are differentiated
    (:func:`torch.autograd.grad`): parameters' ``.grad`` stay untouched."""
    with torch.inference_mode(False), torch.enable_grad():
        # clone() turns an inference tensor (caller under inference mode) into a normal one.
        x = inputs_embeds.detach().clone().requires_grad_(True)
        f = answer_logprob(wi, x)
        (grad,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), grad.detach()


def _input_embeddings(wi: WhiteboxInput) -> torch.Tensor:
    """``[1, S, hidden]`` embeddings of ``wi.ids`` as a normal (non-inference) detached tensor."""
    with torch.inference_mode(False), torch.no_grad():
        return embed(wi).detach().clone()


def _rows_per_pass(wi: WhiteboxInput, batch_size: int | None) -> int:
    """Sequences per forward/backward pass: ``batch_size`` when given, else the model's
    :class:`~attribsdk.scoring.engine.BatchLimits` (``max_sequences``, ``max_tokens`` over the
    ``S``-token sequence, ``max_logit_elements`` over the ``[T, V]`` answer logits)."""
    if batch_size is not None:
        return batch_size
    limits = wi.lm.batch_limits
    seq = int(wi.ids.shape[0])
    by_logits = limits.max_logit_elements // max(1, wi.n_answer * wi.lm.vocab_size)
    return max(1, min(limits.max_sequences, limits.max_tokens // seq, by_logits))


def _prompt_scores(values: torch.Tensor, wi: WhiteboxInput) -> np.ndarray:
    """``[S]`` tensor → ``[n_prompt]`` float64 numpy (the prompt part)."""
    return np.asarray(values[: wi.n_prompt].float().cpu().numpy(), dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# gradient methods


class SaliencyConfig(WhiteboxConfig):
    """Saliency has no options."""


class Saliency(WhiteboxMethod):
    """Gradient saliency (Simonyan et al., 2014): the L2 norm over the hidden dimension of the
    gradient of the target (module docs) with respect to each prompt token's input embedding.

    One forward and one backward pass. Scores are magnitudes (>= 0): saliency says how sensitive the
    answer is to a token, not in which direction; a feature's score is the sum of its tokens' norms.
    """

    name = "saliency"
    Config = SaliencyConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        f, grad = answer_logprob_grad(wi, _input_embeddings(wi))
        norms = grad[0].float().norm(dim=-1)  # [S]
        return WhiteboxScores(
            token_scores=_prompt_scores(norms, wi),
            forward_passes=1,
            extras={"target_logprob": float(f[0])},
        )


class InputXGradientConfig(WhiteboxConfig):
    """Input x gradient has no options."""


class InputXGradient(WhiteboxMethod):
    """Input x gradient (Shrikumar et al., 2016): ``Σ_d e_id · ∂f/∂e_id`` for each prompt token's
    input embedding ``e_i`` -- the first-order Taylor estimate of how much the target (module docs)
    would drop if the embedding were zeroed. Signed; one forward and one backward pass."""

    name = "input-x-gradient"
    Config = InputXGradientConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        emb = _input_embeddings(wi)
        f, grad = answer_logprob_grad(wi, emb)
        scores = (grad[0].float() * emb[0].float()).sum(-1)  # [S]
        return WhiteboxScores(
            token_scores=_prompt_scores(scores, wi),
            forward_passes=1,
            extras={"target_logprob": float(f[0])},
        )


# --------------------------------------------------------------------------------------------------
# integrated gradients


class IntegratedGradientsConfig(WhiteboxConfig):
    """Options of :class:`IntegratedGradients`.

    ``baseline``: ``"zero"`` (zero embeddings) or ``"pad"`` (the pad token's embedding) at the
    interpolated positions. ``scope``: which prompt tokens are interpolated -- ``"features"`` (the
    features' tokens only) or ``"prompt"`` (every prompt token except the tokenizer's special
    tokens). ``steps``: points on the path. ``rule``: ``"gauss-legendre"`` (``steps`` nodes, exact
    for polynomials of degree ``2·steps - 1``) or ``"trapezoid"`` (``steps`` evenly spaced points,
    both ends included; needs ``steps >= 2``). ``batch_size``: path points per forward/backward pass
    (``None``: the model's batch limits).
    """

    baseline: Literal["zero", "pad"] = "zero"
    scope: Literal["features", "prompt"] = "features"
    steps: int = Field(default=32, ge=1, le=4096)
    rule: Literal["gauss-legendre", "trapezoid"] = "gauss-legendre"
    batch_size: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="after")
    def _check_steps(self) -> IntegratedGradientsConfig:
        if self.rule == "trapezoid" and self.steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2 (both ends of the path)")
        return self


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``α_k`` in [0, 1] and weights ``w_k`` (summing to 1) approximating ``∫₀¹ g(α) dα`` by
    ``Σ_k w_k g(α_k)``; float64 arrays of length ``steps``."""
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1.0) / 2.0, w / 2.0
    if rule == "trapezoid":
        if steps < 2:
            raise ConfigError("the trapezoid rule needs steps >= 2")
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2.0
        return alphas, weights
    raise ConfigError(f"unknown quadrature rule {rule!r}; use 'gauss-legendre' or 'trapezoid'")


class IntegratedGradients(WhiteboxMethod):
    """Integrated gradients (Sundararajan et al., 2017) in embedding space.

    The path runs from a baseline ``x'`` to the input embeddings ``x`` (``[S, hidden]``), moving
    only the *interpolated* prompt tokens (``scope``): the features' tokens (default) or every
    prompt token except special tokens. Everything else stays at its real embedding -- the answer's
    tokens (the fixed, teacher-forced answer is what is explained, not an input), the chat
    template's special tokens and, with ``scope="features"``, the template text and the question.
    Token ``i``'s attribution is ``(x_i - x'_i) · Σ_k w_k ∂f/∂x_i(x' + α_k (x - x'))`` with the
    target ``f`` of the module docs and the quadrature of ``rule`` (Gauss-Legendre by default: for
    the smooth integrands of a transformer it converges far faster than the trapezoid or Riemann
    sums). Path points run ``batch_size`` at a time (one forward + backward pass each).

    Completeness: the attributions sum to ``f(x) - f(x')`` up to the quadrature error. Two extra
    forward passes (skipped by the trapezoid, whose ends are path points) compute both ends, and
    ``extras`` reports ``ig_completeness_gap = |Σ_i attr_i - (f(x) - f(x'))|`` (nats/token), the
    same relative to ``|f(x) - f(x')|``, both ends and, with ``scope="prompt"``, the part of the
    sum that falls on non-feature tokens (it is in no feature's score). With the default scope the
    feature scores alone sum to ``f(x) - f(x')``: the effect of blanking every feature at once.

    Check the gap before trusting the scores. With the zero baseline on RMSNorm models the
    integrand is concentrated near ``α = 0``: a moved token's normalised embedding switches on once
    ``α · rms(e)`` exceeds ``√eps``. Measured relative gaps at the default 32 steps: 5.8 % on SmolLM2
    (a HotpotQA example, sentence features); 76 % on the tiny test Llama, which needs ~512 steps
    (gap < 1e-5). Memory: a pass keeps every layer's activations for the backward pass -- about
    3.7 GB above the weights for 8 rows of 247 tokens on SmolLM2 in float32; lower ``batch_size``
    to trade speed for memory.
    """

    name = "integrated-gradients"
    Config = IntegratedGradientsConfig

    def interpolated_mask(self, wi: WhiteboxInput) -> np.ndarray:
        """``[n_prompt]`` bool: the prompt tokens the path moves (see ``scope``)."""
        cfg = self.cfg
        assert isinstance(cfg, IntegratedGradientsConfig)
        if cfg.scope == "features":
            return wi.feature_mask
        special = {int(i) for i in getattr(wi.lm.tokenizer, "all_special_ids", ())}
        prompt_ids = wi.ids[: wi.n_prompt].tolist()
        return np.array([int(t) not in special for t in prompt_ids], dtype=bool)

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        cfg = self.cfg
        assert isinstance(cfg, IntegratedGradientsConfig)
        x = _input_embeddings(wi)[0]  # [S, H]
        seq = int(x.shape[0])
        moved = np.zeros(seq, dtype=bool)
        moved[: wi.n_prompt] = self.interpolated_mask(wi)
        moved_t = torch.as_tensor(moved, device=x.device)
        if cfg.baseline == "zero":
            fill = torch.zeros_like(x[0])
        else:
            pad = torch.tensor([wi.lm.pad_token_id], dtype=torch.long, device=wi.ids.device)
            with torch.inference_mode(False), torch.no_grad():
                fill = wi.lm.model.get_input_embeddings()(pad)[0].detach().clone()
        base = torch.where(moved_t.unsqueeze(-1), fill.to(x.dtype).expand_as(x), x)  # [S, H]
        delta = x - base  # zero outside the moved tokens

        alphas, weights = quadrature(cfg.steps, cfg.rule)
        rows = _rows_per_pass(wi, cfg.batch_size)
        avg_grad = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        ends: dict[float, float] = {}
        passes = 0
        for lo in range(0, len(alphas), rows):
            a = torch.as_tensor(alphas[lo : lo + rows], dtype=torch.float32, device=x.device).view(-1, 1, 1)
            w = torch.as_tensor(weights[lo : lo + rows], dtype=torch.float32, device=x.device).view(-1, 1, 1)
            points = (base.float().unsqueeze(0) + a * delta.float().unsqueeze(0)).to(x.dtype)
            f, grad = answer_logprob_grad(wi, points)
            avg_grad += (w * grad.float()).sum(0)
            passes += int(a.shape[0])
            for alpha, value in zip(alphas[lo : lo + rows], f.tolist(), strict=True):
                if alpha in (0.0, 1.0):
                    ends[float(alpha)] = float(value)
        if len(ends) < 2:
            with torch.inference_mode(False), torch.no_grad():
                f_ends = answer_logprob(wi, torch.stack([base, x]))
            ends = {0.0: float(f_ends[0]), 1.0: float(f_ends[1])}
            passes += 2
        attributions = (avg_grad * delta.float()).sum(-1)  # [S]; zero outside the moved tokens

        token_scores = _prompt_scores(attributions, wi)
        total = float(token_scores.sum())
        change = ends[1.0] - ends[0.0]
        gap = abs(total - change)
        non_feature = float(token_scores[~wi.feature_mask].sum())
        return WhiteboxScores(
            token_scores=token_scores,
            forward_passes=passes,
            extras={
                "ig_completeness_gap": gap,
                "ig_completeness_relative_gap": gap / abs(change) if change != 0.0 else None,
                "ig_target_input": ends[1.0],
                "ig_target_baseline": ends[0.0],
                "ig_attribution_sum": total,
                "ig_non_feature_attribution": non_feature,
                "ig_interpolated_tokens": int(moved.sum()),
                "ig_rows_per_pass": rows,
            },
        )


# --------------------------------------------------------------------------------------------------
# attention


class AttentionConfig(WhiteboxConfig):
    """``layer``: an ``int`` index (negative counts from the last layer; default -1, the last) or a
    ``float`` relative depth in [0, 1]."""

    layer: int | float = -1

    @field_validator("layer", mode="before")
    @classmethod
    def _no_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("layer must be an int or a float in [0, 1], not a bool")
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"a relative layer must be in [0, 1], got {value}")
        return value


class Attention(WhiteboxMethod):
    """Raw attention weights (the "attention as explanation" baseline).

    A token's score is the attention weight it receives, at layer ``layer``, from the ``T`` positions
    that *predict* the answer tokens (the last prompt token and the first ``T - 1`` answer tokens:
    the positions whose outputs the target of the gradient methods reads), averaged over all query
    heads and those positions. Weights over the prompt are reported as they are (not renormalised:
    the rest of each row went to earlier answer tokens). Unsigned, in [0, 1].

    The weights are recomputed from the post-RoPE queries and keys captured during one ordinary
    forward pass (:func:`attribsdk.scoring.capture.recording`; the model keeps its SDPA attention):
    ``softmax(q kᵀ · scaling)`` with the module's ``scaling``, KV heads repeated for grouped-query
    attention, the causal mask, a sliding window when the layer has one and attention-logit
    soft-capping when the module has it. Only the ``[heads, T, S]`` block is formed (never the
    ``S × S`` matrix of every layer that eager attention with ``output_attentions`` would return).
    Attention with sink logits (gpt-oss) is refused with :class:`ConfigError`.
    """

    name = "attention"
    Config = AttentionConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        cfg = self.cfg
        assert isinstance(cfg, AttentionConfig)
        lm = wi.lm
        layer = resolve_layer(cfg.layer, lm.n_layers)
        module = _attention_module(lm, layer)
        if getattr(module, "sinks", None) is not None:
            raise ConfigError(
                f"attention: {type(module).__name__} uses attention sinks, which are not supported"
            )
        with torch.no_grad(), recording({(layer, "query"), (layer, "key")}) as rec:
            lm.decoder(input_ids=wi.ids.unsqueeze(0), use_cache=False)
        query, key = rec.tensors.get((layer, "query")), rec.tensors.get((layer, "key"))
        if query is None or key is None:
            raise ScoringError(
                f"attention: layer {layer} recorded no query/key vectors (is the model's attention "
                "still attribsdk's capture implementation?)"
            )
        weights = attention_weights(module, query[0], key[0], wi.answer_positions)  # [H, T, S]
        scores = weights.mean(dim=(0, 1))  # [S]
        return WhiteboxScores(
            token_scores=_prompt_scores(scores, wi),
            forward_passes=1,
            extras={"attention_layer": layer, "attention_mass_on_prompt": float(scores[: wi.n_prompt].sum())},
        )


def _attention_module(lm: Any, layer: int) -> Any:
    try:
        return lm.decoder.layers[layer].self_attn
    except (AttributeError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"attention: cannot find the self-attention module of layer {layer} in "
            f"{type(lm.decoder).__name__} (expected decoder.layers[i].self_attn)"
        ) from exc


def attention_weights(
    module: Any, query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Attention probabilities ``[heads, P, S]`` float32 of the query rows at ``positions`` (``[P]``).

    ``query`` is ``[heads, S, head_dim]`` and ``key`` ``[kv_heads, S, head_dim]`` (post-RoPE, one
    sequence without padding, as :func:`~attribsdk.scoring.capture.recording` captures them).
    Applies ``module.scaling``, soft-capping (``module.attn_logit_softcapping``), the causal mask
    and ``module.sliding_window`` (key ``j`` is visible from query ``p`` when ``p - window < j <= p``).
    """
    heads, kv_heads = int(query.shape[0]), int(key.shape[0])
    if heads % kv_heads:
        raise ScoringError(f"attention: {heads} query heads are not a multiple of {kv_heads} KV heads")
    keys = key.float().repeat_interleave(heads // kv_heads, dim=0)  # [H, S, D], as transformers' repeat_kv
    q = query.float()[:, positions]  # [H, P, D]
    scaling = getattr(module, "scaling", None)
    scale = float(scaling) if scaling is not None else float(q.shape[-1]) ** -0.5
    logits = torch.matmul(q, keys.transpose(1, 2)) * scale  # [H, P, S]
    softcap = getattr(module, "attn_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    k_pos = torch.arange(keys.shape[1], device=logits.device).view(1, -1)
    q_pos = positions.to(logits.device).view(-1, 1)
    visible = k_pos <= q_pos
    window = getattr(module, "sliding_window", None)
    if window:
        visible &= k_pos > q_pos - int(window)
    logits = logits.masked_fill(~visible, float("-inf"))
    return torch.softmax(logits, dim=-1)


# --------------------------------------------------------------------------------------------------
# occlusion


class OcclusionConfig(WhiteboxConfig):
    """Occlusion has no options (one re-scored prompt per feature, batched by the model's limits)."""


class Occlusion(WhiteboxMethod):
    """Leave-one-feature-out on the surrogate: feature ``m``'s score is the increase of the answer's
    mean negative log-likelihood (nats/token) when ``m`` is deleted from the prompt text
    (``prompt.render(keep)`` with ``keep[m]`` false, re-tokenised), i.e. the ``"delta_nll"`` target
    of :func:`attribsdk.scoring.engine.score_request`. Signed: positive when the feature supports
    the answer. ``M + 1`` sequences, batched by the engine (with its shared-prefix reuse).
    Needs ``wi.prompt`` (set by :func:`~attribsdk.whitebox.prepare_input`).
    """

    name = "occlusion"
    Config = OcclusionConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        result = leave_one_out(wi, "delta_nll")
        return WhiteboxScores(
            feature_scores=np.asarray(result.targets[1:], dtype=np.float64),
            forward_passes=result.n_sequences,
            extras={
                "target_logprob": float(result.answer_logprobs[0].mean()),
                "computed_tokens": int(result.extras.get("computed_tokens", 0)),
                "reused_prefix_tokens": int(result.extras.get("reused_prefix_tokens", 0)),
                "batches": int(result.extras.get("batches", 0)),
            },
        )


# --------------------------------------------------------------------------------------------------
# random


class RandomConfig(WhiteboxConfig):
    """Random has no options (the seed is the explanation's seed)."""


class RandomAttribution(WhiteboxMethod):
    """Seeded uniform scores in [0, 1), one per *feature* (not per token, which would favour long
    features), drawn from the explanation's seed and the input's tokens: the same seed and input
    give the same scores, and two inputs never share a ranking because they share a seed (with one
    stream per seed, every input with few features would rank feature 0 first). No model work;
    the floor every other method must beat."""

    name = "random"
    Config = RandomConfig

    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        tokens = wi.ids.detach().cpu().numpy().astype(np.int64).tobytes()
        own = np.random.default_rng([int(rng.integers(2**32)), zlib.crc32(tokens)])
        return WhiteboxScores(feature_scores=own.uniform(0.0, 1.0, size=len(wi.feature_tokens)))
