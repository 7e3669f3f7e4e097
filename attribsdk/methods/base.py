"""The method seam: one class per attribution algorithm behind one small protocol.

A method receives the prompt, the fixed answer and the parts it may use (the surrogate scorer, the
closed model for closed-loop methods) and returns a :class:`MethodResult`; the
:class:`~attribsdk.explainer.Explainer` turns that into an :class:`~attribsdk.explanation.Explanation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..adapters.base import ClosedModel, GenerationParams
from ..explanation import Samples
from ..prompt import Prompt
from ..scoring.base import Scorer

__all__ = ["Method", "MethodParts", "MethodResult"]


@dataclass(frozen=True)
class MethodParts:
    """What a method may use. ``scorer`` is the surrogate; ``closed`` is only for closed-loop
    methods (their calls go through the adapter layer: cache, retries, budget)."""

    scorer: Scorer | None = None
    closed: ClosedModel | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    seed: int = 0
    #: Told how much more work is done, in the method's ``progress_unit`` (optional class
    #: attribute; default "surrogate sequences", as ``ScoringRequest.on_progress`` counts them).
    progress: Callable[[int], object] | None = None


@dataclass
class MethodResult:
    """Raw output of a method: ``coefficients`` are signed effects (positive = supports the answer),
    ``attributions`` the normalised magnitudes, both of length M."""

    coefficients: np.ndarray
    attributions: np.ndarray
    intercept: float = 0.0
    r2: float | None = None
    #: Feature effects the samples identify (the fit's rank; ``None``: not a regression).
    fit_rank: int | None = None
    answer_tokens: list[str] = field(default_factory=list)
    samples: Samples | None = None
    surrogate_sequences: int = 0
    surrogate_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """An attribution algorithm. ``config()`` returns its full JSON-able configuration."""

    name: str

    def config(self) -> dict[str, Any]: ...

    async def attribute(self, prompt: Prompt, answer: str, parts: MethodParts) -> MethodResult: ...
