"""The on-disk response cache: diskcache holding JSON text, plus cross-process locks.

* Values are JSON text (a versioned :class:`CacheEntry`) under ``str`` keys; nothing is ever
  pickled or unpickled (:class:`JSONTextDisk` refuses both), eviction is off
  (``eviction_policy="none"``) and SQLite runs with ``synchronous=FULL``.
* Every disk operation runs in a worker thread (``anyio.to_thread``), never on the event loop.
* :meth:`DiskCache.lock` is a per-key cross-process lock (``flock`` through ``filelock``,
  released by the OS if its holder dies, even by SIGKILL), acquired by polling so that no worker
  thread blocks while waiting.

:class:`DiskCache` is the one-machine :class:`~attribsdk.cache.backend.CacheBackend`;
``ResponseCache`` is its original name, kept as an alias.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import anyio
import anyio.to_thread
import diskcache
import filelock
import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError

from ..adapters.base import Completion, Usage
from ..errors import CacheUnavailableError, ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "CacheEntry",
    "CacheStats",
    "DiskCache",
    "JSONTextDisk",
    "ResponseCache",
    "default_cache_dir",
]

logger = logging.getLogger("attribsdk.cache")

#: Version of the stored entry format; entries of another version are ignored (misses).
SCHEMA_VERSION = 1
#: File that marks a directory as an attribsdk disk cache.
MARKER = "attribsdk-cache.json"
#: diskcache settings every attribsdk disk cache was created with (a directory without
#: :data:`MARKER` is adopted only when its database has them).
_OWN_SETTINGS = {"eviction_policy": "none", "sqlite_synchronous": 2}
#: Environment variable overriding :func:`default_cache_dir`.
CACHE_DIR_ENV = "ATTRIBSDK_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$ATTRIBSDK_CACHE_DIR`` if set, else the user cache directory's ``attribsdk/closed-calls``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_cache_path("attribsdk") / "closed-calls"


class JSONTextDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache ``Disk`` that stores only ``str`` keys and ``str`` values and never unpickles."""

    def put(self, key: Any) -> Any:
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, got {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ValueError("refusing to unpickle a cache key (the cache directory holds foreign data)")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or type(value) is not str:
            raise TypeError(f"cache values must be str (JSON text), got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_TEXT):
            raise ValueError(
                "refusing to read a non-text cache value (the cache directory holds foreign data)"
            )
        return super().fetch(mode, filename, value, read)


class CacheEntry(BaseModel):
    """One cached answer with what it was an answer to."""

    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = 1
    key: str
    created_at: datetime
    #: The ClosedModel name that produced it, e.g. ``"openai:gpt-4o-mini"``.
    model: str
    #: The provider's versioned model name and system fingerprint, when it reported them.
    model_version: str | None = None
    system_fingerprint: str | None = None
    usage: Usage
    #: The request description the key was derived from (no credentials, no timeouts).
    request: dict[str, Any]
    completion: Completion

    @classmethod
    def create(cls, key: str, model: str, request: dict[str, Any], completion: Completion) -> CacheEntry:
        """An entry for a fresh upstream completion, stamped now (UTC)."""
        raw = completion.raw or {}
        fingerprint = raw.get("system_fingerprint")
        return cls(
            key=key,
            created_at=datetime.now(UTC),
            model=model,
            model_version=completion.model,
            system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
            usage=completion.usage,
            request=request,
            # what was discarded on the way to this answer was paid for once, not with each hit
            completion=completion.model_copy(update={"cached": False, "discarded": []}),
        )


class CacheStats(BaseModel):
    """What is in a cache, and this instance's hit/miss counts since it was opened."""

    #: The directory, or for a server the URL with its password redacted.
    directory: str
    #: Whether the directory's database exists (disk), or the server answered (Redis).
    exists: bool
    #: ``"disk"`` or ``"redis"``.
    backend: str = "disk"
    #: The key namespace on a shared server (``None`` for disk).
    namespace: str | None = None
    entries: int = 0
    size_bytes: int = 0
    schema_version: int = SCHEMA_VERSION
    hits: int = 0
    misses: int = 0
    writes: int = 0
    invalid: int = 0


class ThreadedCacheAPI:
    """The async API and context managers of a cache backend whose operations are blocking
    (``get_sync``, ``put_sync``, ``stats``, ``clear``, ``iter_entries``, ``close``): each async
    method runs its blocking twin in a worker thread, so the event loop never waits on disk or
    network I/O (asyncio and trio alike). It also holds the entry validation both backends share."""

    #: hits / misses / writes / invalid counted by this instance (see ``stats``).
    _stats: dict[str, int]

    @property
    def location(self) -> str:
        raise NotImplementedError

    def _parse_entry(self, key: str, text: str) -> CacheEntry | None:
        """``text`` as the entry stored under ``key``; corrupt JSON, a foreign schema or another key's
        entry is counted as invalid, logged and read as missing."""
        try:
            entry = CacheEntry.model_validate_json(text)
            if entry.key != key:
                raise ValueError("entry key does not match its cache key")
        except (ValidationError, ValueError) as exc:
            self._stats["invalid"] += 1
            logger.warning("cache %s: invalid entry %s… ignored (%s)", self.location, key[:12], exc)
            return None
        return entry

    def get_sync(self, key: str) -> CacheEntry | None:
        raise NotImplementedError

    def put_sync(self, entry: CacheEntry) -> None:
        raise NotImplementedError

    def stats(self) -> CacheStats:
        raise NotImplementedError

    def clear(self) -> int:
        raise NotImplementedError

    def iter_entries(self) -> Iterator[CacheEntry]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def get(self, key: str) -> CacheEntry | None:
        """:meth:`get_sync` in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_sync, key)

    async def put(self, entry: CacheEntry) -> None:
        """:meth:`put_sync` in a worker thread."""
        await anyio.to_thread.run_sync(self.put_sync, entry)

    async def astats(self) -> CacheStats:
        """:meth:`stats` in a worker thread."""
        return await anyio.to_thread.run_sync(self.stats)

    async def aclear(self) -> int:
        """:meth:`clear` in a worker thread."""
        return await anyio.to_thread.run_sync(self.clear)

    async def aiter_entries(self) -> AsyncIterator[CacheEntry]:
        """:meth:`iter_entries`, read in a worker thread."""
        for entry in await anyio.to_thread.run_sync(lambda: list(self.iter_entries())):
            yield entry

    async def aclose(self) -> None:
        """:meth:`close` in a worker thread."""
        await anyio.to_thread.run_sync(self.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class DiskCache(ThreadedCacheAPI):
    """Completed closed-model answers on disk, shared safely between tasks and processes.

    Args:
        directory: where to keep it (default :func:`default_cache_dir`); created on first use.
        lock_timeout: seconds to wait for another process's lock on a key before going ahead
            without it (a safety valve against a hung holder); ``None`` (default): wait as long
            as the holder lives (the system releases a dead holder's lock at once). Locks are per
            key: requests that differ never wait for each other.
        lock_poll: seconds between attempts to take a busy lock.

    Use it as an (async) context manager or call :meth:`aclose` / :meth:`close`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        lock_timeout: float | None = None,
        lock_poll: float = 0.01,
    ) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else default_cache_dir()
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"cache directory {self.directory} exists and is not a directory")
        if lock_timeout is not None and not (lock_timeout > 0):
            raise ConfigError(f"lock_timeout must be > 0 seconds or None, got {lock_timeout!r}")
        self.lock_timeout = None if lock_timeout is None else float(lock_timeout)
        self.lock_poll = float(lock_poll)
        self._cache: diskcache.Cache | None = None
        self._open_lock = threading.Lock()
        self._stats = {"hits": 0, "misses": 0, "writes": 0, "invalid": 0}
        #: In-flight upstream calls of this process by key (single-flight; see CachedModel).
        self.in_flight: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r})"

    @property
    def location(self) -> str:
        """The cache directory, as text."""
        return str(self.directory)

    # ------------------------------------------------------------------ sync core (worker threads)
    def _open(self) -> diskcache.Cache:
        with self._open_lock:
            if self._cache is None:
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._claim()
                    self._cache = diskcache.Cache(
                        str(self.directory),
                        disk=JSONTextDisk,
                        eviction_policy="none",
                        sqlite_synchronous=2,
                        statistics=False,
                    )
                except CacheUnavailableError:
                    raise
                except (OSError, sqlite3.Error) as exc:
                    raise CacheUnavailableError(
                        f"the cache directory {self.directory} cannot be opened "
                        f"({type(exc).__name__}: {exc}); pass another cache directory or cache=False"
                    ) from exc
            return self._cache

    def _claim(self) -> None:
        """Refuse a directory that holds another program's diskcache (opening it with these
        settings would rewrite its eviction policy, and ``clear`` would delete its entries);
        mark a new or earlier attribsdk cache as this package's (:data:`MARKER`)."""
        marker = self.directory / MARKER
        if marker.exists():
            return
        db = self.directory / "cache.db"
        if db.exists():
            with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
                try:
                    settings = dict(con.execute("SELECT key, value FROM Settings").fetchall())
                except sqlite3.OperationalError:  # another process is creating it right now
                    settings = {}
            # Refused only on settings that differ; missing ones mean the database is being created.
            if any(k in settings and settings[k] != v for k, v in _OWN_SETTINGS.items()):
                raise CacheUnavailableError(
                    f"{self.directory} holds a cache that is not attribsdk's (no {MARKER}; "
                    f"eviction_policy {settings.get('eviction_policy')!r}); pass another cache directory"
                )
        marker.write_text(json.dumps({"format": "attribsdk-cache", "schema_version": SCHEMA_VERSION}) + "\n")

    def get_sync(self, key: str) -> CacheEntry | None:
        """The valid entry under ``key``, or ``None`` (a corrupt or foreign entry counts as missing)."""
        cache = self._open()
        try:
            text = cache.get(key, default=None)
        except (ValueError, TypeError, OSError) as exc:
            self._stats["invalid"] += 1
            logger.warning("cache %s: unreadable entry %s… ignored (%s)", self.directory, key[:12], exc)
            return None
        if text is None:
            return None
        return self._parse_entry(key, text)

    def count_lookup(self, *, hit: bool) -> None:
        """Count one lookup of a caller (e.g. :class:`~attribsdk.cache.CachedModel`) in :meth:`stats`."""
        self._stats["hits" if hit else "misses"] += 1

    def put_sync(self, entry: CacheEntry) -> None:
        """Store ``entry`` under its key (atomically: a reader sees the old entry or the new one)."""
        text = entry.model_dump_json()
        self._open().set(entry.key, text)
        self._stats["writes"] += 1

    def iter_entries(self) -> Iterator[CacheEntry]:
        """Every valid entry (for inspection and tests); invalid ones are skipped."""
        cache = self._open()
        for key in list(cache.iterkeys()):
            entry = self.get_sync(key) if isinstance(key, str) else None
            if entry is not None:
                yield entry

    def stats(self) -> CacheStats:
        """Entry count and size on disk (does not create a missing directory; raises
        :class:`~attribsdk.errors.CacheUnavailableError` for another program's cache)."""
        exists = (self.directory / "cache.db").exists()
        base = CacheStats.model_validate({"directory": str(self.directory), "exists": exists, **self._stats})
        if not exists:
            return base
        cache = self._open()
        return base.model_copy(update={"entries": len(cache), "size_bytes": int(cache.volume())})

    def clear(self) -> int:
        """Delete every entry, and the lock files no process holds; returns how many entries there
        were. A missing cache stays missing, and another program's cache is refused
        (:class:`~attribsdk.errors.CacheUnavailableError`).

        Lock files (one empty file per request ever made) are otherwise never deleted. Here each
        is deleted while held (:meth:`prune_locks`); a process waiting on one when it goes finds it
        unlinked once it gets the lock and retries on a new file."""
        if not (self.directory / "cache.db").exists():
            return 0
        n = int(self._open().clear())
        self.prune_locks()
        return n

    def prune_locks(self) -> None:
        """Delete the lock files no process holds (each is taken before it is unlinked; a process
        that opened one before it went retries on a new file, as filelock ≥ 4 checks)."""
        root = self.directory / "locks"
        if not root.is_dir():
            return
        for sub in root.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.glob("*.lock"):
                lock = filelock.FileLock(str(path), thread_local=False)
                if not _try_acquire(lock):
                    continue  # held: its holder is mid-request
                try:
                    path.unlink(missing_ok=True)
                finally:
                    lock.release()
            # The subdirectories stay: removing one could race another process's mkdir-then-open.

    def close(self) -> None:
        """Close the database handle (it is reopened on next use)."""
        with self._open_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[bool]:
        """Hold the cross-process lock for ``key``; yields False if it timed out and went ahead."""
        # One (empty) lock file per key, in 256 subdirectories.
        lock_dir = self.directory / "locks" / key[:2]
        lock = filelock.FileLock(str(lock_dir / f"{key}.lock"), thread_local=False)
        acquired = False
        waited = 0.0
        delay = self.lock_poll
        try:
            await anyio.to_thread.run_sync(lambda: lock_dir.mkdir(parents=True, exist_ok=True))
            while True:
                acquired = await anyio.to_thread.run_sync(_try_acquire, lock)
                if acquired or (self.lock_timeout is not None and waited >= self.lock_timeout):
                    break
                await anyio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 0.25)
        except OSError as exc:
            raise CacheUnavailableError(
                f"the cache directory {self.directory} cannot hold its lock files "
                f"({type(exc).__name__}: {exc}); pass another cache directory or cache=False"
            ) from exc
        if not acquired:
            logger.warning(
                "cache %s: lock for %s… not released after %.0f s; going ahead",
                self.directory,
                key[:12],
                self.lock_timeout,
            )
        try:
            yield acquired
        finally:
            if acquired:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(lock.release)


#: The original name of :class:`DiskCache`.
ResponseCache = DiskCache


def _try_acquire(lock: filelock.FileLock) -> bool:
    try:
        lock.acquire(blocking=False)
    except filelock.Timeout:
        return False
    return True
