"""The closed-call cache: every distinct request is paid for at most once.

>>> cache = DiskCache("~/.cache/attribsdk/closed-calls")        # doctest: +SKIP  (one machine)
>>> cache = RedisCache("redis://cache-host:6379/0")              # doctest: +SKIP  (a cluster)
>>> model = CachedModel(OpenAIModel("gpt-4o-mini"), cache)      # doctest: +SKIP

See :mod:`attribsdk.cache.backend` (the backend protocol, choosing one from a string),
:mod:`attribsdk.cache.store` (disk format, locks), :mod:`attribsdk.cache.redis` (Redis keys,
locks) and :mod:`attribsdk.cache.model` (lookup flow).
"""

from __future__ import annotations

import os

from .backend import CACHE_URL_ENV, CacheBackend, is_cache_url, open_cache, redact_url
from .keys import KEY_VERSION, cache_key, canonical_json, request_key
from .model import CachedModel
from .redis import RedisCache
from .store import (
    SCHEMA_VERSION,
    CacheEntry,
    CacheStats,
    DiskCache,
    JSONTextDisk,
    ResponseCache,
    default_cache_dir,
)

__all__ = [
    "CACHE_URL_ENV",
    "KEY_VERSION",
    "SCHEMA_VERSION",
    "CacheBackend",
    "CacheEntry",
    "CacheStats",
    "CachedModel",
    "DiskCache",
    "JSONTextDisk",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "cache_stats",
    "canonical_json",
    "clear_cache",
    "default_cache_dir",
    "is_cache_url",
    "open_cache",
    "redact_url",
    "request_key",
]


def cache_stats(target: str | os.PathLike[str] | None = None) -> CacheStats:
    """Statistics of the cache at ``target``: a directory or a Redis URL (see :func:`open_cache`)."""
    with open_cache(target) as cache:
        return cache.stats()


def clear_cache(target: str | os.PathLike[str] | None = None) -> int:
    """Delete every entry of the cache at ``target``; returns how many were deleted."""
    with open_cache(target) as cache:
        return cache.clear()
