"""The scoring seam: a surrogate teacher-forces a fixed answer under many prompts.

This module is plain data and protocols (no torch import) so that callers can type against it
without loading a deep-learning stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..prompt import RenderedPrompt

__all__ = ["CaptureSpec", "RotaryPairing", "ScoreResult", "Scorer", "ScoringRequest", "SpanPooler"]

#: How a model's rotary code pairs head dimensions: ``"half"`` pairs i with i + head_dim/2
#: (Llama, Qwen, Gemma ``rotate_half``); ``"interleaved"`` pairs 2k with 2k+1 (GPT-J, RoFormer).
RotaryPairing = Literal["half", "interleaved"]

#: Pools the post-RoPE vectors of one feature's tokens, ``[n_tokens, n_heads, head_dim]`` float32,
#: into an opaque span embedding (see :mod:`attribsdk.locality`).
SpanPooler = Callable[[np.ndarray, RotaryPairing], Any]


@dataclass(frozen=True)
class CaptureSpec:
    """Which post-rotary vectors to capture during the scoring forward passes."""

    layer: int | float  # int: index (negative counts from the last layer); float: relative depth in [0, 1]
    which: Literal["key", "query"] = "key"
    pool: SpanPooler | None = None  # None: return raw vectors per span


@dataclass(frozen=True)
class ScoringRequest:
    """Score ``answer`` under every prompt. ``prompts[0]`` must be the unmasked reference.

    ``on_progress(n)`` (optional) is told each time ``n`` more prompts are scored; it may be
    called from a worker thread, must be quick, and anything it raises is ignored. It stays in
    this process (a Ray pool calls it once the whole request is back).
    """

    prompts: Sequence[RenderedPrompt]
    answer: str
    target: str = "kl"
    capture: CaptureSpec | None = None
    on_progress: Callable[[int], object] | None = field(default=None, compare=False, repr=False)


@dataclass
class ScoreResult:
    """What the surrogate computed. Shapes: N prompts, T answer tokens, M features."""

    #: ``[N]`` target value of each prompt relative to ``prompts[0]`` (0 for the reference with
    #: divergence targets). Larger means "further from the reference answer".
    targets: np.ndarray
    #: ``[N, T]`` log p(answer token t | prompt n, answer tokens < t) in nats.
    answer_logprobs: np.ndarray
    #: The answer as the surrogate's tokens (decoded strings), length T.
    answer_tokens: list[str]
    #: ``[N][M]`` pooled span embedding (or raw ``[n_tok, H, D]`` vectors) of each kept feature,
    #: ``None`` for masked features and for features that map to no token; ``None`` overall when
    #: no capture was requested.
    spans: list[list[Any | None]] | None
    rotary_pairing: RotaryPairing = "half"
    #: Sequences scored and their tokens (prompt + answer each, padding excluded). The engine feeds
    #: fewer tokens than that when it reuses the reference's cached prefix: see
    #: ``extras["computed_tokens"]`` and ``extras["reused_prefix_tokens"]``.
    n_sequences: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    """A surrogate model that scores fixed answers. ``score`` is blocking (CPU/GPU work); async
    callers run it in a worker thread."""

    @property
    def name(self) -> str: ...

    def score(self, request: ScoringRequest) -> ScoreResult: ...
