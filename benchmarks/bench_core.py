"""RoPE-LIME on the HotpotQA paper protocol with the embedded defaults.

The closed answer is generated once per example (by the first method, Sparse-K) and reused by the
second, so Sparse-K's seconds per explanation include that one closed call (local SmolLM2).

Prints seconds per explanation, scored sequences per second and mean IoU/F1/AUROC by the paper's
buckets of M, for Sparse-K and LOO, on the `report` split of the dev data (configurations were
chosen on the `tune` split). Run: `make bench` or
`.venv/bin/python benchmarks/bench_core.py --n 120`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anyio
from _common import bucket_table, machine, stratified, write_json

from attribsdk import Explainer
from attribsdk.eval.datasets import load_hotpotqa
from attribsdk.eval.metrics import auroc, f1_at_k, iou_at_k

METHODS = {"sparse-k": "rope-lime", "loo": "rope-lime-loo"}


async def main(args: argparse.Namespace) -> None:
    examples = stratified(load_hotpotqa(protocol=args.protocol, split=args.split), args.n)
    rows: list[dict[str, object]] = []
    t_all = time.perf_counter()
    async with Explainer(dtype=args.dtype) as ex:
        for i, item in enumerate(examples):
            answer: str | None = None
            for label in args.methods:
                res = await ex.explain_prompt(
                    item.prompt, answer=answer, method=METHODS[label], seed=args.seed
                )
                answer = res.answer  # one closed call per example, shared by the methods
                rows.append(
                    {
                        "id": item.id,
                        "method": label,
                        "m": item.n_features,
                        "bucket": item.bucket,
                        "closed_s": res.timings.closed,
                        "iou": iou_at_k(res.attributions, item.gold),
                        "f1": f1_at_k(res.attributions, item.gold),
                        "auroc": auroc(res.attributions, item.gold),
                        "seconds": res.timings.total,
                        "scoring_s": res.timings.scoring,
                        "sequences": res.counts.surrogate_sequences,
                        "tokens": res.counts.surrogate_tokens,
                        "closed_calls": res.counts.closed_calls,
                        "answer": res.answer,
                    }
                )
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{len(examples)} examples, {time.perf_counter() - t_all:.0f} s", flush=True)
    table = bucket_table(rows, args.methods, ["iou", "f1", "auroc"])
    print(
        f"\nHotpotQA {args.protocol} protocol, {args.split} split, {len(examples)} examples, "
        f"surrogate smollm2 {args.dtype}, seed {args.seed}\n"
    )
    print(table)
    write_json(Path(args.out), {"args": vars(args), "machine": machine(), "rows": rows, "table": table})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=120)
    p.add_argument("--protocol", choices=["paper", "full"], default="paper")
    p.add_argument("--split", choices=["tune", "report", "all"], default="report")
    p.add_argument("--methods", nargs="+", default=["sparse-k", "loo"], choices=list(METHODS))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/core.json")
    anyio.run(main, p.parse_args())
