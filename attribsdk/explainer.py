"""The Explainer: wires the stages together. Async first, with thin sync wrappers.

prompt → features → closed answer (adapter) → method (sampling → surrogate scores →
locality → regression) → Explanation
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pydantic import ValidationError

from ._strategy import describe_invalid
from .adapters.base import ClosedModel, Completion, GenerationParams, Message
from .adapters.registry import parse_model_string
from .adapters.stack import HTTP_PROVIDERS, ClosedModelStack, build_closed_model
from .cache import CacheBackend
from .cost import Budget, CallLedger, CostReport, Pricing
from .errors import (
    AdapterError,
    AttribError,
    ConfigError,
    InputError,
    ScoringError,
    callback_failed,
    raise_keeping,
)
from .explanation import Counts, Explanation, Timings
from .features import Span
from .methods import Method, MethodParts, make_method
from .prompt import Example, Prompt, build_prompt
from .views.progress import progress_bar, progress_enabled

if TYPE_CHECKING:
    from .scoring.base import Scorer
    from .scoring.models import ModelStore
    from .scoring.ray import RayScorer

#: Where surrogate scoring runs: in this process, or on a pool of Ray actors.
Engine = Literal["local", "ray"]

__all__ = ["DEFAULT_CLOSED", "DEFAULT_SURROGATE", "Explainer"]

DEFAULT_SURROGATE = "smollm2"
DEFAULT_CLOSED = "local:smollm2"
DEFAULT_PARAMS = GenerationParams(max_tokens=64, temperature=0.0)

T = TypeVar("T")


def placement_applies(closed: str | ClosedModel, surrogate: str | Scorer) -> bool:
    """Whether an explainer built from ``closed`` and ``surrogate`` loads a model by name, so that
    its ``device``/``dtype`` take effect (a surrogate name, or a ``"local:"`` closed model)."""
    return isinstance(surrogate, str) or (
        isinstance(closed, str) and parse_model_string(closed)[0] == "local"
    )


class Explainer:
    """Explains closed-model answers.

    Args:
        closed: the closed model — a model string (``"local:smollm2"``, ``"openai:gpt-4o-mini"``…)
            or any :class:`~attribsdk.adapters.base.ClosedModel`.
        surrogate: the local surrogate — a name (``"smollm2"``, ``"gemma3-270m"``), a directory or
            a ``.gguf`` path, or any :class:`~attribsdk.scoring.base.Scorer`.
        method: a method name (``"rope-lime"``, ``"rope-lime-loo"``) or instance.
        device, dtype: where and how local models run (``"auto"``: cuda > mps > cpu; dtype
            ``"auto"`` is float32 on CPU, bfloat16 on CUDA; ``"bfloat16"`` on CPU is opt-in). They
            apply to models this explainer loads by name; with a ready ``Scorer`` as ``surrogate``
            and no ``"local:"`` closed model, anything but ``"auto"`` raises ``ConfigError``.
        seed: default seed of the perturbation sampler.
        params: generation parameters for the closed call.
        store: a :class:`~attribsdk.scoring.models.ModelStore` to share loaded models between
            explainers; by default the explainer owns one and closes it.
        cache: the closed-call response cache — a :class:`~attribsdk.cache.CacheBackend`
            (``DiskCache``, ``RedisCache``), a directory, a ``redis://`` / ``rediss://`` /
            ``unix://`` URL (shared by a cluster), ``True`` (``$ATTRIBSDK_CACHE_URL`` if set,
            else the default directory) or ``False``. ``None`` (default): on for
            HTTP providers, named by string or given as a ready adapter (paid calls are made
            once), off for local models and other ready models.
        budget: a :class:`~attribsdk.cost.Budget` for all closed calls of this explainer.
        pricing: price overrides (:class:`~attribsdk.cost.Pricing`).
        max_concurrency, rpm, tpm: client-side limits on closed calls.
        timeout, max_attempts: per-HTTP-attempt timeout and attempts per call (HTTP providers).
        closed_options: extra options for the provider factory (``api_key_env=``, ``base_url=``…).
        engine: where surrogate scoring runs -- ``"local"`` (this process) or ``"ray"`` (a pool
            of Ray actors, :class:`~attribsdk.scoring.ray.RayScorer`; needs
            ``pip install 'attribsdk[ray]'``). Closed calls always stay in this process.
        ray_address, ray_actors: the Ray cluster (``None``: ``$RAY_ADDRESS`` or a new local
            one; ``"local"``, ``"auto"``, ``"host:6379"``, ``"ray://host:10001"``) and the number
            of actors (default: as many as its CPUs allow). For more control pass a ready
            ``RayScorer`` as ``surrogate``.

    Use as ``async with Explainer() as ex: await ex.explain(...)`` or, from synchronous code,
    ``with Explainer() as ex: ex.explain_sync(...)``.
    """

    def __init__(
        self,
        closed: str | ClosedModel = DEFAULT_CLOSED,
        surrogate: str | Scorer = DEFAULT_SURROGATE,
        method: str | Method = "rope-lime",
        *,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        params: GenerationParams | None = None,
        store: ModelStore | None = None,
        cache: CacheBackend | str | os.PathLike[str] | bool | None = None,
        budget: Budget | None = None,
        pricing: Pricing | None = None,
        max_concurrency: int | None = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
        closed_options: dict[str, Any] | None = None,
        engine: Engine = "local",
        ray_address: str | None = None,
        ray_actors: int | None = None,
    ) -> None:
        if engine not in ("local", "ray"):
            raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
        self.engine: Engine = engine
        self.ray_address = ray_address
        self.ray_actors = ray_actors
        self._ray: RayScorer | None = None
        self.method = make_method(method)
        if (device, dtype) != ("auto", "auto") and not placement_applies(closed, surrogate):
            raise ConfigError(
                f"device={device!r}/dtype={dtype!r} would be ignored: the surrogate was given as a "
                f"ready {type(surrogate).__name__} (already placed) and the closed model is not a "
                "'local:' model; load the scorer with the device and dtype you want, or pass the "
                "surrogate by name"
            )
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.params = params or DEFAULT_PARAMS
        self._closed_spec = closed
        self._surrogate_spec = surrogate
        self._store = store
        self._owns_store = store is None
        self._closed: ClosedModelStack | None = None
        self.ledger = CallLedger(pricing=pricing, budget=budget)
        self._stack_options: dict[str, Any] = {
            "cache": cache,
            "max_concurrency": max_concurrency,
            "rpm": rpm,
            "tpm": tpm,
            "timeout": timeout,
            "max_attempts": max_attempts,
            **(closed_options or {}),
        }
        self._scorer: Scorer | None = None if isinstance(surrogate, str) else surrogate
        self._init_lock: anyio.Lock | None = None
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._closed_flag = False

    def __repr__(self) -> str:
        return (
            f"Explainer(closed={self.closed_name!r}, surrogate={self.surrogate_name!r}, "
            f"method={self.method.name!r})"
        )

    @property
    def closed_name(self) -> str:
        c = self._closed_spec
        return c if isinstance(c, str) else c.name

    @property
    def surrogate_name(self) -> str:
        s = self._surrogate_spec
        return str(s) if isinstance(s, str) else s.name

    # -- resources ------------------------------------------------------------------------------
    def _get_store(self) -> ModelStore:
        if self._store is None:
            from .scoring.models import ModelStore

            self._store = ModelStore()
        return self._store

    def _lock(self) -> anyio.Lock:
        if self._init_lock is None:
            self._init_lock = anyio.Lock()
        return self._init_lock

    async def closed_model(self) -> ClosedModelStack:
        """The closed model, wrapped in cache → budget/ledger → limiter (built on first use)."""
        if self._closed_flag:
            raise ConfigError("this Explainer is closed")
        async with self._lock():
            if self._closed is None:
                spec = self._closed_spec
                options = dict(self._stack_options)
                if isinstance(spec, str):
                    provider: str | None = parse_model_string(spec)[0]
                else:  # a ready adapter says its provider (OpenAIModel, AnthropicModel)
                    provider = getattr(spec, "provider", None)
                if options["cache"] is None:
                    options["cache"] = provider in HTTP_PROVIDERS
                if provider == "local" and isinstance(spec, str):
                    options.update(store=self._get_store(), device=self.device, dtype=self.dtype)
                self._closed = build_closed_model(spec, ledger=self.ledger, **options)
            return self._closed

    def cost_report(self) -> CostReport:
        """Every closed call this explainer made so far: calls, attempts, hits, tokens, dollars."""
        return self.ledger.report()

    async def scorer(self) -> Scorer:
        """The surrogate scorer (loaded on first use, in a worker thread); with ``engine="ray"``
        the :class:`~attribsdk.scoring.ray.RayScorer` (actors started on first use)."""
        if self.engine == "ray":
            return await self.ray_scorer()
        return await self._local_scorer()

    async def _local_scorer(self) -> Scorer:
        if self._closed_flag:
            raise ConfigError("this Explainer is closed")
        async with self._lock():
            if self._scorer is None:
                store, spec = self._get_store(), self._surrogate_spec
                assert isinstance(spec, str)
                self._scorer = await anyio.to_thread.run_sync(
                    lambda: store.get(spec, device=self.device, dtype=self.dtype)
                )
            return self._scorer

    async def ray_scorer(self, address: str | None = None, actors: int | None = None) -> RayScorer:
        """The Ray actor pool scoring for this explainer, started on first use for this
        explainer's surrogate (``address``/``actors`` default to ``ray_address``/``ray_actors``).
        A surrogate given as a ``RayScorer`` is used as is."""
        if self._closed_flag:
            raise ConfigError("this Explainer is closed")
        from .scoring.ray import RayScorer

        spec = self._surrogate_spec
        if isinstance(spec, RayScorer):
            return spec
        address = address if address is not None else self.ray_address
        actors = actors if actors is not None else self.ray_actors
        async with self._lock():
            if self._ray is None:
                self._ray = await anyio.to_thread.run_sync(
                    lambda: RayScorer(
                        spec, address=address, num_actors=actors, device=self.device, dtype=self.dtype
                    )
                )
            elif address is not None and address != self._ray.address:
                raise ConfigError(
                    f"this Explainer already scores on the Ray cluster {self._ray.address!r}, not {address!r}"
                )
            return self._ray

    async def aclose(self) -> None:
        """Release the closed-model client, the models this explainer loaded and its Ray actors."""
        if self._closed_flag:
            return
        self._closed_flag = True
        # Shielded, and each release runs even if an earlier one fails: a cancelled or failing
        # close must not leave Ray actors (and a cluster this process started) running.
        with anyio.CancelScope(shield=True):
            try:
                if self._closed is not None:
                    await self._closed.aclose()
            finally:
                try:
                    if self._ray is not None:
                        pool, self._ray = self._ray, None
                        await anyio.to_thread.run_sync(pool.close)
                finally:
                    if self._owns_store and self._store is not None:
                        store = self._store
                        await anyio.to_thread.run_sync(store.close)
                    self._closed = None
                    self._scorer = None

    async def __aenter__(self) -> Explainer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- explain --------------------------------------------------------------------------------
    async def explain(
        self,
        question: str,
        context: str | Sequence[str] | None = None,
        *,
        features: str | Sequence[Span] | Sequence[Sequence[Span]] = "sentences",
        answer: str | None = None,
        system: str | None = None,
        template: str | None = None,
        explain_question: bool = False,
        method: str | Method | None = None,
        seed: int | None = None,
        language: str = "en",
        progress: bool | None = None,
    ) -> Explanation:
        """Explain the closed model's answer to ``question`` (about ``context``, if given).

        Features are the context's ``features`` (granularity or explicit spans) or, without a
        context, the question's. When ``answer`` is given the closed model is not called.
        ``progress`` shows a bar on stderr while the method runs, counting the closed calls of
        closed-loop methods and the scored surrogate sequences of the others (``None``: for
        closed-loop methods when stderr is a terminal; ``attribsdk explain`` shows it for every
        method there).
        """
        t0 = time.perf_counter()
        prompt = build_prompt(
            question,
            context,
            features=features,
            system=system,
            template=template,
            explain_question=explain_question,
            language=language,
        )
        t_features = time.perf_counter() - t0
        return await self.explain_prompt(
            prompt,
            answer=answer,
            method=method,
            seed=seed,
            progress=progress,
            _t_features=t_features,
            _t_start=t0,
        )

    async def explain_prompt(
        self,
        prompt: Prompt,
        *,
        answer: str | None = None,
        method: str | Method | None = None,
        seed: int | None = None,
        progress: bool | None = None,
        _t_features: float = 0.0,
        _t_start: float | None = None,
        _scorer: Scorer | None = None,
    ) -> Explanation:
        """Explain the answer to a ready :class:`~attribsdk.prompt.Prompt` (``progress`` as in
        :meth:`explain`)."""
        t_start = _t_start if _t_start is not None else time.perf_counter()
        meth = self.method if method is None else make_method(method)
        seed_v = self.seed if seed is None else seed

        # 1. the closed answer: exactly one call, or none when the caller passes the answer
        t0 = time.perf_counter()
        with self.ledger.track() as tracked:
            try:
                completion = await self._answer(prompt, answer)
            except AttribError as exc:  # e.g. a truncated answer: paid for, and in partial
                exc.partial.setdefault("cost", tracked.report())
                raise
            except Exception as exc:  # a custom model's own error, typed as the closed call's
                raise AdapterError(
                    f"{self.closed_name}: {type(exc).__name__}: {exc}", partial={"cost": tracked.report()}
                ) from exc
            t_closed = time.perf_counter() - t0
            return await self._attribute(
                prompt,
                completion,
                meth,
                seed_v,
                tracked,
                answer_given=answer is not None,
                progress=progress,
                t_features=_t_features,
                t_closed=t_closed,
                t_start=t_start,
                scorer=_scorer,
            )

    async def _attribute(
        self,
        prompt: Prompt,
        completion: Completion,
        meth: Method,
        seed_v: int,
        tracked: CallLedger,
        *,
        answer_given: bool,
        progress: bool | None,
        t_features: float,
        t_closed: float,
        t_start: float,
        scorer: Scorer | None = None,
    ) -> Explanation:
        if not completion.text.strip():
            raise InputError(
                "the closed model returned an empty answer; nothing to explain",
                partial={"completion": completion, "cost": tracked.report()},
            )

        # 2. the method (sampling → scoring → locality → regression)
        needs_closed = bool(getattr(meth, "needs_closed", False))
        unit = "closed calls" if needs_closed else str(getattr(meth, "progress_unit", "surrogate sequences"))
        bar = progress_bar(
            None,
            # auto: only closed-loop methods, whose many paid calls are the long part
            progress if progress is not None else (needs_closed and progress_enabled(None)),
            description=f"{meth.name}: {prompt.n_features} features, {unit}",
            stderr=True,
        )
        try:
            if scorer is None:
                scorer = await self.scorer()
            closed: ClosedModel | None = await self.closed_model() if needs_closed else None
            if closed is not None:
                closed = _CountingModel(closed, bar)
            parts = MethodParts(
                scorer=scorer,
                closed=closed,
                params=self.params,
                seed=seed_v,
                progress=None if needs_closed else bar,
            )
            result = await meth.attribute(prompt, completion.text, parts)
        except Exception as exc:  # keep what was paid for: the answer travels with the error
            raise_keeping(exc, "", completion=completion, cost=tracked.report())
        finally:
            bar(0, close=True)

        cost = tracked.report()
        timings = Timings(
            features=t_features,
            closed=t_closed,
            sampling=result.timings.get("sampling", 0.0),
            scoring=result.timings.get("scoring", 0.0),
            locality=result.timings.get("locality", 0.0),
            regression=result.timings.get("regression", 0.0),
            total=time.perf_counter() - t_start,
        )
        return Explanation(
            method=meth.name,
            config=meth.config(),
            seed=seed_v,
            answer=completion.text,
            answer_tokens=result.answer_tokens,
            features=prompt.features,
            attributions=[float(v) for v in result.attributions],
            coefficients=[float(v) for v in result.coefficients],
            intercept=result.intercept,
            r2=result.r2,
            fit_rank=result.fit_rank,
            closed_model=None if answer_given else completion.model or self.closed_name,
            surrogate=self.surrogate_name,
            prompt=prompt.model_dump(mode="json"),
            counts=Counts(
                closed_calls=cost.closed_calls,
                http_attempts=cost.http_attempts,
                cache_hits=cost.cache_hits,
                surrogate_sequences=result.surrogate_sequences,
                surrogate_tokens=result.surrogate_tokens,
            ),
            usage=cost.tokens,
            cost=cost,
            timings=timings,
            engine={
                k: v for k, v in result.extras.items() if v is None or isinstance(v, bool | int | float | str)
            },
            samples=result.samples,
        )

    async def _answer(self, prompt: Prompt, answer: str | None) -> Completion:
        if answer is not None:
            if not isinstance(answer, str) or not answer.strip():
                raise InputError("`answer` must be a non-empty string")
            return Completion(text=answer, model="given")
        closed = await self.closed_model()
        messages: list[Message] = list(prompt.render().messages)
        return await closed.generate(messages, self.params)

    async def explain_many(
        self,
        examples: Iterable[Example | dict[str, Any]],
        *,
        concurrency: int = 4,
        progress: bool | None = None,
        on_result: Callable[[int, Explanation | AttribError], None] | None = None,
        engine: Engine | None = None,
        ray_address: str | None = None,
        ray_actors: int | None = None,
    ) -> list[Explanation | AttribError]:
        """Explain many examples concurrently; one failure never cancels the others.

        Returns one entry per example, in order: an :class:`Explanation` or the
        :class:`~attribsdk.errors.AttribError` that example raised (with ``partial`` results).
        ``on_result(index, result)`` is called as each example finishes; if it raises, the other
        examples still finish, and a :class:`ConfigError` carrying all the results in
        ``partial["results"]`` is raised at the end. A malformed example dict is an
        :class:`~attribsdk.errors.InputError` before anything runs. ``progress`` shows a bar
        of finished examples on stderr (``None``: when stderr is a terminal).

        ``engine="ray"`` scores on a pool of Ray actors (``ray_address``, ``ray_actors``: see the
        class; the pool is kept for later calls and stopped by :meth:`aclose`); closed calls stay
        in this process under this explainer's budget, limiter and cache. ``None``: the
        explainer's ``engine``.
        """
        items: list[Example] = []
        for i, e in enumerate(examples):
            try:
                items.append(e if isinstance(e, Example) else Example.model_validate(e))
            except ValidationError as exc:
                raise InputError(f"example {i}: {describe_invalid('Example', exc)}") from None
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an integer ≥ 1, got {concurrency!r}")
        if engine not in (None, "local", "ray"):
            raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
        scorer: Scorer | None = None
        if (engine or self.engine) == "ray":
            scorer = await self.ray_scorer(ray_address, ray_actors)
        elif engine == "local":
            scorer = await self._local_scorer()
        results: list[Explanation | AttribError | None] = [None] * len(items)
        limiter = anyio.CapacityLimiter(concurrency)
        bar = progress_bar(len(items), progress, description="explaining", stderr=True)

        async def run_one(i: int, ex: Example) -> None:
            async with limiter:
                res: Explanation | AttribError
                try:
                    res = await self.explain_prompt(
                        ex.to_prompt(), answer=ex.answer, progress=False, _scorer=scorer
                    )
                except AttribError as exc:
                    res = exc
                except Exception as exc:
                    res = ScoringError(f"{type(exc).__name__}: {exc}")
                results[i] = res
                if on_result is not None:
                    try:
                        on_result(i, res)
                    except Exception as exc:  # the other examples go on; raised at the end
                        callback_errors.append(exc)
                bar(1)

        callback_errors: list[Exception] = []
        try:
            async with anyio.create_task_group() as tg:
                for i, ex in enumerate(items):
                    tg.start_soon(run_one, i, ex)
        finally:
            bar(0, close=True)
        done = [r for r in results if r is not None]
        if callback_errors:
            kept = "every example was still explained"
            raise callback_failed("on_result", callback_errors, len(items), kept, {"results": done})
        return done

    # -- sync wrappers --------------------------------------------------------------------------
    def __enter__(self) -> Explainer:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._portal is not None:
                self._portal.call(self.aclose)
        finally:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(exc_type, exc, tb)
            self._portal = self._portal_cm = None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise ConfigError("use `with Explainer() as ex:` before calling the *_sync methods")
        return self._portal.call(lambda: fn(*args, **kwargs))

    def explain_sync(
        self, question: str, context: str | Sequence[str] | None = None, **kw: Any
    ) -> Explanation:
        """Blocking :meth:`explain` (inside ``with Explainer() as ex:``)."""
        result: Explanation = self._call(self.explain, question, context, **kw)
        return result

    def explain_prompt_sync(self, prompt: Prompt, **kw: Any) -> Explanation:
        result: Explanation = self._call(self.explain_prompt, prompt, **kw)
        return result

    def explain_many_sync(
        self, examples: Iterable[Example | dict[str, Any]], **kw: Any
    ) -> list[Explanation | AttribError]:
        result: list[Explanation | AttribError] = self._call(self.explain_many, list(examples), **kw)
        return result


class _CountingModel:
    """A closed model that advances a progress bar by one per finished call."""

    def __init__(self, inner: ClosedModel, bar: Callable[..., None]) -> None:
        self._inner = inner
        self._bar = bar

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def max_concurrency(self) -> int | None:
        """The inner model's cap on concurrent calls (closed-loop methods send no more at once)."""
        cap = getattr(self._inner, "max_concurrency", None)
        return cap if isinstance(cap, int) else None

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        try:
            return await self._inner.generate(messages, params)
        finally:
            self._bar(1)

    async def aclose(self) -> None:
        await self._inner.aclose()
