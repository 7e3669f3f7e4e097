""":class:`CachedModel`: answers from a response cache, each distinct request sent upstream at most once.

For a request it (1) joins an identical call already in flight in this process (single-flight),
else (2) looks the key up, else (3) takes the key's cross-process lock (one machine's processes
for the disk cache, a whole cluster's for Redis), looks again (another process may have just
answered it), and only then (4) calls the wrapped model and stores the answer. Errors and invalid
responses are never stored. An answer cut at ``max_tokens`` is stored even when it is refused
(it was billed): a caller that does not allow truncation gets the same refusal from the cache,
at no cost, and one that does gets the answer. An answer that cannot be stored is still returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from ..adapters.base import ClosedModel, Completion, GenerationParams, Message
from ..adapters.wrappers import ModelWrapper, describe_request
from ..cost import CallLedger
from ..errors import (
    AdapterError,
    AttribError,
    BudgetExceeded,
    CacheUnavailableError,
    ConfigError,
    InputError,
    TruncatedOutputError,
)
from .backend import CacheBackend
from .keys import request_key
from .store import CacheEntry

__all__ = ["CachedModel"]

logger = logging.getLogger("attribsdk.cache")


@dataclass
class _Flight:
    """One upstream call in progress that identical requests wait for."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: Completion | None = None
    error: Exception | None = None


#: A leader's errors that belong to its caller rather than to the request (its budget, its
#: configuration): a follower, possibly of another explainer sharing the cache, asks for itself.
_CALLERS_OWN = (BudgetExceeded, ConfigError, InputError)


def as_hit(completion: Completion) -> Completion:
    """``completion`` as served from the cache: no HTTP attempt, nothing paid or discarded."""
    return completion.model_copy(update={"cached": True, "attempts": 0, "discarded": []})


def _own_copy(error: Exception) -> Exception:
    """The leader's error for one of its followers: a copy with its own ``partial``, since callers
    add to ``partial`` what they know (their own answer, their cost) and must not mix them.

    The follower sent nothing: the copy has no HTTP attempts, and the answer the leader paid for
    (a failed or log-probability-less answer) is a cache hit, so a ledger that meters the follower
    does not charge it again."""
    if not isinstance(error, AttribError):
        return error
    cls = type(error)
    mine = cls.__new__(cls, *error.args)  # not __init__: subclasses take keyword-only fields
    mine.__dict__.update(error.__dict__)
    mine.partial = {k: v for k, v in error.partial.items() if k != "discarded"}
    if isinstance(answered := mine.partial.get("completion"), Completion):
        mine.partial["completion"] = as_hit(answered)
    if isinstance(mine, AdapterError):
        mine.attempts = 0
    mine.__cause__, mine.__suppress_context__ = error.__cause__, error.__suppress_context__
    return mine


class CachedModel(ModelWrapper):
    """Wraps a model with a response cache (any :class:`~attribsdk.cache.backend.CacheBackend`).

    Args:
        inner: the model to call on a miss.
        cache: the cache (shared by every CachedModel of a run; it holds the in-flight table).
        ledger: when given, cache hits and joined in-flight calls are recorded there as hits
            (cost $0, their price counted as avoided).
        allow_truncated: return answers that stopped at ``max_tokens``; otherwise they are refused
            with :class:`~attribsdk.errors.TruncatedOutputError` (the answer in its
            ``partial["completion"]``). Either way they are stored: they were billed.

    Hits come back with ``cached=True``, ``attempts=0`` and nothing ``discarded``.
    """

    def __init__(
        self,
        inner: ClosedModel,
        cache: CacheBackend,
        *,
        ledger: CallLedger | None = None,
        allow_truncated: bool = False,
    ) -> None:
        super().__init__(inner)
        if not isinstance(cache, CacheBackend):
            raise ConfigError(
                f"cache must be a CacheBackend (DiskCache, RedisCache), got {type(cache).__name__}"
            )
        self.cache = cache
        self.ledger = ledger
        self.allow_truncated = allow_truncated

    def __repr__(self) -> str:
        return f"CachedModel({self.inner!r}, {self.cache!r})"

    def cacheable(self, completion: Completion) -> bool:
        """Whether ``completion`` is stored: every fresh (billed) answer, truncated ones too."""
        return not completion.cached

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """The cached answer if there is one, else the wrapped model's (stored for next time)."""
        request = describe_request(self.inner, messages, params)
        key = request_key(request, sample_index=params.sample_index)
        flights: dict[str, _Flight] = self.cache.in_flight
        while True:
            flight = flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                return self._hit(flight.result)
            error = flight.error
            if isinstance(error, TruncatedOutputError):
                answered = error.partial.get("completion")
                if isinstance(answered, Completion):
                    return self._hit(answered)  # stored by the leader: served (or refused) as a hit
            if isinstance(error, _CALLERS_OWN) and not isinstance(error, CacheUnavailableError):
                continue  # the leader's budget or settings refused it, not the request: ask ourselves
            if error is not None:
                raise _own_copy(error)
            # The leader was cancelled before finishing: try again (one of us becomes the leader).
        flight = _Flight()
        flights[key] = flight
        try:
            completion = await self._lead(key, request, messages, params)
            flight.result = completion
            return completion
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del flights[key]
            flight.done.set()

    async def _lead(
        self, key: str, request: dict[str, object], messages: list[Message], params: GenerationParams
    ) -> Completion:
        entry = await self.cache.get(key)
        self.cache.count_lookup(hit=entry is not None)
        if entry is not None:
            return self._hit(entry.completion)
        async with self.cache.lock(key):
            entry = await self.cache.get(key)
            if entry is not None:
                return self._hit(entry.completion)
            try:
                completion = await self.inner.generate(messages, params)
            except TruncatedOutputError as exc:
                # Cut at max_tokens and refused, but answered and billed: keep the answer, so that
                # a re-run pays nothing (it is refused again by _hit, at no cost).
                answered = exc.partial.get("completion")
                if isinstance(answered, Completion) and self.cacheable(answered):
                    await self._store(key, request, answered)
                raise
            if self.cacheable(completion):
                await self._store(key, request, completion)
            return self._refuse_truncated(completion)

    async def _store(self, key: str, request: dict[str, object], completion: Completion) -> None:
        try:
            # Shielded: a caller cancelled after the answer came back must not lose what it paid for.
            with anyio.CancelScope(shield=True):
                await self.cache.put(CacheEntry.create(key, self.name, dict(request), completion))
        except Exception as exc:  # a full disk must not lose an answer that was paid for
            logger.warning("cache %s: could not store %s… (%s)", self.cache.location, key[:12], exc)

    def _hit(self, completion: Completion) -> Completion:
        hit = as_hit(completion)
        if self.ledger is not None:
            self.ledger.record_completion(self.name, hit)
        return self._refuse_truncated(hit)

    def _refuse_truncated(self, completion: Completion) -> Completion:
        """``completion``, unless it was cut at ``max_tokens`` and this caller does not allow that:
        then it is refused as the model would, the answer kept (a cached one costs nothing more)."""
        if completion.finish_reason == "length" and not self.allow_truncated:
            what = "the cached answer" if completion.cached else "the answer"
            raise TruncatedOutputError(
                f"{self.name}: {what} was cut at max_tokens; raise max_tokens or allow truncated answers",
                partial={"completion": completion},
            )
        return completion
