"""Concurrency cap, client-side rate limits, test doubles and the retry layer on its own."""

from __future__ import annotations

import email.utils
import subprocess
import sys

import anyio
import pytest

from attribsdk.adapters._retry import (
    RetryableFailure,
    RetryPolicy,
    _Wait,
    call_with_retries,
    parse_retry_after,
)
from attribsdk.adapters.base import Completion, GenerationParams, Message, Usage
from attribsdk.adapters.wrappers import (
    FunctionModel,
    LimitedModel,
    TestModel,
    TokenBucket,
    describe_request,
    worst_case_input_tokens,
    worst_case_tokens,
)
from attribsdk.errors import AdapterError, ConfigError, RequestTimeoutError, TransportError
from tests.concurrency import PeakConcurrency

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(max_tokens=10)


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def ask(text: str = "hi") -> list[Message]:
    return [Message(role="user", content=text)]


# ---------------------------------------------------------------------------------------------- limits
async def test_token_bucket_paces_after_the_burst() -> None:
    time = FakeTime()
    bucket = TokenBucket(2, period=60.0, clock=time.clock, sleep=time.sleep)
    for _ in range(4):
        await bucket.acquire()
    assert time.slept == [pytest.approx(30.0), pytest.approx(30.0)]  # burst of 2, then 1 per 30 s
    await bucket.acquire(5)  # more than the capacity: waits for a full bucket, not forever
    assert time.now == pytest.approx(120.0)


async def test_limited_model_caps_concurrency() -> None:
    reply = PeakConcurrency(lambda messages, params: "ok", hold=0.005)
    model = LimitedModel(FunctionModel(reply), max_concurrency=3)
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(model.generate, ask(), PARAMS)
    assert reply.peak == 3


async def test_rate_tokens_are_taken_only_with_a_slot() -> None:
    """Callers queued for a concurrency slot must not take rate tokens meanwhile, or they all go
    out at once when the slot frees: the rpm cap holds whatever the queue."""
    time = FakeTime()
    release = anyio.Event()
    starts: list[float] = []

    async def reply(messages: list[Message], params: GenerationParams) -> str:
        starts.append(time.now)
        if len(starts) == 1:
            await release.wait()  # the first call holds the only slot while the others queue
        return "ok"

    model = LimitedModel(FunctionModel(reply), max_concurrency=1, rpm=2, clock=time.clock, sleep=time.sleep)
    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(model.generate, ask(), PARAMS)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        time.now += 240.0  # a long first call: the bucket refills, but only once
        release.set()
    per_minute = [sum(1 for t in starts if lo <= t < lo + 60.0) for lo in starts]
    assert len(starts) == 6 and max(per_minute) <= 2 + 1  # the burst of 2, then the paced rate


