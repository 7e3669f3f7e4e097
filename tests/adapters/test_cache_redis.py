"""The cache backends: the disk cache and the Redis cache give the same guarantees.

Every distinct request is paid for once (single-flight within a process and across processes),
errors are never cached, entries are JSON text, API keys never reach the cache, a stuck lock
holder cannot block callers forever. Redis tests run against a real redis-server started for the
session (tests/redis_server.py); the closed model is the official OpenAI client talking to the
loopback fake server, which counts the requests it receives.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis
from typer.testing import CliRunner

from attribsdk import Explainer
from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.base import Completion, GenerationParams, Message
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.adapters.stack import build_closed_model
from attribsdk.adapters.wrappers import TestModel
from attribsdk.cache import (
    CACHE_URL_ENV,
    CacheBackend,
    CachedModel,
    CacheEntry,
    DiskCache,
    RedisCache,
    ResponseCache,
    cache_key,
    cache_stats,
    is_cache_url,
    open_cache,
    redact_url,
)
from attribsdk.cache.cli import cache_app
from attribsdk.cost import Price, Pricing
from attribsdk.errors import APIStatusError, CacheUnavailableError, ConfigError
from tests.redis_server import RedisServer, _free_port
from tests.tiny_models import tiny_local_model

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(max_tokens=64)
CHAT = "/v1/chat/completions"
WORKER = Path(__file__).with_name("_cache_backend_worker.py")
REPO = Path(__file__).resolve().parents[2]
CONTEXT = ["The capital of France is Paris. Paris is on the Seine.", "Berlin is in Germany."]

#: Opens a new handle on the test's cache (like another process would); options go to the backend.
Opener = Callable[..., CacheBackend]


def ask(i: int | str = 0) -> list[Message]:
    return [Message(role="user", content=f"question {i}")]


def adapter(server: FakeLLMServer, retry: RetryPolicy, **options: Any) -> OpenAIModel:
    return OpenAIModel.compatible_from_spec(f"m@{server.openai_base_url}", retry=retry, **options)


def raw_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.fixture(params=["disk", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the test's cache lives: a directory, or the session server's URL (flushed)."""
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    return str(tmp_path / "cache")


@pytest.fixture
def opener(target: str) -> Iterator[Opener]:
    opened: list[CacheBackend] = []

    def make(**options: Any) -> CacheBackend:
        if not is_cache_url(target):
            options.pop("lock_ttl", None)
        cache = open_cache(target, **options)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


def stored_texts(cache: CacheBackend) -> list[str]:
    """Every stored value exactly as the backend holds it."""
    if isinstance(cache, RedisCache):
        with raw_redis(_url_of(cache)) as r:
            return [r.get(k).decode() for k in r.scan_iter(f"{cache.namespace}:entry:*")]
    assert isinstance(cache, DiskCache)
    db = cache._open()
    return [db.get(k) for k in db.iterkeys()]


def _url_of(cache: RedisCache) -> str:
    kw = cache._client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


# ---------------------------------------------------------------------------------------------- selection
def test_strings_select_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis://h:1/0", "REDISS://h", "unix:///run/redis.sock?db=2"):
        assert is_cache_url(url)
    for other in (str(tmp_path), "redis", "redis:/x", "http://h", None, tmp_path):
        assert not is_cache_url(other)
    monkeypatch.delenv(CACHE_URL_ENV, raising=False)
    disk = open_cache(tmp_path / "d")
    red = open_cache("redis://127.0.0.1:1/3", namespace="ns1")
    assert type(disk) is DiskCache and ResponseCache is DiskCache
    assert type(red) is RedisCache and red.namespace == "ns1"
    assert isinstance(disk, CacheBackend) and isinstance(red, CacheBackend)
    assert not isinstance(object(), CacheBackend)
    monkeypatch.setenv(CACHE_URL_ENV, "redis://127.0.0.1:1/4")
    assert isinstance(open_cache(), RedisCache)  # the default cache of every worker of a cluster
    with pytest.raises(ConfigError, match="namespace"):
        RedisCache("redis://127.0.0.1:1/0", namespace="a:b*")
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisCache("http://user:pw@127.0.0.1/")
    with pytest.raises(ConfigError, match="CacheBackend"):
        CachedModel(TestModel(), object())  # type: ignore[arg-type]


