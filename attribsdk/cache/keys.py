"""Cache keys: SHA-256 of the canonical JSON of the final request.

The request description comes from the adapter (:func:`attribsdk.adapters.wrappers.describe_request`):
provider, endpoint, model, every parameter that changes the output and, for OpenAI-compatible
servers, the base URL. It never holds credentials or timeouts. The sample index and a key-format
version are added here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..adapters.base import ClosedModel, GenerationParams, Message
from ..adapters.wrappers import describe_request
from ..errors import ConfigError

__all__ = ["KEY_VERSION", "cache_key", "canonical_json", "request_key"]

#: Bumped whenever the key derivation changes, so old entries are simply never hit.
KEY_VERSION = 1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 text, NaN/Infinity refused."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a cache key request must be plain JSON data: {exc}") from None


def request_key(request: dict[str, Any], *, sample_index: int = 0) -> str:
    """Hex SHA-256 of the canonical JSON of ``request`` plus ``sample_index``."""
    payload = {"key_version": KEY_VERSION, "request": request, "sample_index": sample_index}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def cache_key(model: ClosedModel, messages: list[Message], params: GenerationParams) -> str:
    """The cache key of calling ``model`` with ``messages`` and ``params``."""
    return request_key(describe_request(model, messages, params), sample_index=params.sample_index)
