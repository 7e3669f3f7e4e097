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
