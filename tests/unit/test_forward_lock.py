"""The model handle's shared/exclusive forward lock."""

from __future__ import annotations

import signal
import threading

import pytest

from attribsdk.scoring._rwlock import ForwardLock


def _wait_until(cond: object, timeout: float = 5.0) -> bool:
    ev = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if cond():  # type: ignore[operator]
            return True
        ev.wait(0.005)
    return False


def test_shared_holders_overlap_and_exclusive_waits_for_them() -> None:
    lock = ForwardLock()
    inside = threading.Semaphore(0)
    release = threading.Event()
    log: list[str] = []

    def reader(name: str) -> None:
        with lock.shared():
            log.append(f"{name} in")
            inside.release()
            release.wait(5)
            log.append(f"{name} out")

    readers = [threading.Thread(target=reader, args=(f"r{i}",)) for i in range(2)]
    for t in readers:
        t.start()
    assert inside.acquire(timeout=5) and inside.acquire(timeout=5)  # both inside at once
    writer_in = threading.Event()

    def writer() -> None:
        with lock:
            log.append("w in")
            writer_in.set()

    w = threading.Thread(target=writer)
    w.start()
    assert not writer_in.wait(0.1)  # excluded while readers hold it
    release.set()
    assert writer_in.wait(5)
    for t in [*readers, w]:
        t.join()
    assert log.index("w in") > max(log.index("r0 out"), log.index("r1 out"))
    assert not lock.locked()


def test_waiting_writer_blocks_new_readers() -> None:
    lock = ForwardLock()
    first_in, release = threading.Event(), threading.Event()
    order: list[str] = []

    def reader(name: str, hold: bool) -> None:
        with lock.shared():
            order.append(name)
            if hold:
                first_in.set()
                release.wait(5)

    def writer() -> None:
        with lock:
            order.append("writer")

    r1 = threading.Thread(target=reader, args=("r1", True))
    r1.start()
    assert first_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    assert _wait_until(lambda: lock._waiting_writers == 1)
    r2 = threading.Thread(target=reader, args=("r2", False))
    r2.start()
    # r2 is parked on the lock's condition beside the writer (not merely not scheduled yet)
    assert _wait_until(lambda: len(lock._cond._waiters) == 2)  # type: ignore[attr-defined]
    assert order == ["r1"] and lock._readers == 1  # r2 queued behind the waiting writer
    release.set()
    for t in (r1, w, r2):
        t.join(5)
    assert order == ["r1", "writer", "r2"]


def test_exclusive_is_exclusive() -> None:
    lock = ForwardLock()
    with lock:
        assert lock.locked()
        got = threading.Event()

        def other() -> None:
            with lock:
                got.set()

        t = threading.Thread(target=other)
        t.start()
        assert _wait_until(lambda: len(lock._cond._waiters) == 1)  # type: ignore[attr-defined]
        assert not got.is_set()  # parked on the lock, not merely not scheduled yet
    assert got.wait(5)
    t.join()


class _Interrupted(Exception):
    pass


def test_an_interrupted_writer_lets_the_readers_it_held_back_in() -> None:
    lock = ForwardLock()
    first_in, release, second_in = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with lock.shared():
            first_in.set()
            release.wait(10)

    def late_reader() -> None:
        assert _wait_until(lambda: lock._waiting_writers == 1)
        with lock.shared():
            second_in.set()

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    threads = [threading.Thread(target=holder), threading.Thread(target=late_reader)]
    threads[0].start()
    assert first_in.wait(5)
    threads[1].start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        # The main thread waits for the lock exclusively until a signal interrupts it (as Ctrl-C
        # would), after the late reader has parked behind it.
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(_Interrupted), lock:
            pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert lock._waiting_writers == 0
    # the late reader gets in while the first still holds the lock
    assert second_in.wait(2) and not release.is_set()
    release.set()
    for t in threads:
        t.join(5)
    assert not lock.locked()