async def test_limited_model_counts_requests_and_worst_case_tokens() -> None:
    time = FakeTime()
    inner = TestModel(usage=Usage())  # an answer without usage: the worst case stays counted
    tokens = worst_case_tokens(ask(), PARAMS)
    model = LimitedModel(inner, rpm=100, tpm=tokens * 2, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        await model.generate(ask(), PARAMS)
    assert len(inner.calls) == 3
    assert time.now == pytest.approx(30.0)  # the token budget (2 calls/min) is the binding limit
    # With usage reported, the input's over-estimate is given back: the calls cost their real
    # input plus max_tokens, and 3 calls fit in the same budget without waiting.
    time, honest = FakeTime(), TestModel(usage=Usage(input_tokens=1, output_tokens=2))
    model = LimitedModel(honest, tpm=tokens * 2, clock=time.clock, sleep=time.sleep)
    for _ in range(3):
        await model.generate(ask(), PARAMS)
    assert time.now == 0.0 and 3 * (1 + PARAMS.max_tokens) <= tokens * 2
    with pytest.raises(ConfigError):
        LimitedModel(inner, max_concurrency=0)
    with pytest.raises(ConfigError):
        TokenBucket(0)


def test_worst_case_input_tokens_bounds_bytes() -> None:
    messages = [Message(role="system", content="héllo"), Message(role="user", content="a b c")]
    assert worst_case_input_tokens(messages) == (6 + 6) + (5 + 4) + 2 * 8 + 8
    assert worst_case_tokens(messages, PARAMS) == worst_case_input_tokens(messages) + 10


# ---------------------------------------------------------------------------------------------- doubles
async def test_function_and_test_models() -> None:
    sync = FunctionModel(lambda m, p: "two words", name="fn:sync")
    completion = await sync.generate(ask("one two three"), PARAMS)
    assert completion.text == "two words" and completion.usage.input_tokens == 3
    assert completion.usage.output_tokens == 2 and completion.model == "fn:sync"

    async def full(messages: list[Message], params: GenerationParams) -> Completion:
        return Completion(text="x", model="custom", finish_reason="length")

    assert (await FunctionModel(full).generate(ask(), PARAMS)).finish_reason == "length"
    with pytest.raises(ConfigError, match="must return str or Completion"):
        await FunctionModel(lambda m, p: 3).generate(ask(), PARAMS)  # type: ignore[arg-type,return-value]

    cut = TestModel("cut", finish_reason="length")
    assert (await cut.generate(ask(), PARAMS)).finish_reason == "length" and len(cut.calls) == 1
    await cut.aclose()
    assert cut.closed and "calls=1" in repr(cut)
    generic = describe_request(cut, ask(), PARAMS.model_copy(update={"sample_index": 4}))
    assert generic["model"] == "test:model" and "sample_index" not in generic["params"]


# ---------------------------------------------------------------------------------------------- retry
def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(10.0)


def test_retry_policy_validation() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(initial_backoff=-1)
    with pytest.raises(ConfigError):
        RetryPolicy(deadline=0)


def test_backoff_is_capped_then_jittered() -> None:
    """The wait is min(max_backoff, initial·2^(n-1)) plus jitter in [0, initial]: clients at the
    cap still spread out instead of retrying in lockstep."""
    import tenacity

    policy = RetryPolicy(initial_backoff=0.5, max_backoff=4.0)
    wait = _Wait(policy)

    def waits(attempt: int) -> list[float]:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return [wait(state) for _ in range(200)]

    first, capped = waits(1), waits(9)
    assert all(0.5 <= w <= 1.0 for w in first)
    assert all(4.0 <= w <= 4.5 for w in capped) and max(capped) - min(capped) > 0.3


async def test_call_with_retries_counts_attempts() -> None:
    failures = [RetryableFailure(TransportError("flaky")), RetryableFailure(TransportError("flaky"))]

    async def attempt() -> str:
        if failures:
            raise failures.pop()
        return "done"

    policy = RetryPolicy(max_attempts=5, initial_backoff=0.001)
    assert await call_with_retries(attempt, policy, label="t") == ("done", 3)

    async def final() -> str:
        raise AdapterError("no")

    with pytest.raises(AdapterError) as info:
        await call_with_retries(final, policy, label="t")
    assert info.value.attempts == 1

    async def hang() -> str:
        await anyio.sleep(10)
        return "never"

    with pytest.raises(RequestTimeoutError, match=r"deadline of 0\.05 s"):
        await call_with_retries(hang, RetryPolicy(deadline=0.05), label="t")


def test_the_closed_model_layer_never_imports_torch() -> None:
    code = (
        "import sys; import attribsdk.adapters.stack, attribsdk.adapters.openai, "
        "attribsdk.adapters.anthropic, attribsdk.cache.cli, attribsdk.cost; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_test_doubles_sharing_the_default_name_do_not_share_cache_keys() -> None:
    from attribsdk.cache import cache_key

    messages, params = [Message(role="user", content="q")], GenerationParams()

    def key(model: FunctionModel) -> str:
        return cache_key(model, messages, params)

    assert key(TestModel("A")) != key(TestModel("B")) and key(TestModel("A")) == key(TestModel("A"))
    assert key(TestModel("A", finish_reason="length")) != key(TestModel("A"))
    assert key(FunctionModel(lambda m, p: "A")) != key(FunctionModel(lambda m, p: "B"))

    def same(m: list[Message], p: GenerationParams) -> str:
        return "A"

    assert key(FunctionModel(same)) == key(FunctionModel(same))


def test_function_identity_is_stable_and_tells_partials_apart() -> None:
    import functools

    from attribsdk.adapters.wrappers import _function_identity

    def with_comprehension(m: list[Message], p: GenerationParams) -> str:
        return " ".join([x.content for x in m])

    identity = _function_identity(with_comprehension)
    assert " at 0x" not in identity and identity == _function_identity(with_comprehension)

    def reply(m: list[Message], p: GenerationParams, text: str) -> str:
        return text

    a, b = functools.partial(reply, text="A"), functools.partial(reply, text="B")
    assert _function_identity(a) != _function_identity(b)
