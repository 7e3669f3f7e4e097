"""One scoring queue per model: many callers submit requests, one worker thread fills micro-batches
from all of them.

``LocalModel.score`` goes through its queue, so concurrent explanations (``Explainer.explain_many``,
the benchmark runner, any thread pool) are batched together without asking the caller for anything:
each caller blocks on its own future in its own worker thread, the event loop stays free, and the
model runs one micro-batch at a time on the queue's thread. Tokenisation and validation happen in the
caller's thread, so a bad request fails there, at once, with its typed error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ..errors import AttribError, ModelLoadError, ScoringError
from .base import ScoreResult, ScoringRequest
from .engine import Job, Scheduler, prepare

if TYPE_CHECKING:
    from .models import LocalModel

__all__ = ["QueueStats", "ScoringQueue"]


class QueueStats:
    """Counters since the queue started (read them any time; updated by the worker)."""

    __slots__ = ("batches", "jobs", "max_jobs_in_flight")

    def __init__(self) -> None:
        self.batches = 0
        self.jobs = 0
        self.max_jobs_in_flight = 0

    def __repr__(self) -> str:
        return (
            f"QueueStats(jobs={self.jobs}, batches={self.batches}, "
            f"max_jobs_in_flight={self.max_jobs_in_flight})"
        )


class ScoringQueue:
    """Scores requests for ``lm`` on a worker thread, mixing rows of concurrent requests in one batch.

    ``submit`` returns a :class:`concurrent.futures.Future`; ``score`` waits for it. The worker starts
    with the first request and holds ``lm``'s lock for each micro-batch only, so generation on the same
    handle interleaves between batches. ``close()`` fails what is still queued with
    :class:`ModelLoadError` and stops the worker.
    """

    def __init__(self, lm: LocalModel, *, reuse_prefix: bool = True) -> None:
        self._lm = lm
        self.reuse_prefix = reuse_prefix
        self.stats = QueueStats()
        self._cond = threading.Condition()
        self._incoming: list[tuple[Job, Future[ScoreResult]]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: ScoringRequest) -> Future[ScoreResult]:
        """Queue ``request``. Bad requests raise here (:class:`InputError`, :class:`ConfigError`,
        :class:`ContextWindowError`); model failures arrive through the future."""
        job = prepare(self._lm, request, reuse_prefix=self.reuse_prefix)
        future: Future[ScoreResult] = Future()
        with self._cond:
            if self._closed:
                raise ModelLoadError(f"the scoring queue of {self._lm.name!r} is closed")
            self._incoming.append((job, future))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._worker, name=f"attribsdk-scoring-{self._lm.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return future

    def score(self, request: ScoringRequest) -> ScoreResult:
        """Submit ``request`` and wait for its result (raises what scoring raised)."""
        return self.submit(request).result()

    def close(self) -> None:
        """Stop the worker after its current batch; queued and unfinished requests fail (idempotent)."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- worker -----------------------------------------------------------------------------------
    def _worker(self) -> None:
        scheduler = Scheduler(self._lm)
        futures: dict[int, Future[ScoreResult]] = {}
        try:
            while True:
                with self._cond:
                    while not self._incoming and not scheduler and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        break
                    for job, future in self._incoming:
                        if future.set_running_or_notify_cancel():
                            scheduler.add(job)
                            futures[id(job)] = future
                            self.stats.jobs += 1
                    self._incoming.clear()
                    self.stats.max_jobs_in_flight = max(self.stats.max_jobs_in_flight, len(scheduler.jobs))
                if not scheduler:
                    continue
                with self._lm.forward_lock:
                    if self._lm.closed:
                        break
                    finished = scheduler.step()
                self.stats.batches += 1
                for job in finished:
                    future = futures.pop(id(job))
                    if job.error is not None:
                        future.set_exception(job.error)
                    else:
                        assert job.result is not None
                        future.set_result(job.result)
        except BaseException as exc:  # never leave a caller waiting forever
            error: BaseException = (
                exc if isinstance(exc, AttribError) else ScoringError(f"scoring worker failed: {exc}")
            )
            for future in futures.values():
                future.set_exception(error)
            futures.clear()
            raise
        finally:
            closed = ModelLoadError(f"model handle {self._lm.name!r} was closed before scoring finished")
            with self._cond:
                self._closed = True
                pending = [f for _, f in self._incoming]
                self._incoming.clear()
            for future in [*futures.values(), *pending]:
                if not future.done():
                    future.set_exception(closed)
