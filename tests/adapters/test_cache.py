"""The response cache: keys, disk format, single-flight, cross-process locking, crash safety, CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import diskcache
import pytest
from typer.testing import CliRunner

from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.anthropic import AnthropicModel
from attribsdk.adapters.base import Completion, GenerationParams, Message
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.adapters.stack import build_closed_model
from attribsdk.adapters.wrappers import FunctionModel, TestModel
from attribsdk.cache import (
    CachedModel,
    CacheEntry,
    ResponseCache,
    cache_key,
    canonical_json,
    request_key,
)
from attribsdk.cache.backend import open_cache
from attribsdk.cache.cli import cache_app
from attribsdk.cache.store import MARKER
from attribsdk.cost import Budget, CallLedger, Price, Pricing
from attribsdk.errors import (
    APIStatusError,
    AuthenticationError,
    BudgetExceeded,
    CacheUnavailableError,
    ConfigError,
    LogprobsUnavailableError,
    TruncatedOutputError,
)

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(max_tokens=64)
WORKER = Path(__file__).with_name("_cache_worker.py")
REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def ask(i: int | str = 0) -> list[Message]:
    return [Message(role="user", content=f"question {i}")]


def adapter(server: FakeLLMServer, retry: RetryPolicy, **options: Any) -> OpenAIModel:
    return OpenAIModel.compatible_from_spec(f"m@{server.openai_base_url}", retry=retry, **options)


# ---------------------------------------------------------------------------------------------- keys
def test_key_ignores_credentials_and_timeouts_but_not_outputs(server: FakeLLMServer) -> None:
    a = OpenAIModel("gpt-4o-mini", api_key=SECRET, timeout=5)
    b = OpenAIModel("gpt-4o-mini", api_key="sk-other", timeout=99, retry=RetryPolicy(max_attempts=1))
    assert cache_key(a, ask(), PARAMS) == cache_key(b, ask(), PARAMS)
    base = cache_key(a, ask(), PARAMS)
    changed = [
        cache_key(a, ask(1), PARAMS),
        cache_key(a, ask(), PARAMS.model_copy(update={"temperature": 0.7})),
        cache_key(a, ask(), PARAMS.model_copy(update={"max_tokens": 65})),
        cache_key(a, ask(), PARAMS.model_copy(update={"sample_index": 1})),
        cache_key(a, ask(), PARAMS.model_copy(update={"seed": 3})),
        cache_key(a, ask(), PARAMS.model_copy(update={"logprobs": True})),
        cache_key(OpenAIModel("gpt-4o", api_key=SECRET), ask(), PARAMS),
        cache_key(OpenAIModel("gpt-4o-mini", api_key=SECRET, api="responses"), ask(), PARAMS),
    ]
    assert len({base, *changed}) == len(changed) + 1
    # An OpenAI-compatible server's URL is part of the key (same name, different weights)...
    c1 = OpenAIModel.compatible_from_spec("m@http://127.0.0.1:1/v1")
    c2 = OpenAIModel.compatible_from_spec("m@http://127.0.0.1:2/v1")
    assert cache_key(c1, ask(), PARAMS) != cache_key(c2, ask(), PARAMS)
    # ...but a proxy in front of OpenAI serves the same model.
    proxied = OpenAIModel("gpt-4o-mini", api_key=SECRET, base_url="http://proxy.local/v1")
    assert cache_key(proxied, ask(), PARAMS) == base
    assert SECRET not in json.dumps(a.describe_request(ask(), PARAMS))


async def test_a_request_the_adapter_refuses_is_refused_before_the_cache(tmp_path: Path) -> None:
    claude = AnthropicModel("claude-haiku-4-5", api_key=SECRET, base_url="http://127.0.0.1:9")
    async with ResponseCache(tmp_path) as cache:
        # an answer stored without log-probabilities must not satisfy a request that needs them
        entry = CacheEntry.create("k", claude.name, {}, Completion(text="ok", model="m"))
        await cache.put(entry.model_copy(update={"key": cache_key(claude, ask(), PARAMS)}))
        with pytest.raises(LogprobsUnavailableError, match="do not return token log-probabilities"):
            await CachedModel(claude, cache).generate(ask(), PARAMS.model_copy(update={"logprobs": True}))


def test_canonical_json_is_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
    assert request_key({"x": 1, "y": 2}) == request_key({"y": 2, "x": 1})
    assert request_key({"x": 1}) != request_key({"x": 1}, sample_index=1)


# ---------------------------------------------------------------------------------------------- disk
_UNPICKLED: list[str] = []


def _mark_unpickled() -> str:
    _UNPICKLED.append("ran")
    return "pwned"


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark_unpickled, ())


def test_disk_format_is_json_text_and_never_unpickles(tmp_path: Path) -> None:
    key = "a" * 64
    with ResponseCache(tmp_path) as ours:  # created by attribsdk (marked as ours) ...
        ours._open()
    with diskcache.Cache(str(tmp_path)) as foreign:  # ... then someone plants a pickle in it
        foreign.set(key, _Evil())
    with ResponseCache(tmp_path) as cache:
        assert cache.get_sync(key) is None
        assert cache.stats().invalid == 1
        with pytest.raises(TypeError):
            cache._open().set("k", {"not": "text"})
        entry = CacheEntry.create("b" * 64, "test:model", {"q": 1}, Completion(text="hi", model="m"))
        cache.put_sync(entry)
        raw = cache._open().get("b" * 64)
    assert _UNPICKLED == []
    assert isinstance(raw, str) and json.loads(raw)["schema_version"] == 1
    settings = dict(
        sqlite3.connect(tmp_path / "cache.db").execute("select key, value from Settings").fetchall()
    )
    assert settings["eviction_policy"] == "none"


def test_invalid_or_foreign_schema_entries_are_misses(tmp_path: Path) -> None:
    with ResponseCache(tmp_path) as cache:
        db = cache._open()
        db.set("k1", "{not json")
        db.set("k2", json.dumps({"schema_version": 99, "key": "k2"}))
        entry = CacheEntry.create("k3", "m", {}, Completion(text="ok", model="m"))
        db.set("k4", entry.model_dump_json())  # stored under the wrong key
        assert [cache.get_sync(k) for k in ("k1", "k2", "k4")] == [None, None, None]
        assert cache.stats().invalid == 3


def test_an_unusable_cache_directory_is_a_typed_error(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    under_a_file = a_file / "cache"  # cannot be created
    with pytest.raises(CacheUnavailableError, match="cannot be opened"), ResponseCache(under_a_file) as cache:
        cache.get_sync("k")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "cache.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(CacheUnavailableError, match="DatabaseError"), ResponseCache(corrupt) as cache:
        cache.get_sync("k")


# ---------------------------------------------------------------------------------------------- flow
async def test_entry_round_trip_then_hit(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    inner = adapter(server, fast_retry)
    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(inner, cache)
        first = await model.generate(ask(), PARAMS)
        second = await model.generate(ask(), PARAMS)
        (entry,) = list(cache.iter_entries())
    await inner.aclose()
    assert server.calls(CHAT) == 1
    assert not first.cached and first.attempts == 1
    assert second.cached and second.attempts == 0 and second.text == first.text
    assert entry.model == inner.name and entry.model_version == "m-2024-07-18"
    assert entry.system_fingerprint == "fp_fake" and entry.usage == first.usage
    assert entry.request["body"]["messages"] == [{"role": "user", "content": "question 0"}]
    assert entry.created_at.tzinfo is not None


async def test_50_concurrent_identical_requests_make_one_upstream_call(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    server.delay = 0.05
    inner = adapter(server, fast_retry)
    ledger = CallLedger(pricing=Pricing({"m": Price(input_mtok=1.0, output_mtok=2.0)}))
    results: list[Completion] = []
    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(inner, cache, ledger=ledger)

        async def one() -> None:
            results.append(await model.generate(ask("same"), PARAMS))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert cache.stats().entries == 1
    await inner.aclose()
    assert server.calls(CHAT) == 1
    assert len(results) == 50 and len({r.text for r in results}) == 1
    assert sum(not r.cached for r in results) == 1
    assert ledger.report().cache_hits == 49  # joined callers are recorded as hits (avoided cost)


async def test_second_run_makes_no_upstream_call(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    async def run() -> list[str]:
        inner = adapter(server, fast_retry)
        async with ResponseCache(tmp_path) as cache:
            model = CachedModel(inner, cache)
            texts = [(await model.generate(ask(i), PARAMS)).text for i in range(5)]
        await inner.aclose()
        return texts

    first = await run()
    assert server.calls(CHAT) == 5
    second = await run()  # new adapter, new cache handle: like a new process
    assert second == first and server.calls(CHAT) == 5


async def test_errors_are_never_cached_and_are_shared_with_waiters(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    inner = adapter(server, fast_retry)
    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(inner, cache)
        server.inject(Fault(status=400, delay=0.05))
        errors: list[APIStatusError] = []

        async def one() -> None:
            try:
                await model.generate(ask(), PARAMS)
            except APIStatusError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        assert len(errors) == 10 and server.calls(CHAT) == 1  # one upstream failure, seen by all
        assert cache.stats().entries == 0
        # each waiter gets its own copy: what one caller adds to partial the others do not see
        assert len({id(e) for e in errors}) == 10 and len({id(e.partial) for e in errors}) == 10
        assert {(type(e), str(e), e.status_code) for e in errors} == {(type(errors[0]), str(errors[0]), 400)}
        assert (await model.generate(ask(), PARAMS)).text == "Answer to: question 0"
        assert server.calls(CHAT) == 2 and cache.stats().entries == 1
    await inner.aclose()


async def test_401_is_not_cached(server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path) -> None:
    server.api_key = "sk-right"
    inner = adapter(server, fast_retry, api_key="sk-wrong")
    async with ResponseCache(tmp_path) as cache:
        with pytest.raises(AuthenticationError):
            await CachedModel(inner, cache).generate(ask(), PARAMS)
        assert cache.stats().entries == 0
    await inner.aclose()


async def test_truncated_answers_are_kept_and_refused_again_for_free(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    """A truncated answer was billed: it is stored even when refused, so a re-run pays nothing.
    Whether the caller gets it or a TruncatedOutputError depends on the caller alone."""
    short = GenerationParams(max_tokens=2)
    strict = adapter(server, fast_retry)
    lenient = adapter(server, fast_retry, allow_truncated=True)
    ledger = CallLedger()
    async with ResponseCache(tmp_path) as cache:
        with pytest.raises(TruncatedOutputError) as first:
            await CachedModel(strict, cache).generate(ask(), short)
        assert not first.value.partial["completion"].cached
        assert cache.stats().entries == 1 and server.calls(CHAT) == 1
        # A caller that refuses truncated answers is refused the stored one too, without a call.
        for _ in range(2):
            with pytest.raises(TruncatedOutputError, match="cached answer was cut") as info:
                await CachedModel(strict, cache, ledger=ledger).generate(ask(), short)
            assert info.value.partial["completion"].cached
        assert server.calls(CHAT) == 1 and ledger.report().cache_hits == 2
        # One that allows them gets the stored answer.
        again = await CachedModel(lenient, cache, allow_truncated=True).generate(ask(), short)
        assert again.cached and again.finish_reason == "length" and server.calls(CHAT) == 1
        # A lenient adapter under a strict cache: refused the same way, fresh or cached.
        other = GenerationParams(max_tokens=3)
        for _ in range(2):
            with pytest.raises(TruncatedOutputError):
                await CachedModel(lenient, cache).generate(ask(), other)
        assert server.calls(CHAT) == 2 and cache.stats().entries == 2
        # waiters on a truncated leader are served its stored answer as hits (refused, unpaid)
        server.inject(Fault(delay=0.05))
        waiting = CachedModel(strict, cache, ledger=ledger)
        refused: list[TruncatedOutputError] = []

        async def one() -> None:
            with pytest.raises(TruncatedOutputError) as info:
                await waiting.generate(ask("concurrent"), short)
            refused.append(info.value)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
        assert server.calls(CHAT) == 3 and ledger.report().cache_hits == 2 + 4
        assert sorted(e.partial["completion"].cached for e in refused) == [False] + [True] * 4
    await strict.aclose()
    await lenient.aclose()


async def test_an_answer_that_cannot_be_stored_is_still_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with ResponseCache(tmp_path) as cache:

        def disk_full(entry: CacheEntry) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cache, "put_sync", disk_full)
        completion = await CachedModel(TestModel("kept"), cache).generate(ask(), PARAMS)
    assert completion.text == "kept"
    assert "could not store" in caplog.text


async def test_cancelled_leader_hands_over_to_a_waiter(tmp_path: Path) -> None:
    started = anyio.Event()

    async def slow(messages: list[Message], params: GenerationParams) -> str:
        started.set()
        await anyio.sleep(0.05 if len(inner.calls) > 1 else 30)
        return "late answer"

    inner = FunctionModel(slow)
    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(inner, cache)
        results: list[Completion] = []
        async with anyio.create_task_group() as tg:
            leader = anyio.CancelScope()

            async def lead() -> None:
                with leader:
                    await model.generate(ask(), PARAMS)

            async def follow() -> None:
                results.append(await model.generate(ask(), PARAMS))

            tg.start_soon(lead)
            await started.wait()
            tg.start_soon(follow)
            await anyio.sleep(0.01)
            leader.cancel()
    assert [r.text for r in results] == ["late answer"] and len(inner.calls) == 2


# ---------------------------------------------------------------------------------------------- processes
async def test_cross_process_lock_makes_the_second_caller_wait_and_reuse(
    server: FakeLLMServer, fast_retry: RetryPolicy, tmp_path: Path
) -> None:
    """Two handles on one directory behave like two processes (flock is per open file)."""
    holder = ResponseCache(tmp_path)
    other = ResponseCache(tmp_path)
    inner = adapter(server, fast_retry)
    model = CachedModel(inner, other)
    key = cache_key(inner, ask(), PARAMS)
    results: list[Completion] = []

    async def call() -> None:
        results.append(await model.generate(ask(), PARAMS))

    async with anyio.create_task_group() as tg, holder.lock(key) as acquired:
        assert acquired
        tg.start_soon(call)
        await anyio.sleep(0.2)
        assert results == [] and server.calls() == 0  # blocked on the lock, nothing sent
        done = Completion(text="answer from the other process", model="m")
        await holder.put(CacheEntry.create(key, inner.name, {}, done))
        # leaving the block released the lock; the task group now waits for the call to finish
    assert results[0].text == "answer from the other process" and results[0].cached
    assert server.calls() == 0
    await inner.aclose()
    holder.close()
    other.close()


async def test_locks_are_per_key_so_different_requests_never_wait(tmp_path: Path) -> None:
    holder, other = ResponseCache(tmp_path), ResponseCache(tmp_path, lock_timeout=0.2)
    key = "abc" + "0" * 61
    neighbour = "abc" + "1" * 61  # same first hex digits: these shared a lock file before
    async with holder.lock(key) as held:
        assert held
        with anyio.fail_after(5):
            async with other.lock(neighbour) as acquired:
                assert acquired  # taken at once, not after the 0.2 s timeout
        async with other.lock(key) as same:
            assert not same  # the same key waits (here: until the timeout, then goes ahead)
    assert ResponseCache(tmp_path).lock_timeout is None  # by default a live holder is waited for
    with pytest.raises(ConfigError, match="lock_timeout"):
        ResponseCache(tmp_path, lock_timeout=0)
    # a directory that cannot hold lock files is a typed error
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "locks").write_text("not a directory")
    with pytest.raises(CacheUnavailableError, match="lock files"):
        async with ResponseCache(blocked).lock(key):
            pass
    holder.close()
    other.close()
    with pytest.raises(ConfigError, match="empty"):
        open_cache("  ")


async def test_a_paid_answer_is_stored_even_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    scope = anyio.CancelScope()

    class SlowStore(ResponseCache):
        async def put(self, entry: CacheEntry) -> None:
            scope.cancel()  # the caller is cancelled while its paid answer is being stored
            await anyio.sleep(0.05)  # e.g. waiting for a worker thread
            await super().put(entry)

    inner = TestModel("paid for")
    async with SlowStore(tmp_path) as cache:
        with scope:
            await CachedModel(inner, cache).generate(ask(), PARAMS)
        assert scope.cancel_called and len(inner.calls) == 1
        assert [e.completion.text for e in cache.iter_entries()] == ["paid for"]


async def test_a_leaders_budget_refusal_is_not_its_followers(tmp_path: Path) -> None:
    """Two explainers share a cache: one's spent budget does not refuse the other's call."""
    async with ResponseCache(tmp_path) as cache:
        broke = build_closed_model(TestModel("answer"), cache=cache, budget=Budget(max_calls=0))
        funded = build_closed_model(TestModel("answer"), cache=cache)
        outcomes: dict[str, object] = {}

        async def call(name: str, stack: Any) -> None:
            try:
                outcomes[name] = (await stack.generate(ask(), PARAMS)).text
            except BudgetExceeded as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "broke", broke)
            await anyio.sleep(0)  # the broke caller leads the flight
            tg.start_soon(call, "funded", funded)
    assert isinstance(outcomes["broke"], BudgetExceeded) and outcomes["funded"] == "answer"
    assert funded.ledger.report().closed_calls == 1


def test_a_cache_around_a_ready_stack_follows_its_adapters_truncation_policy(tmp_path: Path) -> None:
    strict = OpenAIModel.compatible_from_spec("m@http://127.0.0.1:9/v1")
    inner = build_closed_model(strict)
    outer = build_closed_model(inner, cache=tmp_path)
    assert inner.allow_truncated is False
    cached = outer.inner
    assert isinstance(cached, CachedModel) and cached.allow_truncated is False


def _worker(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_lock_across_real_processes(server: FakeLLMServer, tmp_path: Path) -> None:
    probe = OpenAIModel.compatible_from_spec(f"worker-model@{server.openai_base_url}")
    key = cache_key(probe, ask(0), PARAMS)
    with ResponseCache(tmp_path) as holder:
        async with holder.lock(key):
            proc = _worker("one", server.openai_base_url, str(tmp_path))
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
            await anyio.sleep(0.3)  # the worker looks the key up, misses, and waits on the lock
            answer = Completion(text="written while the worker waited", model="worker-model")
            await holder.put(CacheEntry.create(key, probe.name, {}, answer))
        out, err = await anyio.to_thread.run_sync(proc.communicate)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {
        "text": "written while the worker waited",
        "cached": True,
    }
    assert server.calls() == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sigkill_mid_run_leaves_every_completed_entry_intact(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    proc = _worker("run", server.openai_base_url, str(tmp_path), "100000")
    assert proc.stdout is not None
    done: dict[int, str] = {}
    while len(done) < 25:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line, proc.stderr.read() if proc.stderr else "worker exited"
        _, number, key = line.split()
        done[int(number)] = key
    os.kill(proc.pid, signal.SIGKILL)
    await anyio.to_thread.run_sync(proc.wait)
    assert proc.returncode == -signal.SIGKILL

    assert sqlite3.connect(tmp_path / "cache.db").execute("pragma integrity_check").fetchone() == ("ok",)
    with ResponseCache(tmp_path) as cache:
        for index, key in done.items():
            entry = cache.get_sync(key)
            assert entry is not None, f"completed entry {index} lost"
            assert entry.completion.text == f"Answer to: question {index}"
        assert cache.stats().entries >= len(done)
        cache.put_sync(
            CacheEntry.create("after-crash", "m", {}, Completion(text="still writable", model="m"))
        )
        assert cache.get_sync("after-crash") is not None


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cli_stats_and_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nowhere"
    result = runner.invoke(cache_app, ["stats", "--dir", str(missing)])
    assert result.exit_code == 0 and "no cache at" in result.output and not missing.exists()

    async with ResponseCache(tmp_path) as cache:
        model = CachedModel(TestModel("x"), cache)
        for i in range(3):
            await model.generate(ask(i), PARAMS)
    result = runner.invoke(cache_app, ["stats", "--dir", str(tmp_path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["entries"] == 3
    result = runner.invoke(cache_app, ["clear", "--dir", str(tmp_path)], input="n\n")
    assert result.exit_code != 0  # declined: nothing deleted
    assert (
        json.loads(runner.invoke(cache_app, ["stats", "--dir", str(tmp_path), "--json"]).output)["entries"]
        == 3
    )
    locks = sorted(p.name for p in (tmp_path / "locks").rglob("*.lock"))
    assert len(locks) == 3  # one per request made
    other = ResponseCache(tmp_path)  # as another process would, holds one key's lock
    async with other, other.lock(locks[0].removesuffix(".lock")):
        result = runner.invoke(cache_app, ["clear", "--dir", str(tmp_path), "--yes"])
        assert result.exit_code == 0 and "deleted 3" in result.output
        # the held lock file stays, the two free ones are gone
        assert [p.name for p in (tmp_path / "locks").rglob("*.lock")] == locks[:1]
    assert "entries:   0" in runner.invoke(cache_app, ["stats", "--dir", str(tmp_path)]).output
    result = runner.invoke(cache_app, ["clear", "--dir", str(tmp_path), "--yes"])
    assert result.exit_code == 0 and "nothing to clear" in result.output
    assert not list((tmp_path / "locks").rglob("*.lock"))  # no answers left, the free lock file went


def test_another_programs_diskcache_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    with diskcache.Cache(str(foreign)) as theirs:  # another app, diskcache's own defaults
        theirs.set("their-key", {"pickled": True})
    uses: list[Callable[[ResponseCache], object]] = [
        lambda c: c.stats(),
        lambda c: c.clear(),
        lambda c: c.get_sync("k" * 64),
    ]
    for use in uses:
        with pytest.raises(CacheUnavailableError, match="not attribsdk's"):
            use(ResponseCache(foreign))
    result = CliRunner().invoke(cache_app, ["clear", "--dir", str(foreign), "--yes"])
    assert result.exit_code != 0 and "not attribsdk's" in result.output
    with diskcache.Cache(str(foreign)) as theirs:
        assert theirs.get("their-key") == {"pickled": True}
        assert theirs.eviction_policy == "least-recently-stored"  # settings untouched
    # A cache attribsdk made before the marker existed (its own settings) is adopted.
    earlier = tmp_path / "earlier"
    with ResponseCache(earlier) as ours:
        ours.put_sync(CacheEntry.create("a" * 64, "test:model", {}, Completion(text="kept", model="m")))
    (earlier / MARKER).unlink()
    with ResponseCache(earlier) as again:
        assert [e.completion.text for e in again.iter_entries()] == ["kept"]
    assert json.loads((earlier / MARKER).read_text())["format"] == "attribsdk-cache"


def test_a_cache_being_created_by_another_process_is_not_refused(tmp_path: Path) -> None:
    # the other process has created cache.db but not yet written diskcache's settings
    sqlite3.connect(tmp_path / "cache.db").close()
    with ResponseCache(tmp_path) as cache:
        assert cache.stats().entries == 0
    assert (tmp_path / MARKER).exists()
