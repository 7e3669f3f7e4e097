"""RAG with citations: retrieve HotpotQA paragraphs for a question, answer from them, cite them.

Runs offline on the embedded defaults: the packaged SmolLM2 writes the answer (the "LLM" of this
RAG pipeline) and, as the surrogate, finds the retrieved sentences the answer is based on -- per
answer sentence, with exact character offsets. Citing makes no extra LLM call. To answer with a
paid model, change ONE line -- ``LLM`` -- and set your key:

    LLM = "openai:gpt-4o-mini"                  # OPENAI_API_KEY
    LLM = "anthropic:claude-3-5-haiku-latest"   # ANTHROPIC_API_KEY

Run:  python examples/rag_citations.py [N]     (the first N questions, default 1)
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import anyio

from attribsdk import Citer, with_citations
from attribsdk.adapters.base import GenerationParams
from attribsdk.eval.datasets import data_dir

LLM = "local:smollm2"  # ← the one line to change: "openai:gpt-4o-mini", "anthropic:claude-3-5-haiku-latest"

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hotpotqa_slice.jsonl"
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by did do does for from had has have he her his how in is it its of on or "
        "she that the their to was were what when where which who whom whose why with",
    )
)


def load_questions(n: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """The first ``n`` HotpotQA dev questions with their 10 paragraphs (id = title), from the
    shared data folder, or from the test fixture when it is absent."""
    path = data_dir() / "hotpotqa_dev_distractor.dev.jsonl"
    if not path.is_file():
        path = FIXTURE
    with path.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in islice(fh, n)]
    return [
        (
            row["question"],
            [{"id": title, "text": "".join(sentences).strip()} for title, sentences in row["context"]],
        )
        for row in rows
    ]


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", text.lower()) if w not in STOPWORDS]


def retrieve(question: str, paragraphs: list[dict[str, Any]], k: int = 3) -> list[dict[str, Any]]:
    """The ``k`` best paragraphs by BM25 (k1 = 1.2, b = 0.75) over title and text: a search engine
    in a few lines."""
    bags = [Counter(words(p["id"] + " " + p["text"])) for p in paragraphs]
    mean_len = sum(b.total() for b in bags) / len(bags)

    def idf(w: str) -> float:
        df = sum(w in b for b in bags)
        return math.log(1 + (len(bags) - df + 0.5) / (df + 0.5))

    def bm25(b: Counter[str]) -> float:
        norm = 1.2 * (0.25 + 0.75 * b.total() / mean_len)
        return sum(idf(w) * b[w] * 2.2 / (b[w] + norm) for w in set(words(question)) if w in b)

    scores = [bm25(b) for b in bags]
    return [paragraphs[i] for i in sorted(range(len(paragraphs)), key=lambda i: -scores[i])[:k]]


async def main(n: int) -> None:
    # The citer owns the surrogate; closed=LLM also gives the pipeline its LLM (same model store).
    async with Citer(closed=LLM) as citer:
        llm = await citer.explainer.closed_model()

        @with_citations(citer, sources="docs", query="question")
        async def answer(question: str, docs: list[dict[str, Any]]) -> str:
            """The RAG step: ask the LLM with the retrieved documents. citer.messages() is the prompt
            the surrogate re-reads, so the citations explain the prompt the answer came from."""
            reply = await llm.generate(citer.messages(docs, question), GenerationParams(max_tokens=160))
            return reply.text

        for question, paragraphs in load_questions(n):
            docs = retrieve(question, paragraphs)
            result = await answer(question, docs)
            cits = result.citations
            print(f"Question: {question}")
            print(f"Retrieved: {', '.join(d['id'] for d in docs)}")
            print(f"Answer: {cits.annotated().strip()}")
            for s in cits.sentences:
                print(f'  "{s.text}"')
                for c in s.citations:
                    print(f'    [{c.source_id}] "{c.text}"  (confidence {c.confidence:.2f})')
                if not s.citations:
                    print("    (no retrieved sentence supports it)")
            assert cits.explanation is not None
            print(
                f"Citing took {cits.timings.total:.1f} s: {len(cits.explanation.features)} source sentences, "
                f"{cits.explanation.counts.surrogate_sequences} surrogate sequences, no LLM call\n"
            )
        report = citer.explainer.cost_report()
        print(f"LLM calls: {report.closed_calls} ({LLM}), cost ${report.cost_usd or 0:.6f}")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 1)
