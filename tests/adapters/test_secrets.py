"""API keys reach the Authorization header and nowhere else: not cache files, logs, reprs, errors,
results."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from attribsdk.adapters._common import resolve_api_key
from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.stack import build_closed_model
from attribsdk.cost import Price, Pricing
from attribsdk.errors import AttribError, ConfigError

from .conftest import SECRET
from .fakeserver import FakeLLMServer, Fault

pytestmark = pytest.mark.anyio

ANTHROPIC_SECRET = "sk-ant-SECRET-fedcba9876543210"


async def test_keys_never_leak(
    server: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.001)
    pricing = Pricing({"openai-compatible:m": Price(input_mtok=1, output_mtok=1)})
    stacks = [
        build_closed_model(
            "openai:gpt-4o-mini",
            base_url=server.openai_base_url,
            api_key=SECRET,
            cache=tmp_path,
            retry=retry,
            pricing=pricing,
        ),
        build_closed_model(
            f"openai-compatible:m@{server.openai_base_url}",
            api_key=SECRET,
            cache=tmp_path,
            retry=retry,
            pricing=pricing,
        ),
        build_closed_model(
            "anthropic:claude-haiku-4-5",
            base_url=server.anthropic_base_url,
            cache=tmp_path,
            retry=retry,
            pricing=pricing,
        ),
    ]
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):  # every logger, the SDKs' and httpx2's included
        for i, stack in enumerate(stacks):
            texts += [repr(stack), repr(stack.adapter), repr(stack.ledger)]
            messages = [Message(role="user", content=f"q{i}")]
            server.inject(Fault(status=429, headers={"retry-after-ms": "1"}), Fault(drop=True))
            completion = await stack.generate(messages, GenerationParams())  # retried twice, then cached
            texts.append(completion.model_dump_json())
            texts.append((await stack.generate(messages, GenerationParams())).model_dump_json())
            server.api_key = "sk-not-yours"
            with pytest.raises(AttribError) as info:
                await stack.generate([Message(role="user", content=f"other {i}")], GenerationParams())
            server.api_key = None
            texts += [str(info.value), repr(info.value), repr(info.value.__cause__)]
            texts.append(stack.ledger.to_json())
            await stack.aclose()
    texts.append(caplog.text)
    assert "retrying in" in caplog.text  # the retries were logged...
    assert "Sending HTTP Request" in caplog.text  # ...and so were the SDKs' debug messages...
    for secret in (SECRET, ANTHROPIC_SECRET):
        assert all(secret not in text for text in texts)  # ...without a key
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    # the keys did travel where they belong
    assert any(SECRET in r.headers.get("authorization", "") for r in server.requests)
    assert any(
        ANTHROPIC_SECRET in r.headers.get("x-api-key", "") + r.headers.get("authorization", "")
        for r in server.requests
    )
    assert len(list(tmp_path.rglob("cache.db"))) == 1


@pytest.mark.parametrize("status", [401, 500])
async def test_a_server_that_echoes_the_key_does_not_put_it_in_tracebacks(
    server: FakeLLMServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Some proxies quote the key they received in their error body. The adapter's own message
    redacts it; the SDK exception that carries it verbatim is not chained to the error, so neither
    a traceback nor logger.exception shows it."""
    echo = {"error": {"message": f"Invalid key: Bearer {SECRET}", "type": "invalid_request_error"}}
    server.inject(*[Fault(status=status, body=echo)] * 3)
    stack = build_closed_model(
        "openai:gpt-4o-mini",
        base_url=server.openai_base_url,
        api_key=SECRET,
        cache=False,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.001),
    )
    with pytest.raises(AttribError) as info:
        await stack.generate([Message(role="user", content="q")], GenerationParams())
    logging.getLogger("test").exception("failed", exc_info=info.value)
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    assert "Invalid key" in shown and SECRET not in shown
    await stack.aclose()


def test_keys_are_trimmed_and_keys_with_inner_whitespace_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    key = resolve_api_key(SECRET + "\n", None, required=True, label="m")
    assert key is not None and key.get_secret_value() == SECRET  # read from a file, newline and all
    monkeypatch.setenv("KEY_FROM_ENV", f"  {SECRET}\r\n")
    env_key = resolve_api_key(None, "KEY_FROM_ENV", required=True, label="m")
    assert env_key is not None and env_key.get_secret_value() == SECRET
    for bad in (SECRET[:5] + " " + SECRET[5:], SECRET + "\x00x"):
        with pytest.raises(ConfigError, match="whitespace or control characters") as info:
            resolve_api_key(bad, None, required=True, label="m")
        assert SECRET[:8] not in str(info.value)
    with pytest.raises(ConfigError, match="no API key"):
        resolve_api_key("  \n", None, required=True, label="m")
