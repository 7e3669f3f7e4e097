"""One call that assembles a closed model users can trust with their API bill.

The layers, outermost first::

    ClosedModelStack        owns what it created; .ledger, .cache, .adapter
    └─ CachedModel          single-flight + cache (disk or Redis): a hit returns here, costing nothing,
       │                    consuming no budget and no rate limit; hits are recorded as avoided cost
       └─ MeteredModel      budget check with a worst-case estimate (reserved while in flight),
          │                 then records the call (tokens, attempts, dollars) in the ledger
          └─ LimitedModel   concurrency cap, requests/min and tokens/min (client side)
             └─ adapter     HTTP through the official SDK; tenacity retries, per-call deadline

Budget before limiter means a call waiting for a rate slot already holds its reservation, so
queued calls cannot overshoot the budget together. Retries happen inside the adapter: one
closed call is one budget check and one rate-limit token however many HTTP attempts it takes.
"""

from __future__ import annotations

import os
from typing import Any

from ..cache import CacheBackend, CachedModel, open_cache
from ..cost import Budget, CallLedger, MeteredModel, Pricing
from ..errors import ConfigError
from ._retry import RetryPolicy
from .base import ClosedModel
from .registry import parse_model_string, resolve_closed_model
from .wrappers import LimitedModel, ModelWrapper

__all__ = ["HTTP_PROVIDERS", "ClosedModelStack", "RetryPolicy", "build_closed_model"]

#: Providers whose factories take ``timeout``, ``retry`` and ``allow_truncated``.
HTTP_PROVIDERS = frozenset({"openai", "openai-compatible", "anthropic"})


class ClosedModelStack(ModelWrapper):
    """The assembled model (see the module docstring). Closing it closes what it created.

    Attributes:
        adapter: the innermost model (the provider adapter).
        ledger: where every call is recorded; ``ledger.report()`` is the cost report.
        cache: the response cache, or ``None``.
        max_concurrency: the cap on concurrent upstream calls (``None``: none).
    """

    def __init__(
        self,
        inner: ClosedModel,
        *,
        adapter: ClosedModel,
        ledger: CallLedger,
        cache: CacheBackend | None,
        owns_adapter: bool,
        owns_cache: bool,
    ) -> None:
        super().__init__(inner)
        self.adapter = adapter
        self.ledger = ledger
        self.cache = cache
        self._owns_adapter = owns_adapter
        self._owns_cache = owns_cache
        limited = inner
        while isinstance(limited, ModelWrapper) and not isinstance(limited, LimitedModel):
            limited = limited.inner
        self.max_concurrency = limited.max_concurrency if isinstance(limited, LimitedModel) else None

    @property
    def allow_truncated(self) -> bool:
        """The adapter's policy on answers cut at ``max_tokens`` (what a cache around this stack
        replays)."""
        return bool(getattr(self.adapter, "allow_truncated", True))

    async def aclose(self) -> None:
        """Close the adapter and the cache if this stack created them."""
        try:
            if self._owns_adapter:
                await self.adapter.aclose()
        finally:
            if self._owns_cache and self.cache is not None:
                await self.cache.aclose()

    def __repr__(self) -> str:
        return f"ClosedModelStack({self.inner!r})"


