"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from attribsdk.eval.datasets import BUCKETS, LabeledExample

BUCKET_ORDER = [b[0] for b in BUCKETS]


def stratified(
    examples: Iterable[LabeledExample], n: int, per_bucket: int | None = None
) -> list[LabeledExample]:
    """Up to ``n`` examples spread round-robin over the paper's buckets of M (file order within)."""
    by_bucket: dict[str, list[LabeledExample]] = defaultdict(list)
    for ex in examples:
        by_bucket[ex.bucket].append(ex)
    out: list[LabeledExample] = []
    queues = {b: list(v) for b, v in by_bucket.items()}
    taken: dict[str, int] = defaultdict(int)
    while len(out) < n and any(queues.values()):
        for b in BUCKET_ORDER:
            if queues.get(b) and len(out) < n and (per_bucket is None or taken[b] < per_bucket):
                out.append(queues[b].pop(0))
                taken[b] += 1
        if per_bucket is not None and all(taken[b] >= per_bucket or not queues.get(b) for b in BUCKET_ORDER):
            break
    return out


def mean_std(xs: Sequence[float]) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def bucket_table(rows: list[dict[str, Any]], methods: Sequence[str], metrics: Sequence[str]) -> str:
    """Markdown table: one row per (bucket, method), mean ± std of each metric."""
    head = "| M | method | n | " + " | ".join(metrics) + " | s/expl | seq/s |"
    sep = "|" + "---|" * (len(metrics) + 5)
    lines = [head, sep]
    for b in [*BUCKET_ORDER, "all"]:
        for m in methods:
            sel = [r for r in rows if r["method"] == m and (b == "all" or r["bucket"] == b)]
            if not sel:
                continue
            secs = statistics.fmean(r["seconds"] for r in sel)
            sps = sum(r["sequences"] for r in sel) / max(1e-9, sum(r["scoring_s"] for r in sel))
            vals = " | ".join(mean_std([r[k] for r in sel]) for k in metrics)
            lines.append(f"| {b} | {m} | {len(sel)} | {vals} | {secs:.2f} | {sps:.2f} |")
    return "\n".join(lines)
