"""Subprocess used by the cache backend tests: one cached call against the fake server.

python _cache_backend_worker.py <base_url> <cache> [lock_ttl]

``<cache>`` is a directory or a Redis URL (:func:`attribsdk.cache.open_cache`). Prints "ready",
waits for a line on stdin (so that several workers start their call together), makes one call of
the question "question 0", then prints its JSON (text, cached).
"""

from __future__ import annotations

import json
import sys

import anyio
import anyio.to_thread

from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.cache import CachedModel, is_cache_url, open_cache

PARAMS = GenerationParams(max_tokens=64)


async def main(base_url: str, target: str, lock_ttl: str | None) -> None:
    adapter = OpenAIModel.compatible_from_spec(f"worker-model@{base_url}")
    options = {"lock_ttl": float(lock_ttl)} if lock_ttl and is_cache_url(target) else {}
    async with open_cache(target, **options) as cache:
        model = CachedModel(adapter, cache)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        completion = await model.generate([Message(role="user", content="question 0")], PARAMS)
        print(json.dumps({"text": completion.text, "cached": completion.cached}), flush=True)
    await adapter.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
