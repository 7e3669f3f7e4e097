"""Surrogate scoring on a Ray cluster: a pool of actors, each holding one loaded surrogate.

:class:`RayScorer` implements the :class:`~attribsdk.scoring.base.Scorer` protocol, so it goes
wherever a scorer goes (``Explainer(surrogate=RayScorer(...))``, the benchmark and comparison
runners); ``Explainer(engine="ray")`` and ``explain_many(..., engine="ray")`` build one for the
explainer's surrogate.

* Each :class:`SurrogateActor` is a Ray actor process that loads the surrogate once with
  :func:`~attribsdk.scoring.models.load_model` on its own CPU or GPU slots and scores through its
  own :class:`~attribsdk.scoring.queue.ScoringQueue`: the actor accepts several requests at once
  (``actor_concurrency``), so the perturbations of the examples sent to one actor share its
  micro-batches.
* ``score`` sends the request to the least-loaded live actor (fewest requests in flight) and
  waits for the :class:`~attribsdk.scoring.base.ScoreResult`. Concurrent calls -- the concurrent
  examples of ``explain_many`` -- spread over the pool.
* Only scoring runs on the cluster. Closed-model calls stay in the driver process (one
  :class:`~attribsdk.cost.Budget`, one rate limiter, one cache view; workers never see an API key
  or the network), so no example is paid for twice because two workers raced for it.
* A worker that dies is restarted by Ray (``max_restarts``) and its unfinished requests re-run on
  the restarted actor (``max_task_retries``); when an actor is gone for good its request is
  resubmitted to another live actor (``failover`` times). Finished results are never lost; when
  every retry is spent only that request fails, with a :class:`~attribsdk.errors.ScoringError`
  naming the actor. :attr:`RayScorer.stats` counts requests, restarts seen and resubmissions.
* An actor that died while Ray may still restart it is set aside, not written off: a probe call is
  queued on it, and it takes requests again once the probe answers; only a probe that fails says it
  is gone for good. An actor that did not answer within ``request_timeout`` is set aside until that
  request ends (a threaded actor cannot interrupt it). When no actor is live, a request waits for
  one to come back (up to ``request_timeout``, else ``ready_timeout``).
* Several pools may share one Ray runtime in a process: the one that started Ray shuts it down
  when the last open pool closes, not under the others.

Ray is an optional extra (``pip install 'attribsdk[ray]'``); this module imports it only when a
:class:`RayScorer` is created. On a multi-machine cluster attribsdk (and a surrogate given by path)
must be present on every node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import errors as _errors
from ..errors import AttribError, ConfigError, ModelLoadError, ScoringError
from .base import Scorer, ScoreResult, ScoringRequest

__all__ = ["RAY_INSTALL", "RayActorInfo", "RayScorer", "RayStats", "SurrogateActor", "import_ray"]

logger = logging.getLogger(__name__)

#: How to install the optional Ray dependency.
RAY_INSTALL = "pip install 'attribsdk[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"the Ray engine needs Ray, an optional extra: {RAY_INSTALL}") from exc
    return ray


# -- the actor -------------------------------------------------------------------------------------


def _pack_error(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data: attribsdk errors keep their type across the process boundary
    (some take keyword-only arguments, which plain pickling of exceptions loses)."""
    record: dict[str, Any] = {"type": type(exc).__name__, "message": getattr(exc, "message", str(exc))}
    if isinstance(exc, _errors.ContextWindowError):
        record.update(n_tokens=exc.n_tokens, limit=exc.limit)
    record["attrib"] = isinstance(exc, AttribError) and hasattr(_errors, type(exc).__name__)
    return record


def _unpack_error(record: Mapping[str, Any], where: str) -> AttribError:
    name, message = str(record["type"]), str(record["message"])
    if record.get("attrib"):
        cls = getattr(_errors, name)
        if cls is _errors.ContextWindowError:
            return _errors.ContextWindowError(message, n_tokens=record["n_tokens"], limit=record["limit"])
        try:
            err = cls(message)
        except TypeError:  # an error type with required extra arguments
            err = ScoringError(f"{name}: {message}")
        if isinstance(err, AttribError):
            return err
    return ScoringError(f"{name} on {where}: {message}")


