"""Fixtures for the closed-model layer: a real HTTP server, both anyio backends, fast retries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attribsdk.adapters._retry import RetryPolicy

from .fakeserver import FakeLLMServer

#: A key that must never show up anywhere but the Authorization header.
SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def server(_server: FakeLLMServer) -> Iterator[FakeLLMServer]:
    """The session's server with no queued faults and an empty request log."""
    _server.reset()
    yield _server
    _server.reset()


@pytest.fixture
def fast_retry() -> RetryPolicy:
    """Millisecond backoff so retry tests take no noticeable time."""
    return RetryPolicy(
        max_attempts=4, initial_backoff=0.001, max_backoff=0.005, max_retry_after=1.0, deadline=20.0
    )
