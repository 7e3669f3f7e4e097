"""What a response-cache backend provides, and how a cache is chosen from a string.

Two backends implement :class:`CacheBackend`:

* :class:`~attribsdk.cache.store.DiskCache` (alias ``ResponseCache``): diskcache in a directory,
  per-key ``flock`` locks: one machine, any number of processes.
* :class:`~attribsdk.cache.redis.RedisCache`: a Redis server shared by a cluster; per-key locks
  are Redis keys with a token and an expiry kept alive while held (extra ``attribsdk[redis]``).

Both store the same JSON :class:`~attribsdk.cache.store.CacheEntry` text, never cache errors
(:class:`~attribsdk.cache.model.CachedModel` only stores successful completions) and give the
same single-flight guarantee: within a process through :attr:`CacheBackend.in_flight`, across
processes (and machines, for Redis) through :meth:`CacheBackend.lock`.

:func:`open_cache` maps what users write to a backend: a ``redis://``, ``rediss://`` or
``unix://`` URL opens a :class:`~attribsdk.cache.redis.RedisCache`; anything else is a directory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import ConfigError
from .store import CacheEntry, CacheStats, DiskCache

__all__ = ["CACHE_URL_ENV", "CACHE_URL_SCHEMES", "CacheBackend", "is_cache_url", "open_cache", "redact_url"]

#: URL schemes that select :class:`~attribsdk.cache.redis.RedisCache`.
CACHE_URL_SCHEMES = ("redis", "rediss", "unix")
#: Environment variable with a cache URL that the default cache (``cache=True``) uses instead of
#: the default directory, e.g. on every worker of a cluster.
CACHE_URL_ENV = "ATTRIBSDK_CACHE_URL"


@runtime_checkable
class CacheBackend(Protocol):
    """A response cache: JSON entries by key, per-key cross-process locks, statistics.

    Callers (:class:`~attribsdk.cache.model.CachedModel`, the CLI, the Explainer's stack) use
    only these members. Async methods never block the event loop; the ``*_sync`` methods,
    :meth:`stats`, :meth:`clear`, :meth:`iter_entries` and :meth:`close` are for synchronous code.
    """

    #: Upstream calls in flight in this process, by key (in-process single-flight, shared by
    #: every CachedModel using this cache instance).
    in_flight: dict[str, Any]

    @property
    def location(self) -> str:
        """Where the entries live, for messages: a directory, or a URL with its password redacted."""
        ...

    async def get(self, key: str) -> CacheEntry | None:
        """The valid entry under ``key``, or ``None`` (corrupt or foreign data counts as missing)."""
        ...

    async def put(self, entry: CacheEntry) -> None:
        """Store ``entry`` under ``entry.key`` (atomically: readers see the old or the new entry)."""
        ...

    def lock(self, key: str) -> AbstractAsyncContextManager[bool]:
        """Hold ``key``'s cross-process lock; yields ``False`` if waiting for it timed out and the
        caller goes ahead without it (a warning is logged)."""
        ...

    def count_lookup(self, *, hit: bool) -> None:
        """Count one lookup of a caller in :meth:`stats` (``hits`` / ``misses``)."""
        ...

    async def astats(self) -> CacheStats:
        """:meth:`stats` without blocking the event loop."""
        ...

    async def aclear(self) -> int:
        """:meth:`clear` without blocking the event loop."""
        ...

    def aiter_entries(self) -> AsyncIterator[CacheEntry]:
        """:meth:`iter_entries` without blocking the event loop."""
        ...

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        ...

    def get_sync(self, key: str) -> CacheEntry | None:
        """:meth:`get` for synchronous code."""
        ...

    def put_sync(self, entry: CacheEntry) -> None:
        """:meth:`put` for synchronous code."""
        ...

    def iter_entries(self) -> Iterator[CacheEntry]:
        """Every valid entry (for inspection and tests); invalid ones are skipped."""
        ...

    def stats(self) -> CacheStats:
        """Entry count and size, plus this instance's hit/miss/write counts."""
        ...

    def clear(self) -> int:
        """Delete every entry of this cache (and nothing else); returns how many there were."""
        ...

    def close(self) -> None:
        """Release connections / handles (they are reopened on next use)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


def is_cache_url(target: object) -> bool:
    """Whether ``target`` is a string naming a cache server (``redis://``, ``rediss://``, ``unix://``)."""
    if not isinstance(target, str):
        return False
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() in CACHE_URL_SCHEMES


def redact_url(url: str) -> str:
    """``url`` with any password (in the user-info part or a ``password=`` query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if has_password else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
        # Not urlunsplit: it drops the empty authority of unix:///path (-> unix:/path).
        out = f"{parts.scheme}://{netloc}{parts.path}"
        out += f"?{query}" if query else ""
        return out + (f"#{parts.fragment}" if parts.fragment else "")
    except ValueError:
        scheme = url.partition("://")[0]
        return f"{scheme}://<unparseable URL>"


def open_cache(target: str | os.PathLike[str] | None = None, **options: Any) -> CacheBackend:
    """A cache backend for ``target``.

    Args:
        target: a ``redis://``, ``rediss://`` or ``unix://`` URL (a
            :class:`~attribsdk.cache.redis.RedisCache`), a directory (a
            :class:`~attribsdk.cache.store.DiskCache`), or ``None``: the URL in
            ``$ATTRIBSDK_CACHE_URL`` if set, else :func:`~attribsdk.cache.store.default_cache_dir`.
        options: passed to the backend's constructor (``namespace=``, ``lock_timeout=``...).
    """
    if target is None:
        target = os.environ.get(CACHE_URL_ENV) or None
    elif not str(target).strip():
        raise ConfigError("the cache target is empty: pass a directory, a redis:// URL, or None")
    if is_cache_url(target):
        from .redis import RedisCache

        assert isinstance(target, str)
        return RedisCache(target, **options)
    return DiskCache(target, **options)
