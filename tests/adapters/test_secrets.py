"""API keys reach the Authorization header and nowhere else: not cache files, logs, reprs, errors,
results."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from attribsdk.adapters._retry import RetryPolicy
from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.stack import build_closed_model
from attribsdk.cost import Price, Pricing
from attribsdk.errors import AttribError

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