class SurrogateActor:
    """One worker of a :class:`RayScorer` (run as a Ray actor; not used directly).

    ``surrogate`` is a model spec for :func:`~attribsdk.scoring.models.load_model` or a picklable
    :class:`~attribsdk.scoring.base.Scorer`. The model is loaded in the constructor, so a restarted
    actor reloads it before it takes requests again.
    """

    def __init__(
        self, surrogate: str | Scorer, device: str, dtype: str, threads: int | None, index: int
    ) -> None:
        import time

        t0 = time.perf_counter()
        self._index = index
        if isinstance(surrogate, str):
            from .models import load_model

            self._scorer: Scorer = load_model(surrogate, device=device, dtype=dtype, threads=threads)
        else:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            self._scorer = surrogate
        self._load_seconds = time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        """Where this actor runs: pid, host, device, dtype, whether Ray restarted it, load time (s)."""
        import socket

        import ray

        return {
            "index": self._index,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "name": self._scorer.name,
            "device": str(getattr(self._scorer, "device", "cpu")),
            "dtype": str(getattr(self._scorer, "dtype", "")),
            "restarted": bool(ray.get_runtime_context().was_current_actor_reconstructed),
            "load_seconds": self._load_seconds,
        }

    def score(self, request: ScoringRequest) -> tuple[ScoreResult | None, dict[str, Any] | None, int]:
        """``(result, None, pid)``, or ``(None, error record, pid)`` when scoring raised."""
        try:
            return self._scorer.score(request), None, os.getpid()
        except Exception as exc:
            return None, _pack_error(exc), os.getpid()


# -- the driver side -------------------------------------------------------------------------------


@dataclass
class RayActorInfo:
    """What the driver knows about one actor of the pool (``pid`` is updated after a restart)."""

    index: int
    pid: int
    host: str
    device: str
    dtype: str
    load_seconds: float
    alive: bool = True
    in_flight: int = 0
    requests: int = 0
    #: What an actor set aside waits for: its request that timed out (``probe_is_request``) or an
    #: ``info`` call queued after it died while restartable. It is taken back when that answers.
    probe: Any = field(default=None, repr=False)
    probe_is_request: bool = False


@dataclass
class RayStats:
    """Counters of a :class:`RayScorer` since it started.

    ``restarts``: actor restarts noticed (a result or probe came back from a new process of an
    actor); ``resubmitted``: requests sent to another actor after theirs died or timed out;
    ``failed``: requests that ended in an error (scoring errors included); ``timeouts``: requests
    not answered within ``request_timeout``; ``dead``: actors gone for good.
    """

    requests: int = 0
    finished: int = 0
    failed: int = 0
    restarts: int = 0
    resubmitted: int = 0
    timeouts: int = 0
    dead: int = 0
    per_actor: list[int] = field(default_factory=list)


