"""The Redis response cache: one cache shared by every process of every machine of a cluster.

* Entries are the same versioned JSON :class:`~attribsdk.cache.store.CacheEntry` text as on disk,
  under ``<namespace>:entry:<key>``, with no expiry; nothing is ever pickled. Corrupt or foreign
  values count as misses (``invalid`` in :meth:`RedisCache.stats`).
* :meth:`RedisCache.lock` is a per-key lock ``<namespace>:lock:<key>`` (redis-py's
  :class:`redis.lock.Lock`: ``SET NX PX`` with a random token, released and extended by Lua
  scripts that check the token). While held it is extended every ``lock_ttl / 3`` seconds by one
  keep-alive thread per cache, so a long upstream call keeps it; a holder that dies (even by
  SIGKILL, or with its machine) stops extending it and it expires within ``lock_ttl`` seconds.
  Waiters poll without blocking a thread; after ``lock_timeout`` seconds they go ahead with a
  warning, as with the disk cache.
* It uses the synchronous redis-py client in worker threads (``anyio.to_thread``), so it works
  under asyncio and trio alike (``redis.asyncio`` is asyncio-only); one call is one round trip.
* The server should not evict keys (``maxmemory-policy noeviction``, Redis's default): an evicted
  entry is simply paid for again, an evicted lock lets a second caller through.

Needs the ``redis`` extra: ``pip install 'attribsdk[redis]'``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.to_thread

from ..errors import CacheUnavailableError, ConfigError
from .backend import is_cache_url, redact_url
from .store import CacheEntry, CacheStats, ThreadedCacheAPI

if TYPE_CHECKING:
    import redis as redis_py
    from redis.lock import Lock

__all__ = ["DEFAULT_REDIS_URL", "RedisCache"]

logger = logging.getLogger("attribsdk.cache")

#: The default server: a Redis on this machine, database 0.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: Keys per SCAN / pipeline batch.
_BATCH = 500

T = TypeVar("T")


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise ConfigError("the Redis cache needs the redis package: pip install 'attribsdk[redis]'") from None
    return redis


class RedisCache(ThreadedCacheAPI):
    """Completed closed-model answers in Redis, shared safely between processes and machines.

    Args:
        url: the server: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
            ``unix:///path/to/socket[?db=N]`` (redis-py's URL syntax).
        namespace: prefix of every key this cache writes (letters, digits, ``_``, ``.``, ``-``);
            caches with different namespaces share a server without seeing each other's entries,
            and :meth:`clear` deletes only its own namespace's entries.
        lock_timeout: seconds to wait for another process's lock on a key before going ahead
            without it (a safety valve against a stuck holder).
        lock_ttl: seconds a lock outlives its holder's last sign of life (it is extended every
            ``lock_ttl / 3`` s while held): how long waiters wait after a holder died.
        lock_poll: seconds between the first attempts to take a busy lock (doubling up to 0.25 s).
        connect_timeout: seconds to wait for a connection to the server.
        socket_timeout: seconds to wait for one reply.

    Use it as an (async) context manager or call :meth:`aclose` / :meth:`close`. The server is
    first contacted on first use; an unreachable one raises :class:`~attribsdk.errors.CacheUnavailableError`.
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        *,
        namespace: str = "attribsdk",
        lock_timeout: float = 600.0,
        lock_ttl: float = 30.0,
        lock_poll: float = 0.01,
        connect_timeout: float = 5.0,
        socket_timeout: float = 30.0,
    ) -> None:
        if not is_cache_url(url):
            raise ConfigError(f"not a Redis URL (redis://, rediss:// or unix://): {redact_url(str(url))}")
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(
                f"cache namespace must be 1-100 letters, digits, '_', '.' or '-'; got {namespace!r}"
            )
        if lock_ttl <= 0 or lock_timeout < 0 or lock_poll <= 0:
            raise ConfigError("lock_ttl and lock_poll must be > 0, lock_timeout >= 0")
        redis = _import_redis()
        self.url = redact_url(url)
        self.namespace = namespace
        self.lock_timeout = float(lock_timeout)
        self.lock_ttl = float(lock_ttl)
        self.lock_poll = float(lock_poll)
        try:
            self._client: redis_py.Redis = redis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                decode_responses=False,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Redis URL {self.url}: {self._redact(str(exc), url)}") from None
        self._secrets = _passwords_of(url)  # only to redact error messages; never shown
        self._errors: type[Exception] = redis.exceptions.RedisError
        self._lock_errors: type[Exception] = redis.exceptions.LockError
        self._stats = {"hits": 0, "misses": 0, "writes": 0, "invalid": 0}
        self._keepalive = _KeepAlive(self.lock_ttl / 3, self.location)
        #: In-flight upstream calls of this process by key (single-flight; see CachedModel).
        self.in_flight: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RedisCache({self.url!r}, namespace={self.namespace!r})"

    @property
    def location(self) -> str:
        """The server URL (password redacted) and namespace."""
        return f"{self.url} [{self.namespace}]"

    # ------------------------------------------------------------------ keys and errors
    def _entry_key(self, key: str) -> str:
        return f"{self.namespace}:entry:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.namespace}:lock:{key}"

    @staticmethod
    def _redact(text: str, url: str) -> str:
        for secret in _passwords_of(url):
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: Exception) -> CacheUnavailableError:
        message = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return CacheUnavailableError(f"Redis cache at {self.url} failed: {message}")

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``; redis-py's errors (not lock errors) become :class:`CacheUnavailableError`."""
        try:
            return fn(*args)
        except self._lock_errors:
            raise
        except self._errors as exc:
            raise self._unavailable(exc) from None

    # ------------------------------------------------------------------ sync core (worker threads)
    def _decode(self, key: str, raw: object) -> CacheEntry | None:
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            self._stats["invalid"] += 1
            logger.warning("cache %s: invalid entry %s… ignored (%s)", self.location, key[:12], exc)
            return None
        return self._parse_entry(key, text)

    def get_sync(self, key: str) -> CacheEntry | None:
        """The valid entry under ``key``, or ``None`` (a corrupt or foreign value counts as missing)."""
        try:
            raw = self._client.get(self._entry_key(key))
        except self._errors as exc:
            if str(exc).startswith("WRONGTYPE"):  # a foreign non-string value under our key
                self._stats["invalid"] += 1
                logger.warning("cache %s: unreadable entry %s… ignored (%s)", self.location, key[:12], exc)
                return None
            raise self._unavailable(exc) from None
        return self._decode(key, raw)

    def count_lookup(self, *, hit: bool) -> None:
        """Count one lookup of a caller (e.g. :class:`~attribsdk.cache.CachedModel`) in :meth:`stats`."""
        self._stats["hits" if hit else "misses"] += 1

    def put_sync(self, entry: CacheEntry) -> None:
        """Store ``entry`` under its key (one ``SET``: a reader sees the old entry or the new one)."""
        self._call(self._client.set, self._entry_key(entry.key), entry.model_dump_json())
        self._stats["writes"] += 1

    def _scan_keys(self) -> Iterator[list[bytes]]:
        """This namespace's entry keys, in batches."""
        batch: list[bytes] = []
        it = self._call(self._client.scan_iter, f"{self.namespace}:entry:*", _BATCH)
        while True:
            try:
                item = self._call(next, it)
            except StopIteration:
                break
            batch.append(item)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def iter_entries(self) -> Iterator[CacheEntry]:
        """Every valid entry of this namespace (for inspection and tests); invalid ones are skipped."""
        prefix = len(self._entry_key(""))
        for batch in self._scan_keys():
            values = self._call(self._client.mget, batch)
            for name, raw in zip(batch, values, strict=True):
                entry = self._decode(name.decode("utf-8", "replace")[prefix:], raw)
                if entry is not None:
                    yield entry

    def stats(self) -> CacheStats:
        """Keys and stored JSON bytes of this namespace (a ``SCAN``), plus this instance's counts."""
        entries = size = 0
        for batch in self._scan_keys():
            pipe = self._client.pipeline(transaction=False)
            for name in batch:
                pipe.strlen(name)
            entries += len(batch)
            lengths = self._call(pipe.execute, False)  # raise_on_error=False: foreign types
            size += sum(n for n in lengths if isinstance(n, int))
        return CacheStats.model_validate(
            {
                "directory": self.url,
                "exists": True,
                "backend": "redis",
                "namespace": self.namespace,
                "entries": entries,
                "size_bytes": size,
                **self._stats,
            }
        )

    def clear(self) -> int:
        """Delete this namespace's entries (not other namespaces', not held locks); returns how many."""
        removed = 0
        for batch in self._scan_keys():
            removed += int(self._call(self._client.unlink, *batch))
        return removed

    def close(self) -> None:
        """Stop the keep-alive thread and close the connections (reopened on next use)."""
        self._keepalive.stop()
        with contextlib.suppress(Exception):
            self._client.close()

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[bool]:
        """Hold the cluster-wide lock for ``key``; yields False if it timed out and went ahead."""
        lock: Lock = self._client.lock(
            self._lock_key(key),
            timeout=self.lock_ttl,
            blocking=False,
            thread_local=False,
            raise_on_release_error=True,
        )
        acquired = False
        waited = 0.0
        delay = self.lock_poll
        while True:
            acquired = bool(await anyio.to_thread.run_sync(self._call, lock.acquire))
            if acquired or waited >= self.lock_timeout:
                break
            await anyio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.25)
        if acquired:
            self._keepalive.add(lock)
        else:
            logger.warning(
                "cache %s: lock for %s… not released after %.0f s; going ahead",
                self.location,
                key[:12],
                self.lock_timeout,
            )
        try:
            yield acquired
        finally:
            if acquired:
                self._keepalive.discard(lock)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._release, lock, key)

    def _release(self, lock: Lock, key: str) -> None:
        """Release ``lock``; never raises (the answer it guarded must not be lost)."""
        try:
            self._call(lock.release)
        except Exception as exc:
            logger.warning(
                "cache %s: lock for %s… was lost before release (%s: %s); another process may "
                "have called upstream too",
                self.location,
                key[:12],
                type(exc).__name__,
                exc,
            )


