"""Anthropic Messages adapter against a real HTTP server, under asyncio and trio."""

from __future__ import annotations

import pytest

from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.anthropic import AnthropicModel
from attribsdk.adapters.base import GenerationParams, Message, MissingUsageWarning, Usage
from attribsdk.adapters.registry import resolve_closed_model
from attribsdk.adapters.stack import build_closed_model
from attribsdk.cost import Price, Pricing
from attribsdk.errors import (
    APIStatusError,
    AuthenticationError,
    ConfigError,
    InputError,
    LogprobsUnavailableError,
    TruncatedOutputError,
)

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="What is the capital of France?"),
]
ANSWER = "Answer to: What is the capital of France?"
PATH = "/v1/messages"


def claude(server: FakeLLMServer, retry: RetryPolicy, **options: object) -> AnthropicModel:
    options.setdefault("timeout", 5.0)
    return AnthropicModel(
        "claude-haiku-4-5",
        base_url=server.anthropic_base_url,
        api_key=SECRET,
        retry=retry,
        **options,  # type: ignore[arg-type]
    )


async def test_messages_round_trip_sampling_in_body_and_usage(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.cached_tokens = 3
    model = claude(server, fast_retry)
    try:
        completion = await model.generate(
            MESSAGES, GenerationParams(max_tokens=64, temperature=0.5, top_p=0.9)
        )
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.finish_reason == "stop" and completion.attempts == 1
    # Anthropic reports cached reads outside input_tokens; ours is the total (8 words), 3 cached.
    assert completion.usage.input_tokens == 8 and completion.usage.cache_read_tokens == 3
    assert completion.usage.output_tokens == len(ANSWER.split())
    (request,) = server.requests
    assert request.body["system"] == "Be brief."
    assert request.body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert request.body["temperature"] == 0.5 and request.body["top_p"] == 0.9  # sent via extra_body
    assert request.body["max_tokens"] == 64
    assert request.headers["x-stainless-retry-count"] == "0"
    assert SECRET in (request.headers.get("x-api-key", "") + request.headers.get("authorization", ""))


@pytest.mark.parametrize(
    "fault",
    [
        Fault(status=529),
        Fault(status=429, headers={"retry-after": "0"}),
        Fault(status=500),
        Fault(drop=True),
        Fault(malformed=True),
    ],
)
async def test_transient_faults_are_retried(
    server: FakeLLMServer, fast_retry: RetryPolicy, fault: Fault
) -> None:
    server.inject(fault)
    model = claude(server, fast_retry)
    try:
        completion = await model.generate(MESSAGES, GenerationParams())
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 2 == server.calls(PATH)


async def test_slow_response_is_retried(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    server.inject(Fault(delay=2.0))
    model = claude(server, fast_retry, timeout=0.2)
    try:
        completion = await model.generate(MESSAGES, GenerationParams())
    finally:
        await model.aclose()
    # retried after the slow one (a busy CPU can make a normal answer miss 0.2 s too)
    assert completion.attempts >= 2 and completion.text == ANSWER


async def test_401_and_400_are_final(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    model = claude(server, fast_retry)
    try:
        server.api_key = "sk-ant-other"
        with pytest.raises(AuthenticationError) as info:
            await model.generate(MESSAGES, GenerationParams())
        assert info.value.attempts == 1 and SECRET not in str(info.value)
        server.api_key = None
        server.inject(Fault(status=400))
        with pytest.raises(APIStatusError) as bad:
            await model.generate(MESSAGES, GenerationParams())
        assert bad.value.status_code == 400
    finally:
        await model.aclose()
    assert server.calls(PATH) == 2


async def test_truncation(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    model = claude(server, fast_retry)
    with pytest.raises(TruncatedOutputError) as info:
        await model.generate(MESSAGES, GenerationParams(max_tokens=2))
    await model.aclose()
    assert info.value.partial["completion"].text == "Answer to:"


async def test_logprobs_are_refused_before_any_request(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    model = claude(server, fast_retry)
    with pytest.raises(LogprobsUnavailableError, match="do not return token log-probabilities"):
        await model.generate(MESSAGES, GenerationParams(logprobs=True))
    await model.aclose()
    assert server.calls() == 0


async def test_an_answer_without_usage_is_kept_not_paid_twice(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    server.inject(Fault(no_usage=True))
    model = claude(server, fast_retry)
    try:
        with pytest.warns(MissingUsageWarning, match="no token usage"):
            completion = await model.generate(MESSAGES, GenerationParams())
    finally:
        await model.aclose()
    assert completion.text == ANSWER and completion.attempts == 1 and len(server.requests) == 1
    assert completion.usage.input_tokens == 0


async def test_inputs_and_configuration(monkeypatch: pytest.MonkeyPatch, server: FakeLLMServer) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        resolve_closed_model("anthropic:claude-haiku-4-5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    model = resolve_closed_model("anthropic:claude-haiku-4-5", base_url=server.anthropic_base_url)
    assert isinstance(model, AnthropicModel) and model.name == "anthropic:claude-haiku-4-5"
    assert SECRET not in repr(model)
    with pytest.raises(InputError, match="at least one user message"):
        await model.generate([Message(role="system", content="only system")], GenerationParams())
    await model.aclose()


async def test_a_discarded_answer_is_paid_for(server: FakeLLMServer, fast_retry: RetryPolicy) -> None:
    # Anthropic reports cache reads and writes outside input_tokens; the discarded usage is the total.
    usage = {
        "input_tokens": 4,
        "output_tokens": 2,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 1,
    }
    server.inject(Fault(status=200, body={"content": "not a list", "usage": usage}))
    stack = build_closed_model(
        claude(server, fast_retry),
        pricing=Pricing({"anthropic:claude-haiku-4-5": Price(input_mtok=1e6, output_mtok=1e6)}),
    )
    try:
        completion = await stack.generate(MESSAGES, GenerationParams(max_tokens=64))
    finally:
        await stack.adapter.aclose()  # given, so not the stack's to close
        await stack.aclose()
    assert completion.text == ANSWER and completion.attempts == 2
    assert completion.discarded_usage == Usage(
        input_tokens=8, output_tokens=2, cache_read_tokens=3, cache_write_tokens=1
    )
    (record,) = stack.ledger.records
    assert record.cost_usd == (8 + len(ANSWER.split())) + 10


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
async def test_discarded_answers_are_priced_one_request_at_a_time(
    server: FakeLLMServer, fast_retry: RetryPolicy
) -> None:
    # Two unreadable 150k-token answers: each is in the base tier of Claude Sonnet 4.5's prices,
    # their sum (300k) would be in the long-context tier.
    long = {"content": None, "usage": {"input_tokens": 150_000, "output_tokens": 2}}
    server.inject(*[Fault(status=200, body=long)] * 2)
    model = AnthropicModel(
        "claude-sonnet-4-5", base_url=server.anthropic_base_url, api_key=SECRET, retry=fast_retry
    )
    stack = build_closed_model(model)
    try:
        completion = await stack.generate(MESSAGES, GenerationParams(max_tokens=64))
    finally:
        await stack.adapter.aclose()
        await stack.aclose()
    assert completion.attempts == 3 and completion.discarded_usage.input_tokens == 300_000
    pricing = stack.ledger.pricing
    each = pricing.cost(
        model.name, Usage(input_tokens=150_000, output_tokens=2), response_model=completion.model
    )
    summed = pricing.cost(model.name, completion.discarded_usage, response_model=completion.model)
    answer = pricing.cost(model.name, completion.usage, response_model=completion.model)
    assert each is not None and summed is not None and answer is not None
    assert summed > 2 * each  # the tier the sum would wrongly pay
    (record,) = stack.ledger.records
    assert record.cost_usd == pytest.approx(answer + 2 * each, rel=1e-12)
