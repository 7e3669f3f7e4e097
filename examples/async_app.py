"""Explain answers inside an async app: concurrent requests, one shared Explainer, a budget.

A small "service" answers three questions at once, each with its own context, and explains every
answer: which sentences of the context it was based on. All closed calls go through one
:class:`~attribsdk.cost.Budget` (at most 3 calls and 1 cent); a fourth request, over budget, is
refused before anything is sent. The app runs on anyio, so it works under asyncio and trio alike.

Runs offline: the "closed" model is the packaged SmolLM2 running locally, priced as if gpt-4o-mini
had answered (so the dollar figures mean something). To explain a real closed model's answers,
change ONE line -- CLOSED below -- and set your key:

    CLOSED = "openai:gpt-4o-mini"                 # OPENAI_API_KEY
    CLOSED = "anthropic:claude-3-5-haiku-latest"  # ANTHROPIC_API_KEY

Run:  python examples/async_app.py [OUT_DIR]     (OUT_DIR: also write explanations.html there)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from attribsdk import Explainer, Explanation, GenerationParams
from attribsdk.compare import price_of
from attribsdk.cost import Budget, Pricing
from attribsdk.errors import BudgetExceeded
from attribsdk.views.html import to_html_many

CLOSED = "local:smollm2"  # ← the one line to change: "openai:gpt-4o-mini", "anthropic:..."

REQUESTS = [
    (
        "What is the capital of France?",
        "Bananas are yellow. The capital of France is Paris. Dogs like to play fetch.",
    ),
    (
        "Who wrote Hamlet?",
        "Goethe wrote Faust. Hamlet was written by William Shakespeare. Paris is in France.",
    ),
    ("What colour is the sky?", "Grass is green. The sky is blue. Snow is white."),
]


async def handle(ex: Explainer, i: int, question: str, context: str, out: list[Explanation | None]) -> None:
    """One request of the app: answer the question and explain the answer."""
    t0 = time.perf_counter()
    out[i] = await ex.explain(question, context, features="sentences")
    print(f"  request {i + 1} done in {time.perf_counter() - t0:.1f} s")


async def main(out_dir: Path | None) -> None:
    # Offline, every call is priced as if gpt-4o-mini had answered; with a real model, drop this.
    pricing = (
        Pricing(overrides={CLOSED: price_of("openai:gpt-4o-mini")}) if CLOSED.startswith("local:") else None
    )
    budget = Budget(max_calls=3, max_usd=0.01)
    params = GenerationParams(max_tokens=32, temperature=0.0)
    # cache=False: with a real provider the disk cache would answer a second run for free, and the
    # budget (which counts paid calls) would then let the fourth request through.
    async with Explainer(
        closed=CLOSED, budget=budget, pricing=pricing, params=params, max_concurrency=2, cache=False
    ) as ex:
        print(f"explaining {len(REQUESTS)} answers concurrently with {ex!r}")
        results: list[Explanation | None] = [None] * len(REQUESTS)
        async with anyio.create_task_group() as tg:
            for i, (question, context) in enumerate(REQUESTS):
                tg.start_soon(handle, ex, i, question, context, results)

        for (question, _), res in zip(REQUESTS, results, strict=True):
            assert res is not None
            print(f"\nQ: {question}\n{res.table()}")
            supports = max(res.ranked(), key=lambda r: r.coefficient)
            print(f"-> most supporting sentence: {supports.feature.text!r}")

        # The budget covers the whole app: a fourth answer would exceed max_calls and is refused.
        try:
            await ex.explain("What do bees make?", "Cows give milk. Bees make honey. Spiders spin webs.")
        except BudgetExceeded as exc:
            print(f"\nrefused, nothing sent: {exc.message}")

        print(f"\ncost report: {ex.cost_report().summary()}")

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        page = out_dir / "explanations.html"
        done = [r for r in results if r is not None]
        page.write_text(to_html_many(done, labels=[q for q, _ in REQUESTS]), encoding="utf-8")
        print(f"wrote {page}")


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else None)
