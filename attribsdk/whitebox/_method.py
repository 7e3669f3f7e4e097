"""The :class:`~attribsdk.methods.base.Method` side of the white-box algorithms."""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import numpy as np
import torch

from .._strategy import ConfigModel
from ..errors import AttribError, ConfigError, ScoringError
from ..methods.base import MethodParts, MethodResult
from ..prompt import Prompt
from ..regression import normalize_attributions
from ..scoring.models import LocalModel
from ._core import WhiteboxInput, aggregate, prepare_input

__all__ = ["WhiteboxConfig", "WhiteboxMethod", "WhiteboxScores"]


class WhiteboxConfig(ConfigModel):
    """Base of every white-box method's configuration (stored in ``Explanation.config``)."""


@dataclass
class WhiteboxScores:
    """What an algorithm returns: signed per-token scores over the prompt (``[n_prompt]``; summed
    into features) or signed per-feature scores (``[M]``) directly, plus anything worth reporting.
    Positive = the token/feature supports the answer."""

    token_scores: np.ndarray | None = None
    feature_scores: np.ndarray | None = None
    forward_passes: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


class WhiteboxMethod(ABC):
    """A white-box attribution algorithm run on the surrogate (any :class:`LocalModel`).

    Subclasses set ``name`` and ``Config`` and implement :meth:`run`; construction validates the
    options through ``Config`` (unknown or bad options raise :class:`ConfigError`).
    """

    name: str
    Config: ClassVar[type[WhiteboxConfig]] = WhiteboxConfig
    #: What ``MethodParts.progress`` counts: rows through the model's decoder, forward passes
    #: only (an algorithm's own ``surrogate_sequences`` accounting may differ).
    progress_unit: ClassVar[str] = "model rows"

    def __init__(self, **options: Any) -> None:
        try:
            self.cfg = self.Config(**options)
        except Exception as exc:  # pydantic.ValidationError and friends
            raise ConfigError(f"{self.name}: bad options {options!r}: {exc}") from exc

    def config(self) -> dict[str, Any]:
        return {"kind": self.name, **self.cfg.model_dump(mode="json")}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.cfg.model_dump().items())
        return f"{type(self).__name__}({opts})"

    @abstractmethod
    def run(self, wi: WhiteboxInput, rng: np.random.Generator) -> WhiteboxScores:
        """Compute the scores (called in a worker thread with the model's forward lock held)."""

    async def attribute(self, prompt: Prompt, answer: str, parts: MethodParts) -> MethodResult:
        lm = parts.scorer
        if not isinstance(lm, LocalModel):
            raise ConfigError(
                f"{self.name} is a white-box method: it needs a local model as surrogate "
                f"(got {type(lm).__name__})"
            )
        seed = parts.seed
        return await anyio.to_thread.run_sync(self._attribute_sync, lm, prompt, answer, seed, parts.progress)

    def _attribute_sync(
        self,
        lm: LocalModel,
        prompt: Prompt,
        answer: str,
        seed: int,
        progress: Callable[[int], object] | None = None,
    ) -> MethodResult:
        t0 = time.perf_counter()
        with lm.forward_lock, _counting_rows(lm, progress):
            wi = prepare_input(lm, prompt, answer)
            try:
                scores = self.run(wi, np.random.default_rng(seed))
            except AttribError:
                raise
            except torch.cuda.OutOfMemoryError as exc:
                raise ScoringError(f"{self.name}: out of memory on {lm.device}: {exc}") from exc
            except Exception as exc:
                raise ScoringError(f"{self.name} failed on {lm.name}: {type(exc).__name__}: {exc}") from exc
        if scores.feature_scores is not None:
            coef = np.asarray(scores.feature_scores, dtype=np.float64)
        elif scores.token_scores is not None:
            coef = aggregate(scores.token_scores, wi.feature_tokens)
        else:
            raise ScoringError(f"{self.name} returned no scores")
        if coef.shape != (prompt.n_features,) or not np.isfinite(coef).all():
            raise ScoringError(
                f"{self.name} returned {coef.shape} scores (finite: {np.isfinite(coef).all()}), "
                f"expected {prompt.n_features} finite values"
            )
        seconds = time.perf_counter() - t0
        return MethodResult(
            coefficients=coef,
            attributions=normalize_attributions(coef),
            answer_tokens=[lm.tokenizer.decode([t]) for t in wi.answer_ids],
            surrogate_sequences=scores.forward_passes,
            surrogate_tokens=scores.forward_passes * int(wi.ids.shape[0]),
            timings={"scoring": seconds},
            extras={"device": lm.device, "dtype": lm.dtype, **scores.extras},
        )


@contextlib.contextmanager
def _counting_rows(lm: LocalModel, progress: Callable[[int], object] | None) -> Iterator[None]:
    """Tell ``progress`` the rows of every decoder pass while the block runs.

    The algorithms reach the model through several paths (the full model, the engine's prefixed
    passes, leave-one-out scoring); all of them run the decoder, so a forward hook there sees every
    pass without the algorithms knowing about progress. Backward passes are not counted.
    """
    if progress is None:
        yield
        return

    def hook(module: object, args: tuple[Any, ...], kwargs: dict[str, Any], output: object) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            with contextlib.suppress(Exception):  # a progress display must never fail attribution
                progress(int(x.shape[0]))

    handle = lm.decoder.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
