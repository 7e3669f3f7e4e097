"""One scoring queue per model: many callers submit requests, worker threads ("lanes") fill
micro-batches from all of them and run them side by side.

``LocalModel.score`` goes through its queue, so concurrent explanations (``Explainer.explain_many``,
the benchmark runner, any thread pool) are batched together without asking the caller for anything:
each caller blocks on its own future in its own worker thread, the event loop stays free, and the
model runs micro-batches on the queue's lanes (one per lane at a time). Tokenisation and validation
happen in the caller's thread, so a bad request fails there, at once, with its typed error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch

from ..errors import AttribError, ModelLoadError, ScoringError
from .base import ScoreResult, ScoringRequest
from .engine import Job, Scheduler, prepare

if TYPE_CHECKING:
    from .models import LocalModel

__all__ = ["QueueStats", "ScoringQueue"]


class QueueStats:
    """Counters since the queue started (read them any time; updated by the worker)."""

    __slots__ = ("batches", "jobs", "max_jobs_in_flight", "max_lanes_busy")

    def __init__(self) -> None:
        self.batches = 0
        self.jobs = 0
        self.max_jobs_in_flight = 0
        #: Most micro-batches that ran at the same time (at most the queue's lanes).
        self.max_lanes_busy = 0

    def __repr__(self) -> str:
        return (
            f"QueueStats(jobs={self.jobs}, batches={self.batches}, "
            f"max_jobs_in_flight={self.max_jobs_in_flight}, max_lanes_busy={self.max_lanes_busy})"
        )


def _resolve(done: list[tuple[Job, Future[ScoreResult]]]) -> None:
    for job, future in done:
        if future.done():
            continue
        if job.error is not None:
            future.set_exception(job.error)
        elif job.result is not None:
            future.set_result(job.result)
        else:
            future.set_exception(ScoringError("scoring finished without a result"))


class ScoringQueue:
    """Scores requests for ``lm`` on worker threads, mixing rows of concurrent requests in one batch.

    ``submit`` returns a :class:`concurrent.futures.Future`; ``score`` waits for it. ``lanes`` worker
    threads share one :class:`~attribsdk.scoring.engine.Scheduler`: each takes the next micro-batch
    under the queue's lock and runs it holding ``lm``'s forward lock *shared*, so batches of different
    rows run side by side, each lane with ``torch.get_num_threads() // lanes`` intra-op threads (a
    lane alone with nothing else to run uses them all). Generation on the same handle takes the lock
    exclusively and interleaves between batches. ``close()`` fails what is still queued with
    :class:`ModelLoadError` and stops the workers.
    """

    def __init__(self, lm: LocalModel, *, reuse_prefix: bool = True, lanes: int = 1) -> None:
        self._scheduler = Scheduler(lm, lanes=lanes)  # validates lanes
        self._lm = lm
        self.reuse_prefix = reuse_prefix
        self.lanes = lanes
        self.stats = QueueStats()
        self._cond = threading.Condition()
        self._incoming: list[tuple[Job, Future[ScoreResult]]] = []
        self._futures: dict[int, Future[ScoreResult]] = {}
        self._closed = False
        self._busy = 0
        self._threads: list[threading.Thread] = []
        self._total_threads = torch.get_num_threads()
        self._lane_threads = max(1, self._total_threads // lanes)

    def submit(self, request: ScoringRequest) -> Future[ScoreResult]:
        """Queue ``request``. Bad requests raise here (:class:`InputError`, :class:`ConfigError`,
        :class:`ContextWindowError`); model failures arrive through the future."""
        job = prepare(self._lm, request, reuse_prefix=self.reuse_prefix)
        future: Future[ScoreResult] = Future()
        with self._cond:
            if self._closed:
                raise ModelLoadError(f"the scoring queue of {self._lm.name!r} is closed")
            self._incoming.append((job, future))
            if not self._threads:
                for i in range(self.lanes):
                    thread = threading.Thread(
                        target=self._lane, name=f"attribsdk-scoring-{self._lm.name}-{i}", daemon=True
                    )
                    self._threads.append(thread)
                    thread.start()
            self._cond.notify_all()
        return future

    def score(self, request: ScoringRequest) -> ScoreResult:
        """Submit ``request`` and wait for its result (raises what scoring raised)."""
        return self.submit(request).result()

    def close(self) -> None:
        """Stop the workers after their current batches; queued and unfinished requests fail
        (idempotent)."""
        with self._cond:
            self._closed = True
            threads = list(self._threads)
            self._cond.notify_all()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()
        self._fail_all(ModelLoadError(f"model handle {self._lm.name!r} was closed before scoring finished"))

    # -- workers ----------------------------------------------------------------------------------
    def _absorb(self) -> None:
        """Move submitted requests into the scheduler (call with the lock held)."""
        for job, future in self._incoming:
            if future.set_running_or_notify_cancel():
                self._scheduler.add(job)
                self._futures[id(job)] = future
                self.stats.jobs += 1
        self._incoming.clear()
        self.stats.max_jobs_in_flight = max(
            self.stats.max_jobs_in_flight, sum(1 for j in self._scheduler.jobs if not j.done)
        )

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            self._closed = True
            pending = [*self._futures.values(), *(f for _, f in self._incoming)]
            self._futures.clear()
            self._incoming.clear()
            self._cond.notify_all()
        for future in pending:
            if not future.done():
                future.set_exception(error)

    def _lane(self) -> None:
        scheduler, lm = self._scheduler, self._lm
        try:
            while True:
                with self._cond:
                    while not self._closed and not (self._incoming or scheduler.runnable()):
                        self._cond.wait()
                    if self._closed:
                        return
                # Take the batch only once the model is free, so requests queued while it was busy
                # (or held by generation) share it.
                with lm.forward_lock.shared():
                    if lm.closed:
                        return
                    with self._cond:
                        if self._closed:
                            return
                        self._absorb()
                        taken = scheduler.take()
                        if taken is None:  # only rows waiting for a reference another lane runs
                            continue
                        self._busy += 1
                        self.stats.max_lanes_busy = max(self.stats.max_lanes_busy, self._busy)
                        alone = self._busy == 1 and not scheduler.runnable()
                    items, keep_cache = taken
                    threads = self._total_threads if alone else self._lane_threads
                    if torch.get_num_threads() != threads:
                        torch.set_num_threads(threads)
                    try:
                        scheduler.run(items, keep_cache=keep_cache)  # failures land in job.error
                    finally:
                        if threads != self._total_threads:
                            # torch's setting is also the default of threads started later (the
                            # event loop's workers, generation): leave it as this queue found it.
                            torch.set_num_threads(self._total_threads)
                        with self._cond:
                            self._busy -= 1
                            self.stats.batches += 1
                            finished = scheduler.complete(items, keep_cache=keep_cache)
                            done = [(j, self._futures.pop(id(j))) for j in finished if id(j) in self._futures]
                            self._cond.notify_all()  # a finished reference makes its rows runnable
                        _resolve(done)  # even when the batch was interrupted: no caller waits forever
        except BaseException as exc:  # never leave a caller waiting forever
            error: BaseException = (
                exc if isinstance(exc, AttribError) else ScoringError(f"scoring worker failed: {exc}")
            )
            self._fail_all(error)
            raise
        finally:
            if lm.closed:
                self._fail_all(ModelLoadError(f"model handle {lm.name!r} was closed before scoring finished"))
