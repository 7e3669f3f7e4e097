"""Subprocess used by the cache tests: cached calls against the fake server.

python _cache_worker.py run <base_url> <cache_dir> <n>   n distinct calls, "done <i> <key>" after each
python _cache_worker.py one <base_url> <cache_dir>       "ready", then one call, then its JSON
"""

from __future__ import annotations

import json
import sys

import anyio

from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.cache import CachedModel, ResponseCache, cache_key

PARAMS = GenerationParams(max_tokens=64)


def messages(i: int) -> list[Message]:
    return [Message(role="user", content=f"question {i}")]


async def main(mode: str, base_url: str, directory: str, n: int) -> None:
    adapter = OpenAIModel.compatible_from_spec(f"worker-model@{base_url}")
    async with ResponseCache(directory) as cache:
        model = CachedModel(adapter, cache)
        if mode == "run":
            for i in range(n):
                await model.generate(messages(i), PARAMS)
                print(f"done {i} {cache_key(adapter, messages(i), PARAMS)}", flush=True)
        else:
            print("ready", flush=True)
            completion = await model.generate(messages(0), PARAMS)
            print(json.dumps({"text": completion.text, "cached": completion.cached}), flush=True)
    await adapter.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
