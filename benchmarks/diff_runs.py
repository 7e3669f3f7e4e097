"""How two benchmark runs of the same examples differ: per method, the plausibility metrics of the
examples both runs finished, paired, and how far the attributions moved.

For instance the HotpotQA loader's separator fix (a deleted first sentence no longer leaves a
double space after the paragraph title), checked on the first 10 report examples of three buckets:

    attribsdk bench run --dataset hotpotqa-paper --split report --methods rope-lime rope-lime-loo \\
        --n-per-bucket 10 --bucket 4-5 --bucket 6-8 --bucket 9-11 \\
        --out benchmarks/results/hotpotqa-paper-separator
    .venv/bin/python benchmarks/diff_runs.py benchmarks/results/hotpotqa-paper \\
        benchmarks/results/hotpotqa-paper-separator
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from attribsdk.eval.report import load_rows

METRICS = ("iou", "f1", "auroc")


def _answers(directory: Path) -> dict[str, str]:
    path = directory / "answers.jsonl"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            out[str(record["id"])] = str(record["answer"])
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def diff(old_dir: Path, new_dir: Path) -> list[str]:
    """The lines of the comparison (also returned for tests and notebooks)."""
    old = {(r["id"], r["method"], r["seed"], r["surrogate"]): r for r in load_rows(old_dir)}
    new = {(r["id"], r["method"], r["seed"], r["surrogate"]): r for r in load_rows(new_dir)}
    lines: list[str] = []
    a_old, a_new = _answers(old_dir), _answers(new_dir)
    shared = sorted(set(a_old) & set(a_new))
    if shared:
        same = sum(a_old[i] == a_new[i] for i in shared)
        lines.append(f"closed answers identical: {same} of {len(shared)}")
    methods = sorted({k[1] for k in new})
    lines.append("| method | metric | n | old | new | mean Δ | mean abs Δ | changed |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for method in methods:
        keys = sorted(k for k in new if k[1] == method and k in old)
        for metric in METRICS:
            pairs = [
                (old[k]["metrics"].get(metric), new[k]["metrics"].get(metric))
                for k in keys
                if _finite(old[k]["metrics"].get(metric)) and _finite(new[k]["metrics"].get(metric))
            ]
            if not pairs:
                continue
            before = [float(a) for a, _ in pairs]
            after = [float(b) for _, b in pairs]
            deltas = [b - a for a, b in zip(before, after, strict=True)]
            changed = sum(abs(d) > 1e-9 for d in deltas)
            lines.append(
                f"| {method} | {metric} | {len(pairs)} | {statistics.fmean(before):.3f} | "
                f"{statistics.fmean(after):.3f} | {statistics.fmean(deltas):+.3f} | "
                f"{statistics.fmean(abs(d) for d in deltas):.3f} | {changed} |"
            )
        corr = [
            float(np.corrcoef(old[k]["attributions"], new[k]["attributions"])[0, 1])
            for k in keys
            if len(old[k]["attributions"]) > 1
            and np.std(old[k]["attributions"]) > 0
            and np.std(new[k]["attributions"]) > 0
        ]
        if corr:
            lines.append(
                f"{method}: attributions' Pearson r, old vs new, over {len(corr)} examples: "
                f"median {np.median(corr):.3f}, min {min(corr):.3f}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("old", type=Path, help="the earlier run's directory")
    parser.add_argument("new", type=Path, help="the later run's directory")
    args = parser.parse_args()
    print("\n".join(diff(args.old, args.new)))


if __name__ == "__main__":
    main()