def test_redact_url() -> None:
    assert redact_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://alice:p%40ss@h/1") == "rediss://alice:***@h/1"
    assert redact_url("redis://alice@h/1") == "redis://alice@h/1"  # a user name is not secret
    assert redact_url("unix:///tmp/r.sock?db=1&password=s3cret") == "unix:///tmp/r.sock?db=1&password=***"
    cache = RedisCache("redis://:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(cache) + cache.location + cache.url


async def test_stack_opens_and_closes_a_redis_cache_from_a_url(redis_url: str) -> None:
    pricing = Pricing({"test:model": Price(input_mtok=1.0, output_mtok=1.0)})
    stack = build_closed_model(TestModel("x"), cache=redis_url, pricing=pricing)
    assert isinstance(stack.cache, RedisCache)
    assert (await stack.generate(ask(), PARAMS)).text == "x"
    assert (await stack.generate(ask(), PARAMS)).cached
    await stack.aclose()
    assert cache_stats(redis_url).entries == 1


# ---------------------------------------------------------------------------------------------- both backends
async def test_miss_then_hit_and_json_round_trip(
    kind: str, opener: Opener, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    inner = adapter(server, fast_retry)
    cache = opener()
    model = CachedModel(inner, cache)
    first = await model.generate(ask(), PARAMS)
    second = await model.generate(ask(), PARAMS)
    await inner.aclose()
    assert server.calls(CHAT) == 1
    assert not first.cached and second.cached and second.attempts == 0 and second.text == first.text
    entries = [e async for e in cache.aiter_entries()]
    assert len(entries) == 1
    entry = entries[0]
    assert entry.key == cache_key(inner, ask(), PARAMS) and entry.model == inner.name
    assert entry.completion.text == first.text and entry.usage == first.usage
    assert entry.model_version == "m-2024-07-18" and entry.system_fingerprint == "fp_fake"
    (text,) = stored_texts(cache)
    assert json.loads(text)["schema_version"] == 1  # JSON text, nothing pickled
    assert CacheEntry.model_validate_json(text) == entry
    stats = await cache.astats()
    assert (stats.entries, stats.hits, stats.misses, stats.writes) == (1, 1, 1, 1)
    assert stats.backend == kind and stats.size_bytes > 0
    # A new handle (another process) sees the entry; nothing is sent again.
    again = await CachedModel(adapter(server, fast_retry), opener()).generate(ask(), PARAMS)
    assert again.cached and server.calls(CHAT) == 1


async def test_errors_are_never_cached(
    opener: Opener, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    inner = adapter(server, fast_retry)
    cache = opener()
    model = CachedModel(inner, cache)
    server.inject(Fault(status=400, delay=0.05))
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await model.generate(ask(), PARAMS)
        except APIStatusError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(errors) == 10 and server.calls(CHAT) == 1  # one upstream failure, shared
    assert cache.stats().entries == 0 and stored_texts(cache) == []
    assert (await model.generate(ask(), PARAMS)).text == "Answer to: question 0"
    assert server.calls(CHAT) == 2 and cache.stats().entries == 1
    await inner.aclose()


async def test_concurrent_identical_calls_make_one_upstream_call(
    opener: Opener, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.delay = 0.05
    inner = adapter(server, fast_retry)
    cache = opener()
    model = CachedModel(inner, cache)
    results: list[Completion] = []

    async def one() -> None:
        results.append(await model.generate(ask("same"), PARAMS))

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(one)
    await inner.aclose()
    assert server.calls(CHAT) == 1 and len(results) == 30
    assert len({r.text for r in results}) == 1 and sum(not r.cached for r in results) == 1
    assert cache.stats().entries == 1


async def test_a_waiter_reuses_the_lock_holders_answer(
    opener: Opener, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    """Two handles on one store behave like two processes (or machines, for Redis)."""
    holder, other = opener(), opener()
    inner = adapter(server, fast_retry)
    model = CachedModel(inner, other)
    key = cache_key(inner, ask(), PARAMS)
    results: list[Completion] = []

    async def call() -> None:
        results.append(await model.generate(ask(), PARAMS))

    async with anyio.create_task_group() as tg, holder.lock(key) as acquired:
        assert acquired
        tg.start_soon(call)
        await anyio.sleep(0.3)
        assert results == [] and server.calls() == 0  # blocked on the lock, nothing sent
        await holder.put(CacheEntry.create(key, inner.name, {}, Completion(text="from holder", model="m")))
    assert results[0].text == "from holder" and results[0].cached and server.calls() == 0
    await inner.aclose()


async def test_lock_timeout_goes_ahead_with_a_warning(
    opener: Opener, server: FakeLLMServer, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    holder = opener()
    impatient = opener(lock_timeout=0.3)
    inner = adapter(server, fast_retry)
    key = cache_key(inner, ask(), PARAMS)
    caplog.set_level(logging.WARNING, logger="attribsdk.cache")
    async with holder.lock(key) as acquired:  # a stuck holder that never answers
        assert acquired
        t0 = time.monotonic()
        got = await CachedModel(inner, impatient).generate(ask(), PARAMS)
        waited = time.monotonic() - t0
    await inner.aclose()
    assert not got.cached and server.calls(CHAT) == 1
    assert 0.3 <= waited < 5.0
    assert "going ahead" in caplog.text
    assert impatient.get_sync(key) is not None  # the answer it paid for was still stored


# ---------------------------------------------------------------------------------------------- processes
def _worker(base_url: str, target: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, str(WORKER), base_url, target, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_processes_racing_for_one_key_make_one_request(target: str, server: FakeLLMServer) -> None:
    server.delay = 0.5  # the leader's call is still in flight while the others look up
    procs = [_worker(server.openai_base_url, target) for _ in range(4)]
    for proc in procs:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
    for proc in procs:  # all start their call at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outs = []
    for proc in procs:
        out, err = await anyio.to_thread.run_sync(proc.communicate)
        assert proc.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert server.calls(CHAT) == 1  # no example paid for twice
    assert {o["text"] for o in outs} == {"Answer to: question 0"}
    assert sorted(o["cached"] for o in outs) == [False, True, True, True]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_killed_holders_lock_expires_after_lock_ttl(
    redis_url: str, server: FakeLLMServer, fast_retry: RetryPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    server.inject(Fault(delay=30))  # the holder's upstream call hangs until it is killed
    proc = _worker(server.openai_base_url, redis_url, "1.0")
    assert proc.stdout is not None and proc.stdin is not None
    assert (await anyio.to_thread.run_sync(proc.stdout.readline)).strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    r = raw_redis(redis_url)
    probe = OpenAIModel.compatible_from_spec(f"worker-model@{server.openai_base_url}")
    lock_key = f"attribsdk:lock:{cache_key(probe, ask(), PARAMS)}"
    for _ in range(200):  # until it holds the lock and its request is in flight
        if r.exists(lock_key) and server.calls(CHAT) == 1:
            break
        await anyio.sleep(0.05)
    assert r.exists(lock_key) and server.calls(CHAT) == 1
    await anyio.sleep(1.5)  # longer than its lock_ttl: the keep-alive kept the lock
    assert r.exists(lock_key), "a live holder's lock must not expire"
    os.kill(proc.pid, signal.SIGKILL)
    await anyio.to_thread.run_sync(proc.wait)
    caplog.set_level(logging.WARNING, logger="attribsdk.cache")
    inner = OpenAIModel.compatible_from_spec(f"worker-model@{server.openai_base_url}", retry=fast_retry)
    async with RedisCache(redis_url, lock_timeout=60) as cache:
        t0 = time.monotonic()
        got = await CachedModel(inner, cache).generate(ask(), PARAMS)
        waited = time.monotonic() - t0
    await inner.aclose()
    r.close()
    assert got.text == "Answer to: question 0" and not got.cached
    assert waited < 5.0 and "going ahead" not in caplog.text  # the lock expired; no valve needed
    assert server.calls(CHAT) == 2


# ---------------------------------------------------------------------------------------------- Redis only
async def test_clear_touches_only_its_namespace(redis_url: str) -> None:
    r = raw_redis(redis_url)
    r.set("other-app:key", "keep me")
    r.set("attribsdk-x:entry:k", "a namespace sharing the prefix")
    async with RedisCache(redis_url) as a, RedisCache(redis_url, namespace="b") as b:
        for i in range(3):
            await a.put(CacheEntry.create(f"k{i}", "m", {}, Completion(text=f"a{i}", model="m")))
        for i in range(2):
            await b.put(CacheEntry.create(f"k{i}", "m", {}, Completion(text=f"b{i}", model="m")))
        assert (a.stats().entries, b.stats().entries) == (3, 2)
        async with a.lock("k9") as acquired:
            assert acquired
            assert await a.aclear() == 3
            assert r.exists("attribsdk:lock:k9")  # a held lock is not an entry
        assert a.stats().entries == 0 and await a.get("k0") is None
        assert b.stats().entries == 2 and (await b.get("k0")) is not None
    assert r.get("other-app:key") == b"keep me" and r.exists("attribsdk-x:entry:k")
    r.close()


async def test_invalid_or_foreign_values_are_misses(redis_url: str) -> None:
    r = raw_redis(redis_url)
    r.set("attribsdk:entry:k1", "{not json")
    r.set("attribsdk:entry:k2", json.dumps({"schema_version": 99, "key": "k2"}))
    wrong_key = CacheEntry.create("other", "m", {}, Completion(text="x", model="m"))
    r.set("attribsdk:entry:k3", wrong_key.model_dump_json())
    r.hset("attribsdk:entry:k4", "a", "b")  # not even a string
    r.set("attribsdk:entry:k5", b"\xff\xfe")
    async with RedisCache(redis_url) as cache:
        assert [await cache.get(f"k{i}") for i in range(1, 6)] == [None] * 5
        assert cache.stats().invalid == 5
        assert cache.stats().entries == 5 and list(cache.iter_entries()) == []
    r.close()


async def test_lock_is_kept_alive_while_held_and_gone_after(redis_url: str) -> None:
    async with RedisCache(redis_url, lock_ttl=0.6) as a, RedisCache(redis_url, lock_timeout=0) as b:
        async with a.lock("k") as acquired:
            assert acquired
            await anyio.sleep(1.5)  # 2.5 TTLs
            async with b.lock("k") as other:
                assert not other  # still held: b timed out at once and went ahead
        async with b.lock("k") as other:
            assert other  # released
    r = raw_redis(redis_url)
    assert not r.exists("attribsdk:lock:k")
    r.close()


async def test_unreachable_server_is_a_clear_error_with_the_password_redacted(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    inner = adapter(server, fast_retry)
    async with RedisCache(url, connect_timeout=0.5) as cache:
        with pytest.raises(CacheUnavailableError) as info:
            await CachedModel(inner, cache).generate(ask(), PARAMS)
        with pytest.raises(CacheUnavailableError):
            cache.stats()
    await inner.aclose()
    err = info.value
    assert isinstance(err, ConfigError) and isinstance(err, ConnectionError)
    assert "hunter2" not in str(err) and ":***@127.0.0.1" in str(err)
    assert server.calls() == 0  # no lock to be had: nothing paid for without single-flight


async def test_a_password_protected_server_over_tcp_and_a_unix_socket(
    redis_server: Any, tmp_path: Path
) -> None:
    sock = tmp_path / "redis.sock"
    guarded = RedisServer(
        redis_server.binary, "--requirepass", "right-pass-456", "--unixsocket", str(sock)
    ).start()
    try:
        wrong = f"redis://:wrong-pass-123@127.0.0.1:{guarded.port}/0"
        async with RedisCache(wrong) as cache:
            with pytest.raises(CacheUnavailableError) as info:
                await cache.get("k")
        assert "wrong-pass-123" not in str(info.value) and ":***@" in str(info.value)
        right = f"redis://:right-pass-456@127.0.0.1:{guarded.port}/0"
        async with RedisCache(right) as cache:
            assert (await CachedModel(TestModel("ok"), cache).generate(ask(), PARAMS)).text == "ok"
            assert cache.stats().entries == 1
        via_socket = f"unix://{sock}?db=0&password=right-pass-456"
        async with open_cache(via_socket) as cache:
            assert isinstance(cache, RedisCache) and "right-pass-456" not in cache.location
            assert (await CachedModel(TestModel("ok"), cache).generate(ask(), PARAMS)).cached
        async with open_cache(f"unix://{sock}?db=0&password=nope-789") as cache:
            with pytest.raises(CacheUnavailableError) as info:
                await cache.get("k")
        assert "nope-789" not in str(info.value) and "password=***" in str(info.value)
    finally:
        guarded.close()


async def test_api_keys_never_reach_redis(
    redis_url: str, server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.api_key = SECRET
    inner = adapter(server, fast_retry, api_key=SECRET)
    async with RedisCache(redis_url) as cache:
        model = CachedModel(inner, cache)
        await model.generate(ask(), PARAMS)
        assert (await model.generate(ask(), PARAMS)).cached
    await inner.aclose()
    assert server.calls(CHAT) == 1
    r = raw_redis(redis_url)
    keys = list(r.scan_iter("*"))
    assert keys and all(SECRET.encode() not in k for k in keys)
    for k in keys:
        if r.type(k) == b"string":
            value = r.get(k)
            assert isinstance(value, bytes) and SECRET.encode() not in value
    r.close()


async def test_explainer_with_a_redis_url_pays_once(
    redis_url: str, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    pricing = Pricing(overrides={"my-model": Price(input_mtok=1.0, output_mtok=2.0)})
    tiny = tiny_local_model(seed=1)
    results = []
    for _ in range(2):  # two explainers: two processes of a cluster sharing one Redis
        async with Explainer(
            closed="openai:my-model",
            surrogate=tiny,
            cache=redis_url,
            pricing=pricing,
            closed_options={"base_url": server.openai_base_url},
        ) as ex:
            results.append(await ex.explain("What is the capital of France?", CONTEXT))
    first, second = results
    assert server.calls(CHAT) == 1
    assert (first.counts.closed_calls, first.counts.cache_hits) == (1, 0)
    assert (second.counts.closed_calls, second.counts.cache_hits) == (0, 1)
    assert first.answer == second.answer and second.cost.cost_usd == 0
    stats = cache_stats(redis_url)
    assert stats.backend == "redis" and stats.entries == 1
    r = raw_redis(redis_url)
    for k in r.scan_iter("*"):
        assert SECRET.encode() not in k + (r.get(k) or b"")
    r.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cli_stats_and_clear_take_a_url(redis_url: str) -> None:
    runner = CliRunner()
    async with RedisCache(redis_url) as cache, RedisCache(redis_url, namespace="other") as other:
        for i in range(3):
            await CachedModel(TestModel("x"), cache).generate(ask(i), PARAMS)
        await CachedModel(TestModel("y"), other).generate(ask(0), PARAMS)
    result = runner.invoke(cache_app, ["stats", "--cache", redis_url, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["backend"], info["namespace"], info["entries"]) == ("redis", "attribsdk", 3)
    result = runner.invoke(cache_app, ["clear", "--dir", redis_url], input="n\n")
    assert result.exit_code != 0 and cache_stats(redis_url).entries == 3
    result = runner.invoke(cache_app, ["clear", "--dir", redis_url, "--yes"])
    assert result.exit_code == 0 and "deleted 3" in result.output
    result = runner.invoke(cache_app, ["stats", "--dir", redis_url, "--namespace", "other"])
    assert "entries:   1" in result.output and "namespace: other" in result.output
    # with the URL from $ATTRIBSDK_CACHE_URL, --namespace still picks the namespace
    result = runner.invoke(
        cache_app, ["clear", "--namespace", "other", "--yes"], env={"ATTRIBSDK_CACHE_URL": redis_url}
    )
    assert result.exit_code == 0 and "deleted 1" in result.output, result.output
    with RedisCache(redis_url, namespace="other") as other:
        assert other.stats().entries == 0
    down = f"redis://:pw-secret@127.0.0.1:{_free_port()}/0"
    result = runner.invoke(cache_app, ["stats", "--dir", down])
    assert result.exit_code == 2 and "CacheUnavailableError" in result.output
    assert "pw-secret" not in result.output
