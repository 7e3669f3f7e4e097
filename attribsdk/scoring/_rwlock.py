"""A shared/exclusive lock for one model handle's forward passes.

Scoring lanes hold it shared (their micro-batches run at the same time on different rows); generation,
white-box methods and ``close()`` hold it exclusively (``with lock:``). A waiting exclusive holder
blocks new shared holders, so generation is never starved by a stream of scoring batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

__all__ = ["ForwardLock"]


class ForwardLock:
    """``with lock:`` is exclusive; ``with lock.shared():`` may be held by many threads at once."""

    __slots__ = ("_cond", "_readers", "_waiting_writers", "_writer")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def __enter__(self) -> ForwardLock:
        with self._cond:
            self._waiting_writers += 1
            acquired = False
            try:
                while self._writer or self._readers:
                    self._cond.wait()
                acquired = True
            finally:
                self._waiting_writers -= 1
                if not acquired:  # interrupted while waiting: readers held back for us may go on
                    self._cond.notify_all()
            self._writer = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def locked(self) -> bool:
        """Whether anyone holds it (shared or exclusive)."""
        with self._cond:
            return self._writer or self._readers > 0