class RayScorer:
    """A :class:`~attribsdk.scoring.base.Scorer` backed by a pool of Ray actors.

    Args:
        surrogate: a model name (``"smollm2"``), a model directory or ``.gguf`` path (resolved to
            an absolute path here; it must exist at that path on every node), or a picklable
            :class:`~attribsdk.scoring.base.Scorer` (a loaded
            :class:`~attribsdk.scoring.models.LocalModel` is not: pass its directory).
        address: the cluster -- ``None`` (``$RAY_ADDRESS`` or a new local cluster), ``"local"``
            (a new local cluster), ``"auto"`` (the running cluster on this machine),
            ``"host:6379"`` or ``"ray://host:10001"``. When Ray is already initialised in this
            process its cluster is used and ``address`` is ignored.
        num_actors: pool size (default: as many as the cluster's free CPUs -- or GPUs, with
            ``num_gpus_per_actor`` -- allow, at least 1; another pool's actors are not counted).
        num_cpus_per_actor, num_gpus_per_actor: Ray resources each actor holds (a GPU actor sees
            only its own GPU, so ``device="auto"`` picks it; with no GPU per actor ``"auto"`` is
            the CPU, since Ray would show every GPU of the node to each actor).
        device, dtype: as for :func:`~attribsdk.scoring.models.load_model`, inside each actor.
        threads: torch CPU threads per actor (default: ``num_cpus_per_actor``, at least 1).
        max_restarts: times Ray restarts a dead actor (``-1``: always).
        max_task_retries: times Ray re-runs a request whose actor died (``-1``: always).
        failover: times a request is resubmitted to another actor when its actor died or timed out.
        request_timeout: seconds to wait for one request's result (``None``: no limit). An actor
            that does not answer in time is set aside until it answers a probe.
        actor_concurrency: requests one actor accepts at once (they share its micro-batches).
        ready_timeout: seconds to wait for the actors to load the surrogate.
        init_options: extra keyword arguments for ``ray.init`` when this object starts Ray.

    Construction starts the actors and waits until every one has loaded the surrogate (a load
    failure raises :class:`ModelLoadError`). ``close()`` kills them, and shuts Ray down when a
    pool started it and no other pool of this process is open. Thread-safe: call ``score`` from
    many threads.
    """

    def __init__(
        self,
        surrogate: str | os.PathLike[str] | Scorer,
        *,
        address: str | None = None,
        num_actors: int | None = None,
        num_cpus_per_actor: float = 1,
        num_gpus_per_actor: float = 0,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_restarts: int = -1,
        max_task_retries: int = 3,
        failover: int = 1,
        actor_concurrency: int = 8,
        request_timeout: float | None = None,
        ready_timeout: float = 600.0,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        ray = import_ray()
        for label, value in (("max_restarts", max_restarts), ("max_task_retries", max_task_retries)):
            if value < -1:
                raise ConfigError(f"{label} must be -1 (always) or ≥ 0, got {value}")
        if request_timeout is not None and not request_timeout > 0:
            raise ConfigError(f"request_timeout must be > 0 seconds or None, got {request_timeout!r}")
        if failover < 0 or actor_concurrency < 1 or num_cpus_per_actor < 0 or num_gpus_per_actor < 0:
            raise ConfigError("failover, resources must be ≥ 0 and actor_concurrency ≥ 1")
        if num_actors is not None and num_actors < 1:
            raise ConfigError(f"num_actors must be ≥ 1, got {num_actors}")
        spec = _shippable(surrogate, ray)
        if device == "auto" and not num_gpus_per_actor:
            # Ray hides GPUs only from actors that ask for some: "auto" would put every CPU actor
            # on GPU 0 of a GPU node.
            device = "cpu"
        self._ray = ray
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a score() call leaves
        self._active = 0  # score() calls in progress
        self._closed = False
        self.ready_timeout = ready_timeout
        self.failover = failover
        self.request_timeout = request_timeout
        self._restartable = max_restarts != 0
        self.stats = RayStats()
        self.address = address
        _runtime.open(ray, address, init_options)
        # closes this pool's hold on the runtime once: from close(), or when a pool that was never
        # closed is collected (Ray ends the actors of dropped handles itself)
        self._release = weakref.finalize(self, _runtime.close, ray)
        try:
            n = num_actors or _default_actors(ray, num_cpus_per_actor, num_gpus_per_actor)
            if threads is None:
                threads = max(1, int(num_cpus_per_actor))
            remote_cls = ray.remote(SurrogateActor)
            self._actors: list[Any] = [
                remote_cls.options(
                    num_cpus=num_cpus_per_actor,
                    num_gpus=num_gpus_per_actor,
                    max_restarts=max_restarts,
                    max_task_retries=max_task_retries,
                    max_concurrency=actor_concurrency,
                ).remote(spec, device, dtype, threads, i)
                for i in range(n)
            ]
            self.stats.per_actor = [0] * n
            try:
                infos = ray.get([a.info.remote() for a in self._actors], timeout=ready_timeout)
            except ray.exceptions.GetTimeoutError as exc:
                raise ModelLoadError(
                    f"{n} Ray actor(s) did not load {spec!r} within {ready_timeout:g} s "
                    "(not enough free CPUs/GPUs in the cluster?)"
                ) from exc
            except ray.exceptions.RayError as exc:
                raise ModelLoadError(f"a Ray actor could not load the surrogate: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self._name = str(infos[0]["name"])
        self.actors: list[RayActorInfo] = [
            RayActorInfo(
                index=int(d["index"]),
                pid=int(d["pid"]),
                host=str(d["host"]),
                device=str(d["device"]),
                dtype=str(d["dtype"]),
                load_seconds=float(d["load_seconds"]),
            )
            for d in infos
        ]

    # -- Scorer protocol --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The surrogate's name, as the actors loaded it."""
        return self._name

    @property
    def device(self) -> str:
        """Where the actors run the surrogate (their devices joined by ``"+"`` if they differ)."""
        return "+".join(sorted({a.device for a in self.actors}))

    @property
    def dtype(self) -> str:
        """The actors' weight dtype (joined by ``"+"`` if they differ)."""
        return "+".join(sorted({a.dtype for a in self.actors}))

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    def __repr__(self) -> str:
        alive = sum(a.alive for a in getattr(self, "actors", []))
        total = len(getattr(self, "_actors", []))
        return f"RayScorer({getattr(self, '_name', '?')!r}, actors={alive}/{total})"

    def score(self, request: ScoringRequest) -> ScoreResult:
        """Score ``request`` on the least-loaded live actor (blocking; see the module docs for
        retries). Errors the surrogate raises keep their type (:class:`InputError`,
        :class:`ContextWindowError`…); a lost actor gives :class:`ScoringError`."""
        with self._lock:
            if self._closed:
                raise ScoringError("this RayScorer is closed")
            self.stats.requests += 1
            self._active += 1
        try:
            return self._score(request)
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def _score(self, request: ScoringRequest) -> ScoreResult:
        ray = self._ray
        failovers = self.failover
        while True:
            actor = self._acquire()
            where = f"Ray actor {actor.index} (pid {actor.pid} on {actor.host})"
            ref = None
            try:
                # the progress callback stays here (it cannot travel); told once the result is back
                ref = self._actors[actor.index].score.remote(dataclasses.replace(request, on_progress=None))
                result, error, pid = ray.get(ref, timeout=self.request_timeout)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                timed_out = isinstance(exc, ray.exceptions.GetTimeoutError)
                died = isinstance(exc, ray.exceptions.ActorDiedError)
                with self._lock:
                    if timed_out:
                        self.stats.timeouts += 1
                        if actor.alive:
                            # the request still runs there (a threaded actor cannot be
                            # interrupted): it holds its slot until it ends, and the actor is set
                            # aside until then
                            self._set_aside(actor, waiting_for=ref)
                        else:  # already waiting for an earlier request of its
                            actor.in_flight -= 1
                    else:
                        actor.in_flight -= 1
                        if actor.alive:
                            # a restarting or unreachable actor may come back; a dead one that Ray
                            # will not restart cannot
                            self._set_aside(actor, waiting_for=None, dead=died and not self._restartable)
                    # a set-aside actor is waited for when no other is live
                    others = any(a.alive or a.probe is not None for a in self.actors if a is not actor)
                    retry = failovers > 0 and (others or actor.probe is not None)
                    if retry:
                        failovers -= 1
                        self.stats.resubmitted += 1
                    else:
                        self.stats.failed += 1
                state = (
                    f"did not answer within {self.request_timeout:g} s"
                    if timed_out
                    else ("died" if died else "was unavailable")
                )
                if retry:
                    logger.warning("%s %s; resubmitting its request", where, state)
                    continue
                raise ScoringError(f"{where} {state} and its retries are spent: {exc}") from exc
            except Exception as exc:  # another Ray error, or the request failing to serialise
                with self._lock:
                    actor.in_flight -= 1  # or the least-loaded routing would avoid this actor for good
                    self.stats.failed += 1
                raise ScoringError(f"{where}: {type(exc).__name__}: {exc}") from exc
            with self._lock:
                actor.in_flight -= 1
                actor.requests += 1
                self.stats.per_actor[actor.index] += 1
                self._note_pid(actor, pid)
                if error is not None:
                    self.stats.failed += 1
                else:
                    self.stats.finished += 1
            if error is not None:
                raise _unpack_error(error, where)
            assert isinstance(result, ScoreResult)
            result.extras["ray_actor"] = actor.index
            if request.on_progress is not None:
                with contextlib.suppress(Exception):  # a progress display must never fail scoring
                    request.on_progress(len(request.prompts))
            return result

    def _note_pid(self, actor: RayActorInfo, pid: int) -> None:
        """(under the lock) A reply came from process ``pid``: a new one means Ray restarted it."""
        if pid != actor.pid:
            logger.warning("Ray actor %d was restarted (pid %d → %d)", actor.index, actor.pid, pid)
            self.stats.restarts += 1
            actor.pid = pid

    def _set_aside(self, actor: RayActorInfo, *, waiting_for: Any, dead: bool = False) -> None:
        """(under the lock) Stop routing to ``actor``. It is taken back when ``waiting_for`` (a
        request of its that timed out and still runs) ends, or, without one, when an ``info``
        probe answers: Ray runs the probe on the restarted (or thawed) actor and fails it only if
        the actor is gone for good. ``dead``: written off now."""
        actor.alive = False
        actor.probe, actor.probe_is_request = None, waiting_for is not None
        if not dead:
            try:
                actor.probe = waiting_for if waiting_for is not None else self._probe(actor)
                return
            except Exception as exc:  # the cluster refused the call: nothing to wait for
                logger.debug("probing Ray actor %d failed: %s", actor.index, exc)
        self.stats.dead += 1

    def _probe(self, actor: RayActorInfo) -> Any:
        # retried by Ray until the actor runs again (restarted or thawed) or is dead for good
        return self._actors[actor.index].info.options(max_task_retries=-1).remote()

    def check_actors(self) -> list[bool]:
        """Settle what the actors set aside were waiting for, where it has ended: an answer takes
        the actor back (a new pid counts as a restart), a request that ended in the actor's death
        turns into a probe, a failed probe writes the actor off. Returns which actors are live.
        Called before each request; never waits."""
        ray = self._ray
        with self._lock:
            if self._closed:
                return [False] * len(self.actors)
            pending = [(a, a.probe, a.probe_is_request) for a in self.actors if a.probe is not None]
        for actor, probe, is_request in pending:
            try:
                if not ray.wait([probe], timeout=0)[0]:
                    continue
                value = ray.get(probe)
            except ray.exceptions.RayActorError as exc:
                # unreachable for now, or a request that died with a restartable actor: ask the
                # actor itself (a probe that dies means the actor is gone for good)
                transient = isinstance(exc, ray.exceptions.ActorUnavailableError)
                ask = transient or (is_request and self._restartable)
                with self._lock:
                    if actor.probe is not probe or self._closed:
                        continue
                    if is_request:
                        actor.in_flight -= 1
                    self._set_aside(actor, waiting_for=None, dead=not ask)
                if not ask:
                    logger.warning("Ray actor %d is gone for good: %s", actor.index, exc)
                continue
            except Exception as exc:  # Ray itself failed (shut down under us): ask again later
                logger.debug("checking Ray actor %d failed: %s", actor.index, exc)
                continue
            with self._lock:
                if actor.probe is not probe:
                    continue
                actor.probe = None
                actor.alive = True
                if is_request:
                    actor.in_flight -= 1  # the timed-out request has ended: its slot is free
                pid = value[2] if is_request else value["pid"]
                self._note_pid(actor, int(pid))
            logger.info("Ray actor %d answers again; it takes requests", actor.index)
        with self._lock:
            return [a.alive for a in self.actors]

    def _acquire(self) -> RayActorInfo:
        """The least-loaded live actor. When every actor is set aside, waits for one to be taken
        back, up to ``request_timeout`` (or ``ready_timeout`` without one): a restarting actor is
        worth waiting for."""
        deadline: float | None = None
        while True:
            self.check_actors()
            with self._lock:
                if self._closed:
                    raise ScoringError("this RayScorer is closed")
                live = [a for a in self.actors if a.alive]
                if live:
                    best = min(live, key=lambda a: (a.in_flight, a.requests))
                    best.in_flight += 1
                    return best
                probes = [a.probe for a in self.actors if a.probe is not None]
            if not probes:
                raise ScoringError(f"all {len(self.actors)} Ray actors of {self._name!r} are dead")
            limit = self.request_timeout if self.request_timeout is not None else self.ready_timeout
            now = time.monotonic()
            deadline = now + limit if deadline is None else deadline
            if now >= deadline:
                raise ScoringError(
                    f"no Ray actor of {self._name!r} could take a request within {limit:g} s "
                    f"({len(probes)} set aside, {len(self.actors) - len(probes)} dead)"
                )
            with contextlib.suppress(Exception):  # settled (or failed) by check_actors
                self._ray.wait(probes, num_returns=1, timeout=min(deadline - now, 1.0))

    # -- inspection -------------------------------------------------------------------------------
    def actor_pids(self) -> list[int]:
        """The current process id of every actor, asked from the actors (blocking)."""
        infos = self._ray.get([a.info.remote() for a in self._actors])
        return [int(d["pid"]) for d in infos]

    def in_flight(self) -> list[int]:
        """Requests in flight per actor, as the driver counts them."""
        with self._lock:
            return [a.in_flight for a in self.actors]

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill the actors (no restart), and shut Ray down if a pool started it and this was the
        last open pool of the process (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        ray = self._ray
        for actor in getattr(self, "_actors", []):
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # already dead or the cluster is gone
                logger.debug("killing a Ray actor failed: %s", exc)
        # Requests still waiting on the killed actors fail within moments; Ray must not be shut
        # down under them.
        with self._lock:
            if not self._idle.wait_for(lambda: self._active == 0, timeout=30):
                logger.warning("closing a RayScorer while %d request(s) still wait on Ray", self._active)
        self._release()

    def __enter__(self) -> RayScorer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _shippable(surrogate: str | os.PathLike[str] | Scorer, ray: Any) -> str | Scorer:
    """What the actors receive: a name, an absolute path, or a Scorer that survives pickling."""
    if isinstance(surrogate, os.PathLike) or (
        isinstance(surrogate, str) and (os.sep in surrogate or surrogate.endswith(".gguf"))
    ):
        path = Path(surrogate).expanduser()
        return str(path.resolve()) if path.exists() else str(surrogate)
    if isinstance(surrogate, str):
        return surrogate
    if isinstance(surrogate, RayScorer):
        raise ConfigError("a RayScorer cannot run inside another RayScorer")
    try:
        ray.cloudpickle.dumps(surrogate)
    except Exception as exc:
        loaded_from = getattr(getattr(surrogate, "load_info", None), "path", None)
        hint = f" (e.g. {loaded_from!r})" if loaded_from else ""
        raise ConfigError(
            f"the scorer {surrogate.name!r} cannot be shipped to Ray actors ({type(exc).__name__}: "
            f"{exc}); give the surrogate's name, directory or .gguf path instead{hint}"
        ) from exc
    return surrogate


class _Runtime:
    """The Ray runtime as this process's pools use it: started by the first pool that found none,
    shut down when the last open pool closes (only if a pool started it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._started = False

    def open(self, ray: Any, address: str | None, init_options: Mapping[str, Any] | None) -> None:
        with self._lock:
            if not ray.is_initialized():
                options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
                options.update(init_options or {})
                try:
                    ray.init(address=address, **options)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f"cannot start or reach the Ray cluster {address!r}: {exc}") from exc
                self._started = True
            self._open += 1

    def close(self, ray: Any) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0 and self._started:
                self._started = False
                ray.shutdown()


_runtime = _Runtime()


def _default_actors(ray: Any, cpus: float, gpus: float) -> int:
    """As many actors as the cluster's free resources hold (another pool's actors hold theirs)."""
    resources = ray.available_resources()
    if gpus > 0:
        return max(1, int(resources.get("GPU", 0) // gpus))
    if cpus > 0:
        return max(1, int(resources.get("CPU", 1) // cpus))
    return 1