class _KeepAlive:
    """One daemon thread per cache that extends every held lock's expiry every ``interval`` s."""

    def __init__(self, interval: float, location: str) -> None:
        self.interval = interval
        self.location = location
        self._locks: set[Lock] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, lock: Lock) -> None:
        with self._mutex:
            self._locks.add(lock)
            if self._thread is None or not self._thread.is_alive():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="attribsdk-redis-lock-keepalive", daemon=True
                )
                self._thread.start()

    def discard(self, lock: Lock) -> None:
        with self._mutex:
            self._locks.discard(lock)

    def stop(self) -> None:
        with self._mutex:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            with self._mutex:
                held = list(self._locks)
            for lock in held:
                try:
                    lock.reacquire()
                except Exception as exc:
                    with self._mutex:
                        still_held = lock in self._locks
                    if still_held:
                        logger.warning(
                            "cache %s: could not extend lock %s (%s: %s)",
                            self.location,
                            lock.name,
                            type(exc).__name__,
                            exc,
                        )
                        if type(exc).__name__ == "LockNotOwnedError":  # expired: gone for good
                            self.discard(lock)


def _passwords_of(url: str) -> list[str]:
    """The password(s) in ``url``, as written and percent-decoded (to redact them from messages)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return []
    out: set[str] = set()
    for secret in found:
        if secret:
            out.update({secret, unquote(secret)})
    return sorted(out, key=len, reverse=True)
