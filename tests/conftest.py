"""Test-suite wide settings. No test may reach a model hub."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_store() -> Iterator[Any]:
    """One ModelStore for the whole session, so the shipped SmolLM2 loads once."""
    from attribsdk.scoring.models import ModelStore

    store = ModelStore()
    yield store
    store.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A throw-away redis-server for the session (tests/redis_server.py); skips without the binary
    locally, fails under CI=true."""
    from tests.redis_server import RedisServer, redis_server_binary

    server = RedisServer(redis_server_binary()).start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The session's Redis URL, with every database emptied before the test."""
    redis_server.flush()
    return str(redis_server.url)
