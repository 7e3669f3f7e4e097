"""Closed-loop baselines: gSMILE (Dehghani et al., 2025) and closed-model leave-one-out.

Both ask the **closed model** to answer every perturbed prompt again, which is what RoPE-LIME
avoids: gSMILE makes ``1 + 64`` closed calls per explanation, leave-one-out ``1 + M``. The ``1`` is
the Explainer's own call for the explained answer; that answer is the "original output" both
methods compare against, so they never request it again. Perturbed prompts go through
``parts.closed`` -- the Explainer's stack (cache → budget/ledger → limiter → adapter) -- all at
once in an anyio task group; the stack's limiter caps how many are in flight. Identical perturbed
prompts (e.g. a repeated word deleted at either place) are requested once.

gSMILE as its authors' code ran it (xwhy, ``examples/Large_Language_Models/llm_gsmile_openai.py``),
with the target and kernel of this project's specification (issue 5):

* features: the prompt's features (whitespace words with ``build_prompt(..., features="words")``;
  sentences etc. for a labelled dataset);
* 64 random masks, each feature kept with p = 0.5, seeded, unique, the all-masked mask rejected
  (:class:`~attribsdk.sampling.Uniform`); masked features are deleted;
* output distance ``d_n`` = Word Mover's Distance (:mod:`attribsdk.wmd`) between the original
  answer and the answer to perturbation n;
* target ``y_n`` = min-max normalised ``1 / (d_n + 1e-8)`` (``target="inverse"``; all equal → 1);
* sample weight ``sqrt(exp(−d_p² / 0.25²))``, ``d_p`` = WMD between the original and the perturbed
  explained input (``kernel_on="prompt"``);
* weighted least squares with an intercept (no ridge) on the 64 keep-masks; the signed
  coefficients are the effects, ``|β| / Σ|β|`` the attributions (as for every method here).

Deviations from the authors' script, all deliberate and configurable where it matters:

* Word vectors: GoogleNews word2vec cannot be downloaded here; the default vectors are the
  surrogate's input embeddings (:class:`~attribsdk.wordvec.EmbeddingWordVectors`). Pass
  ``word_vectors={word: vector}`` (or a callable) to use any other table, GoogleNews included.
* The script's target is ``1 − minmax(d)`` and its kernel uses the *output* distance ``d``;
  ``target="similarity"`` and ``kernel_on="output"`` reproduce that exactly.
* The script re-asks perturbed prompts with "Respond with a single number only" and
  ``max_tokens=10`` (its demo task was a numeric rating); here perturbed prompts are asked exactly
  like the original (same template, same :class:`GenerationParams`), which is what makes the
  answers comparable for free-text tasks.
* The script forces at least 2 kept words (adding random ones back) and passes kept words through
  ``set()`` (losing order and duplicates); here deletions keep the order and ≥ 1 feature is kept.
* Masks are drawn with ``numpy.random.default_rng(seed).random() < p`` rather than
  ``rng.binomial``; the distribution is the same.
* A perturbed answer cut at ``max_tokens`` is used as it is (the provider billed it); it is cached
  like any other, so a re-run does not pay for it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import numpy as np
from pydantic import Field

from .._strategy import ConfigModel
from ..adapters.base import ClosedModel, Completion, GenerationParams, Message
from ..errors import AdapterError, AttribError, ConfigError, TruncatedOutputError, raise_keeping
from ..explanation import Samples
from ..prompt import Prompt
from ..regression import WLS, normalize_attributions
from ..sampling import LOO, Uniform
from ..wmd import WMD
from ..wordvec import WordVectors, make_word_vectors
from .base import MethodParts, MethodResult

__all__ = ["ClosedLoo", "ClosedLooConfig", "GSmile", "GSmileConfig", "regenerate"]

#: ``1 / (d + EPS)`` in gSMILE's inverse-distance target.
EPS = 1e-8


#: The configuration's name for the default word vectors (the surrogate's input embeddings).
DEFAULT_WORD_VECTORS = "surrogate-input-embeddings"


def _wv_spec(spec: Any) -> Any:
    """``word_vectors`` as given, with the default's configuration name read back as ``None`` (so a
    stored configuration builds the method again); any other text is refused here, before anything
    is paid for."""
    if spec == DEFAULT_WORD_VECTORS:
        return None
    if isinstance(spec, (str, bytes)):
        raise ConfigError(
            f"word_vectors {spec!r}: give None (the surrogate's input embeddings), a {{word: vector}} "
            "mapping, a callable or a WordVectors"
        )
    return spec


def _wv_label(spec: Any) -> str:
    if spec is None:
        return DEFAULT_WORD_VECTORS
    name = getattr(spec, "name", None)
    return str(name) if isinstance(name, str) else f"user-{type(spec).__name__}"


class GSmileConfig(ConfigModel):
    """Full configuration of gSMILE (stored in every Explanation)."""

    n_samples: int = Field(default=64, ge=2)
    p: float = Field(default=0.5, gt=0.0, lt=1.0)
    kernel_width: float = Field(default=0.25, gt=0.0)
    kernel_on: Literal["prompt", "output"] = "prompt"
    target: Literal["inverse", "similarity"] = "inverse"
    metric: Literal["euclidean", "cosine"] = "euclidean"
    ridge: float = Field(default=0.0, ge=0.0)
    word_vectors: str = "surrogate-input-embeddings"


class ClosedLooConfig(ConfigModel):
    """Full configuration of closed-model leave-one-out."""

    metric: Literal["euclidean", "cosine"] = "euclidean"
    word_vectors: str = "surrogate-input-embeddings"


# -- shared machinery ------------------------------------------------------------------------------


def _key(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    return tuple((m.role, m.content) for m in messages)


async def regenerate(
    closed: ClosedModel,
    prompt: Prompt,
    masks: np.ndarray,
    params: GenerationParams,
    answer: str,
) -> tuple[list[str], int]:
    """The closed model's answer to every perturbed prompt ``prompt.render(masks[n])``.

    Returns ``(answers [N], distinct requests made)``. The unmasked prompt's answer is ``answer``
    (never requested again); identical perturbed prompts are requested once. Calls run
    concurrently, at most the closed model's ``max_concurrency`` at a time (8 when it has none).
    After a failure no new call is sent, the calls already sent finish (their answers are paid
    for: they are kept, and cached by the closed model's cache), and the first failure is raised
    (an :class:`~attribsdk.errors.AttribError`) with what was already paid for in ``partial``:
    ``"answers"`` (one entry per row of ``masks``, the answer or ``None`` where none came back),
    ``"masks"`` (the rows, as lists of 0/1) and ``"answers_received"`` (how many distinct
    answers came back). A truncated answer (:class:`~attribsdk.errors.TruncatedOutputError`) is
    used as it is.
    """
    keys = [_key(prompt.render(row).messages) for row in masks]
    results: dict[tuple[tuple[str, str], ...], str] = {_key(prompt.render().messages): answer}
    pending = list(dict.fromkeys(k for k in keys if k not in results))
    errors: list[BaseException] = []

    # This gate, not the closed model's own limiter, decides when a call is sent, so that after a
    # failure the calls not yet sent can be dropped without cancelling any that are in flight.
    gate = anyio.CapacityLimiter(getattr(closed, "max_concurrency", None) or 8)

    async def one(key: tuple[tuple[str, str], ...]) -> None:
        messages = [Message(role=role, content=content) for role, content in key]  # type: ignore[arg-type]
        async with gate:
            if errors:
                return  # a call failed: send no more
            try:
                completion = await closed.generate(messages, params)
                text = completion.text
            except TruncatedOutputError as exc:
                cut = exc.partial.get("completion")
                text = cut.text if isinstance(cut, Completion) else ""
            except Exception as exc:
                errors.append(exc)
                return
        results[key] = text

    async with anyio.create_task_group() as tg:
        for key in pending:
            tg.start_soon(one, key)
    if errors:
        kept = {
            "answers_received": sum(1 for k in pending if k in results),
            "answers": [results.get(k) for k in keys],
            "masks": np.asarray(masks, dtype=np.int8).tolist(),
        }
        first = errors[0]
        if isinstance(first, AttribError):
            for name, value in kept.items():
                first.partial.setdefault(name, value)
            raise first
        raise AdapterError(
            f"closed call for a perturbed prompt failed: {type(first).__name__}: {first}", partial=kept
        ) from first
    return [results[k] for k in keys], len(pending)


class _ClosedLoop:
    """Word vectors resolved once per surrogate, and the closed-model check."""

    needs_closed = True
    name = "closed-loop"

    def __init__(self, word_vectors: Any, metric: Literal["euclidean", "cosine"]) -> None:
        self._wv_spec = word_vectors
        self._metric: Literal["euclidean", "cosine"] = metric
        self._resolved: tuple[int, WordVectors] | None = None

    def _wmd(self, parts: MethodParts) -> WMD:
        owner = id(parts.scorer) if self._wv_spec is None else 0
        if self._resolved is None or self._resolved[0] != owner:
            self._resolved = (owner, make_word_vectors(self._wv_spec, surrogate=parts.scorer))
        return WMD(self._resolved[1], metric=self._metric)

    def _closed(self, parts: MethodParts) -> ClosedModel:
        if parts.closed is None:
            raise ConfigError(
                f"{self.name} asks the closed model to answer every perturbed prompt; run it through "
                "an Explainer (or pass MethodParts(closed=...))"
            )
        return parts.closed


def _explained_text(prompt: Prompt, keep: Sequence[bool] | np.ndarray) -> str:
    """The kept features' text, joined by spaces (what the prompt distance compares)."""
    return " ".join(f.text for f, k in zip(prompt.features, keep, strict=True) if k)


# -- gSMILE ----------------------------------------------------------------------------------------


class GSmile(_ClosedLoop):
    """gSMILE: the closed model answers 64 distinct random deletions of the input (every one when
    there are fewer); WMD between answers is the target, WLS on the keep-masks gives the
    attributions (see the module docstring).

    Args:
        n_samples: perturbations (closed calls besides the explained answer's).
        p: probability of keeping each feature.
        kernel_width: σ of the weight ``sqrt(exp(−d² / σ²))``.
        kernel_on: ``"prompt"`` (d = WMD between the inputs) or ``"output"`` (the authors' script).
        target: ``"inverse"`` (minmax of ``1/(d+1e-8)``) or ``"similarity"`` (``1 − minmax(d)``).
        metric: WMD ground cost between unit word vectors (``"euclidean"`` as in gensim).
        ridge: ridge penalty of the WLS (0: plain least squares, as the authors).
        word_vectors: ``None`` (the surrogate's input embeddings), ``{word: vector}``, a callable
            ``word -> vector | None`` or a :class:`~attribsdk.wordvec.WordVectors`.

    Timings: ``scoring`` holds the closed calls and the output distances, ``locality`` the prompt
    distances and kernel, ``regression`` the fit.
    """

    name = "gsmile"

    def __init__(
        self,
        *,
        n_samples: int = 64,
        p: float = 0.5,
        kernel_width: float = 0.25,
        kernel_on: Literal["prompt", "output"] = "prompt",
        target: Literal["inverse", "similarity"] = "inverse",
        metric: Literal["euclidean", "cosine"] = "euclidean",
        ridge: float = 0.0,
        word_vectors: Any = None,
    ) -> None:
        word_vectors = _wv_spec(word_vectors)
        try:
            self.cfg = GSmileConfig(
                n_samples=n_samples,
                p=p,
                kernel_width=kernel_width,
                kernel_on=kernel_on,
                target=target,
                metric=metric,
                ridge=ridge,
                word_vectors=_wv_label(word_vectors),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid gSMILE setting: {exc}") from None
        super().__init__(word_vectors, self.cfg.metric)
        self.solver = WLS(ridge=self.cfg.ridge)

    def sampler(self, n_features: int) -> Uniform:
        """The masks' sampler for ``n_features``: ``n_samples`` distinct masks, or every mask other
        than the unmasked and the all-masked one when there are fewer (M <= 6 at the default 64).
        A repeated unmasked row would be fitted at distance 0 (target 1, weight 1) and outweigh
        every real perturbation."""
        space = 1 if n_features == 1 else 2 ** min(n_features, 62) - 2
        n = min(self.cfg.n_samples, space)
        return Uniform(p=self.cfg.p, n_samples=n, reject_all_masked=True)

    def config(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def __repr__(self) -> str:
        c = self.cfg
        return f"GSmile(n_samples={c.n_samples}, kernel_on={c.kernel_on!r}, target={c.target!r})"

    async def attribute(self, prompt: Prompt, answer: str, parts: MethodParts) -> MethodResult:
        closed = self._closed(parts)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        rng = np.random.default_rng(parts.seed)
        m = prompt.n_features
        masks = self.sampler(m).sample(m, rng)[1:]  # row 0 is not refit
        if len(masks) < m + 1:
            # M <= 2: every mask is too few rows to identify M effects and an intercept; the
            # unmasked row (its answer is the explained one: no call) is added once.
            masks = np.vstack([masks, np.ones((1, m), dtype=masks.dtype)])
        wmd = self._wmd(parts)
        timings["sampling"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        answers, requested = await regenerate(closed, prompt, masks, parts.params, answer)
        try:
            return await self._fit(prompt, answer, masks, answers, requested, wmd, timings, t0)
        except Exception as exc:  # the answers were paid for: they travel with the error
            kept = {"answers": answers, "masks": masks.astype(int).tolist()}
            raise_keeping(exc, "gSMILE's fit failed", **kept)

    async def _fit(
        self,
        prompt: Prompt,
        answer: str,
        masks: np.ndarray,
        answers: list[str],
        requested: int,
        wmd: WMD,
        timings: dict[str, float],
        t0: float,
    ) -> MethodResult:
        """Distances, kernel and regression on the regenerated ``answers`` (one per row of ``masks``)."""
        cfg = self.cfg
        d_out = np.asarray(await anyio.to_thread.run_sync(wmd.many, answer, answers), dtype=np.float64)
        timings["scoring"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if cfg.kernel_on == "prompt":
            texts = [_explained_text(prompt, row) for row in masks]
            full = _explained_text(prompt, [True] * prompt.n_features)
            d_kernel = np.asarray(await anyio.to_thread.run_sync(wmd.many, full, texts), dtype=np.float64)
        else:
            d_kernel = d_out
        weights = np.sqrt(np.exp(-(d_kernel**2) / cfg.kernel_width**2))
        timings["locality"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        y = _target(d_out, cfg.target)
        fit = self.solver.fit(masks.astype(np.float64), y, weights)
        timings["regression"] = time.perf_counter() - t0

        m = prompt.n_features
        return MethodResult(
            coefficients=np.asarray(fit.coef, dtype=np.float64),
            attributions=normalize_attributions(fit.coef),
            intercept=float(fit.intercept),
            r2=float(fit.r2),
            fit_rank=fit.rank,
            # Row 0 is the unmasked input, recorded for reference with weight 0: not part of the fit.
            samples=Samples(
                masks=[[1] * m, *masks.astype(int).tolist()],
                # Raw divergence from the explained answer, as for every method (the regression
                # target y, a transform of it, is reproducible from these and the configuration).
                targets=[0.0, *(float(v) for v in d_out)],
                distances=[0.0, *(float(v) for v in d_kernel)],
                weights=[0.0, *(float(v) for v in weights)],
                answers=[answer, *answers],
            ),
            timings=timings,
            extras={
                "closed_requests": requested,
                "word_vectors": wmd.vectors.name,
            },
        )


def _target(d: np.ndarray, kind: str) -> np.ndarray:
    """gSMILE's regression target from output distances ``d`` ``[N]`` (values in ``[0, 1]``)."""
    s = 1.0 / (d + EPS) if kind == "inverse" else -d
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.ones_like(s)
    return np.asarray((s - lo) / (hi - lo), dtype=np.float64)


# -- closed-model leave-one-out --------------------------------------------------------------------


class ClosedLoo(_ClosedLoop):
    """Leave one out with the closed model: deleting feature i, the closed model answers again;
    the effect of i is the WMD between the explained answer and that answer (``1 + M`` calls).

    ``coefficients[i] = d_i ≥ 0`` (how far deleting i moves the answer), ``attributions`` their
    shares. ``word_vectors`` and ``metric`` as for :class:`GSmile`.
    """

    name = "closed-loo"

    def __init__(
        self, *, metric: Literal["euclidean", "cosine"] = "euclidean", word_vectors: Any = None
    ) -> None:
        word_vectors = _wv_spec(word_vectors)
        try:
            self.cfg = ClosedLooConfig(metric=metric, word_vectors=_wv_label(word_vectors))
        except ValueError as exc:
            raise ConfigError(f"invalid closed-loo setting: {exc}") from None
        super().__init__(word_vectors, self.cfg.metric)

    def config(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")

    def __repr__(self) -> str:
        return f"ClosedLoo(metric={self.cfg.metric!r})"

    async def attribute(self, prompt: Prompt, answer: str, parts: MethodParts) -> MethodResult:
        closed = self._closed(parts)
        t0 = time.perf_counter()
        masks = LOO().sample(prompt.n_features, np.random.default_rng(parts.seed))[1:]
        wmd = self._wmd(parts)
        t_sampling = time.perf_counter() - t0
        t0 = time.perf_counter()
        answers, requested = await regenerate(closed, prompt, masks, parts.params, answer)
        d = np.asarray(await anyio.to_thread.run_sync(wmd.many, answer, answers), dtype=np.float64)
        m = prompt.n_features
        return MethodResult(
            coefficients=d,
            attributions=normalize_attributions(d),
            samples=Samples(
                masks=[[1] * m, *masks.astype(int).tolist()],
                targets=[0.0, *(float(v) for v in d)],
                distances=[0.0] * (m + 1),
                weights=[1.0] * (m + 1),
                answers=[answer, *answers],
            ),
            timings={"sampling": t_sampling, "scoring": time.perf_counter() - t0},
            extras={
                "closed_requests": requested,
                "word_vectors": wmd.vectors.name,
            },
        )