def build_closed_model(
    model: str | ClosedModel,
    *,
    cache: CacheBackend | str | os.PathLike[str] | bool | None = None,
    ledger: CallLedger | None = None,
    budget: Budget | None = None,
    pricing: Pricing | None = None,
    max_concurrency: int | None = 8,
    rpm: float | None = None,
    tpm: float | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
    allow_truncated: bool = False,
    **options: Any,
) -> ClosedModelStack:
    """Wrap ``model`` in cache → budget/ledger → limiter (see the module docstring).

    Args:
        model: a model string (``"openai:gpt-4o-mini"``, ``"anthropic:..."``,
            ``"openai-compatible:<model>@<base_url>"``) or a ready :class:`ClosedModel`.
        cache: a :class:`~attribsdk.cache.CacheBackend` (``DiskCache``, ``RedisCache``); a
            ``redis://``/``rediss://``/``unix://`` URL (a ``RedisCache``) or a directory (a
            ``DiskCache``), opened here and closed with the stack; ``True`` for
            ``$ATTRIBSDK_CACHE_URL`` if set, else :func:`~attribsdk.cache.default_cache_dir`;
            ``None``/``False`` for none.
        ledger: the ledger to record into (share one across a run); a new one by default.
        budget: spending limits, set on the ledger (which must not already have another).
        pricing: prices for a new ledger (ignored when ``ledger`` is given).
        max_concurrency: cap on concurrent upstream calls (``None``: none).
        rpm / tpm: client-side requests / tokens per minute (``None``: unlimited).
        timeout: seconds per HTTP attempt (model strings of HTTP providers only).
        max_attempts: HTTP attempts per call, first included (shorthand for ``retry``).
        retry: the full retry policy (model strings of HTTP providers only).
        allow_truncated: accept answers cut at ``max_tokens`` (HTTP providers given as strings;
            a ready adapter keeps its own setting). The cache follows the adapter: refused
            answers are stored too (they were billed) and refused again from the cache.
        options: passed to the provider's factory (``api_key_env=``, ``base_url=``, ``api=``...).
    """
    if retry is not None and max_attempts is not None:
        raise ConfigError("give max_attempts or retry, not both")
    if max_attempts is not None:
        retry = RetryPolicy(max_attempts=max_attempts)

    owns_adapter = isinstance(model, str)
    if isinstance(model, str):
        provider, _ = parse_model_string(model)
        if provider in HTTP_PROVIDERS:
            if timeout is not None:
                options["timeout"] = timeout
            if retry is not None:
                options["retry"] = retry
            options["allow_truncated"] = allow_truncated
        elif timeout is not None or retry is not None:
            raise ConfigError(f"timeout/max_attempts/retry apply to HTTP providers, not {provider!r}")
        adapter = resolve_closed_model(model, **options)
    else:
        if timeout is not None or retry is not None or options:
            raise ConfigError(
                "timeout, max_attempts, retry and provider options apply to model strings; "
                "configure a ready ClosedModel directly"
            )
        adapter = resolve_closed_model(model)

    if ledger is None:
        ledger = CallLedger(pricing=pricing, budget=budget)
    elif budget is not None:
        if ledger.budget is not None and ledger.budget != budget:
            raise ConfigError("the ledger already has a different budget")
        ledger.budget = budget

    owns_cache = False
    store: CacheBackend | None
    if cache is None or cache is False:
        store = None
    elif isinstance(cache, CacheBackend):
        store = cache
    elif cache is True:
        store, owns_cache = open_cache(), True
    elif isinstance(cache, str | os.PathLike):
        store, owns_cache = open_cache(cache), True
    else:
        raise ConfigError(
            "cache must be a CacheBackend, a Redis URL, a directory, True or None; "
            f"got {type(cache).__name__}"
        )

    stacked: ClosedModel = adapter
    if max_concurrency is not None or rpm is not None or tpm is not None:
        stacked = LimitedModel(stacked, max_concurrency=max_concurrency, rpm=rpm, tpm=tpm)
    stacked = MeteredModel(stacked, ledger)
    if store is not None:
        # The cache replays the adapter's own policy: HTTP adapters refuse truncated answers unless
        # allowed; local, test and function models never do (a hit must not refuse what a fresh
        # call returned).
        follows = bool(getattr(adapter, "allow_truncated", True))
        stacked = CachedModel(stacked, store, ledger=ledger, allow_truncated=follows)
    return ClosedModelStack(
        stacked, adapter=adapter, ledger=ledger, cache=store, owns_adapter=owns_adapter, owns_cache=owns_cache
    )
