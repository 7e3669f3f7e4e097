"""The closed-call cache: every distinct request is paid for at most once.

>>> cache = ResponseCache("~/.cache/attribsdk/closed-calls")   # doctest: +SKIP
>>> model = CachedModel(OpenAIModel("gpt-4o-mini"), cache)      # doctest: +SKIP

See :mod:`attribsdk.cache.store` (disk format, locks) and :mod:`attribsdk.cache.model` (lookup flow).
"""

from __future__ import annotations

from .keys import KEY_VERSION, cache_key, canonical_json, request_key
from .model import CachedModel
from .store import SCHEMA_VERSION, CacheEntry, CacheStats, JSONTextDisk, ResponseCache, default_cache_dir

__all__ = [
    "KEY_VERSION",
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheStats",
    "CachedModel",
    "JSONTextDisk",
    "ResponseCache",
    "cache_key",
    "cache_stats",
    "canonical_json",
    "clear_cache",
    "default_cache_dir",
    "request_key",
]


def cache_stats(directory: str | None = None) -> CacheStats:
    """Statistics of the cache in ``directory`` (default :func:`default_cache_dir`)."""
    with ResponseCache(directory) as cache:
        return cache.stats()


def clear_cache(directory: str | None = None) -> int:
    """Delete every entry of the cache in ``directory``; returns how many were deleted."""
    with ResponseCache(directory) as cache:
        return cache.clear()
