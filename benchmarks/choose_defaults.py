"""Choose RoPE-LIME's defaults by measurement on the `tune` split of the HotpotQA dev data.

Sweeps, one factor at a time from the current defaults:
  * the layer whose post-RoPE keys build span embeddings,
  * whether Sparse-K's k counts masked or kept features,
  * (k, c) per bucket of M over the paper's grid.
Reports mean AUROC / IoU per setting and bucket. The chosen values are written into the code
(`DEFAULT_LAYER` in attribsdk/methods/rope_lime.py, `DEFAULT_SCHEDULE` in attribsdk/sampling.py)
by hand, and the figures go into the README. Never run this on the `report` split.

Run: `.venv/bin/python benchmarks/choose_defaults.py --sweep layer --n 40`
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
from _common import BUCKET_ORDER, stratified, write_json

from attribsdk import Explainer, RopeLime
from attribsdk.eval.datasets import load_hotpotqa
from attribsdk.eval.metrics import auroc, iou_at_k
from attribsdk.sampling import SparseK

K_RULES = ["sqrt", "2sqrt", "4sqrt"]
C_RULES = ["min(M,16k)", "M", "min(M,8k)", "0.5M", "0.25M", "min(M,4k)"]


def settings(sweep: str, n_layers: int) -> dict[str, dict[str, Any]]:
    if sweep == "layer":
        layers = sorted({1, 2, 4, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})
        return {f"layer={layer}": {"layer": layer} for layer in layers}
    if sweep == "mode":
        return {f"mode={m}": {"sampler": SparseK(mode=m)} for m in ("mask", "keep")}
    if sweep == "kernel":
        return {f"kernel={k}": {"kernel": k} for k in ("rwmd", "cosine", "none")}
    if sweep == "kc":
        return {f"k={k},c={c}": {"sampler": SparseK(k=k, c=c)} for k in K_RULES for c in C_RULES}
    if sweep == "kc-small":
        return {f"k={k},c={c}": {"sampler": SparseK(k=k, c=c)} for k in K_RULES for c in ("M", "0.5M")}
    if sweep == "target":
        return {f"target={t}": {"target": t} for t in ("kl", "delta_nll")}
    raise SystemExit(f"unknown sweep {sweep}")


async def main(args: argparse.Namespace) -> None:
    pool = (e for e in load_hotpotqa(protocol="paper", split="tune") if e.n_features <= args.max_m)
    examples = stratified(pool, args.n)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    async with Explainer() as ex:
        scorer: Any = await ex.scorer()
        grid = settings(args.sweep, int(scorer.n_layers))
        answers: dict[str, str] = {}
        for i, item in enumerate(examples):
            for name, kw in grid.items():
                res = await ex.explain_prompt(item.prompt, answer=answers.get(item.id), method=RopeLime(**kw))
                answers[item.id] = res.answer
                rows.append(
                    {
                        "setting": name,
                        "bucket": item.bucket,
                        "m": item.n_features,
                        "auroc": auroc(res.attributions, item.gold),
                        "iou": iou_at_k(res.attributions, item.gold),
                        "sequences": res.counts.surrogate_sequences,
                        "seconds": res.timings.total,
                    }
                )
            print(f"  {i + 1}/{len(examples)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["setting"], r["bucket"])].append(r)
        by[(r["setting"], "all")].append(r)
    print(f"\nsweep {args.sweep} on {len(examples)} tune examples: mean AUROC / IoU / sequences")
    header = "| setting | " + " | ".join([*BUCKET_ORDER, "all"]) + " |"
    print(header + "\n|" + "---|" * (len(BUCKET_ORDER) + 2))
    for name in grid:
        cells = []
        for b in [*BUCKET_ORDER, "all"]:
            sel = by.get((name, b), [])
            if not sel:
                cells.append("-")
                continue
            au = statistics.fmean(r["auroc"] for r in sel if r["auroc"] == r["auroc"])
            io = statistics.fmean(r["iou"] for r in sel)
            sq = statistics.fmean(r["sequences"] for r in sel)
            cells.append(f"{au:.3f} / {io:.3f} / {sq:.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    write_json(Path(f"benchmarks/results/choose_{args.sweep}.json"), {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sweep", choices=["layer", "mode", "kernel", "kc", "kc-small", "target"], required=True)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--max-m", type=int, default=10**9, help="only examples with at most this many features")
    anyio.run(main, p.parse_args())
