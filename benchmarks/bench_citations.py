"""Latency of citing one answer with the default surrogate, and how often its citations are gold.

For each of the first ``--n`` HotpotQA dev questions (``report`` split, 10 paragraphs each), the
sources are the two gold paragraphs (id = title); the local SmolLM2 writes the answer once
(not timed as citing), then ``Citer.cite`` (default: leave-one-out ΔNLL, SmolLM2 surrogate,
float32) is timed with torch using 1 and then 2 CPU threads. A citation is gold when its span
overlaps one of HotpotQA's supporting-fact sentences.

Prints seconds per answer (median over the examples) and writes
``benchmarks/results/citations.json``. Run:  python benchmarks/bench_citations.py --n 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import torch
from _common import machine, write_json  # type: ignore[import-not-found]

from attribsdk import Citer
from attribsdk.adapters.base import GenerationParams
from attribsdk.eval.datasets import data_dir, split_of

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hotpotqa_slice.jsonl"


def load(n: int) -> list[dict[str, Any]]:
    """``n`` report-split questions: sources (gold paragraphs) and gold character spans."""
    path = data_dir() / "hotpotqa_dev_distractor.dev.jsonl"
    if not path.is_file():
        path = FIXTURE
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        rows = (json.loads(line) for line in fh)
        for row in islice((r for r in rows if len(r["context"]) == 10 and split_of(r["_id"]) == "report"), n):
            facts = {(t, int(i)) for t, i in row["supporting_facts"]}
            sources, gold = [], {}
            for title, sentences in row["context"]:
                if title not in {t for t, _ in facts}:
                    continue
                text, spans = "", []
                for j, sent in enumerate(sentences):
                    if (title, j) in facts:
                        spans.append((len(text), len(text) + len(sent)))
                    text += sent
                sources.append({"id": title, "text": text})
                gold[title] = spans
            out.append({"id": row["_id"], "question": row["question"], "sources": sources, "gold": gold})
    return out


def is_gold(ex: dict[str, Any], source_id: str, start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in ex["gold"].get(source_id, []))


async def run(n: int, threads: list[int]) -> dict[str, Any]:
    examples = load(n)
    rows: list[dict[str, Any]] = []
    async with Citer(closed="local:smollm2", device="cpu") as citer:
        llm = await citer.explainer.closed_model()
        for ex in examples:  # the answers, once (also loads the model)
            reply = await llm.generate(
                citer.messages(ex["sources"], ex["question"]), GenerationParams(max_tokens=160)
            )
            ex["answer"] = reply.text
        await citer.cite(
            examples[0]["answer"], examples[0]["sources"], query=examples[0]["question"]
        )  # warm-up
        for t in threads:
            torch.set_num_threads(t)
            for ex in examples:
                cits = await citer.cite(ex["answer"], ex["sources"], query=ex["question"])
                assert cits.explanation is not None
                cited = [(c.source_id, c.start, c.end) for c in cits.overall]
                rows.append(
                    {
                        "id": ex["id"],
                        "threads": t,
                        "seconds": cits.timings.total,
                        "explain_s": cits.timings.explain,
                        "fit_s": cits.timings.fit,
                        "features": len(cits.explanation.features),
                        "answer_sentences": len(cits.sentences),
                        "answer_tokens": len(cits.explanation.answer_tokens),
                        "sequences": cits.explanation.counts.surrogate_sequences,
                        "tokens": cits.explanation.counts.surrogate_tokens,
                        "cited": len(cited),
                        "cited_gold": sum(is_gold(ex, *c) for c in cited),
                        "top1_gold": bool(cited) and is_gold(ex, *cited[0]),
                    }
                )
                r = rows[-1]
                print(
                    f"threads {t}  {ex['id']}  {r['seconds']:6.2f} s  M={r['features']:2d}  "
                    f"T={r['answer_tokens']:3d}  cited {r['cited']} (gold {r['cited_gold']})",
                    flush=True,
                )
    summary = {}
    for t in threads:
        mine = [r for r in rows if r["threads"] == t]
        cited = sum(r["cited"] for r in mine)
        summary[t] = {
            "median_s": statistics.median(r["seconds"] for r in mine),
            "mean_features": statistics.mean(r["features"] for r in mine),
            "precision": sum(r["cited_gold"] for r in mine) / cited if cited else None,
            "top1_gold": sum(r["top1_gold"] for r in mine) / len(mine),
            "answers_with_citations": sum(r["cited"] > 0 for r in mine) / len(mine),
        }
    return {"machine": machine(), "n": len(examples), "rows": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/citations.json"))
    args = ap.parse_args()
    result = anyio.run(run, args.n, args.threads)
    write_json(args.out, result)
    for t, s in result["summary"].items():
        prec = "n/a" if s["precision"] is None else f"{s['precision']:.2f}"
        print(
            f"{t} thread(s): {s['median_s']:.2f} s per answer (median of {result['n']}, "
            f"M = {s['mean_features']:.1f} source sentences on average); whole-answer citations "
            f"gold precision {prec}, top-1 gold {s['top1_gold']:.2f}, answers with a citation "
            f"{s['answers_with_citations']:.2f}"
        )


if __name__ == "__main__":
    main()
