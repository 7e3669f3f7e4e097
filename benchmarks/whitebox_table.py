"""One table of every method on several benchmark runs: plausibility, faithfulness and time.

    python benchmarks/whitebox_table.py benchmarks/results/whitebox-hotpotqa-paper \\
        benchmarks/results/whitebox-mmlu-words benchmarks/results/whitebox-eraser-movies

Reads each run's ``rows.jsonl`` (written by ``attribsdk bench run``) and prints a markdown table:
per dataset and method, the mean over examples of IoU, F1, AUROC (gold labels), π-Soft-NC and
π-Soft-NS AUC and ABPC (faithfulness, higher is better for all), and the method's own seconds per
example (faithfulness scoring excluded). Only examples that every method of the run finished are
counted (``n``), so a partial run still compares methods on the same examples; a metric that is
undefined for an example (e.g. AUROC when every feature is gold) is left out of that mean.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

COLUMNS = (
    ("iou", "IoU"),
    ("f1", "F1"),
    ("auroc", "AUROC"),
    ("pi_soft_nc_auc", "π-Soft-NC AUC"),
    ("pi_soft_ns_auc", "π-Soft-NS AUC"),
    ("abpc", "ABPC"),
)


def _mean(values: list[float]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return f"{sum(finite) / len(finite):.3f}" if finite else "–"


def table(runs: list[Path]) -> str:
    head = ["dataset", "method", "n", *(label for _, label in COLUMNS), "s/example"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines() if line.strip()]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        done = {m: {r["id"] for r in rows if r["method"] == m} for m in methods}
        complete = set.intersection(*done.values()) if done else set()
        for method in methods:
            mine = [r for r in rows if r["method"] == method and r["id"] in complete]
            cells = [_mean([r["metrics"].get(key) for r in mine]) for key, _ in COLUMNS]
            secs = _mean([r["seconds"] for r in mine])
            lead = f"| {mine[0]['dataset']} | {method} | {len(mine)} | "
            lines.append(lead + " | ".join(cells) + f" | {secs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(table([Path(a) for a in sys.argv[1:]]))
