"""Render a benchmark directory (``rows.jsonl``) as markdown tables, a JSON file and PNG plots.

* ``results.md`` — per dataset and surrogate: one row per (bucket of M, method) with the mean ± std
  of every metric, the same as median [q1, q3], the published reference points when given, and
  the plots.
* ``results.json`` — the configuration, the aggregates (every :class:`~.metrics.Summary` field)
  and every per-example row.
* ``plots/<dataset>__<surrogate>__<metric>.png`` — the metric's mean (± standard error of the
  mean) against the bucket of M, one line per method, with reference points as black markers.

Rows are grouped by the paper's buckets of M (2-3, 4-5, 6-8, 9-11, 12+); a dataset whose rows all
fall into one bucket (HotpotQA full context: M ≥ 13) is grouped into quantile bins of M instead
(:func:`with_groups`), so "metric vs M" stays informative.

Everything is recomputed from ``rows.jsonl``, so ``attribsdk bench report DIR`` can re-render a
finished or interrupted run. Plots are drawn by :mod:`attribsdk.views.plots`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import InputError
from .bench import CONFIG_FILE, ROWS_FILE, _read_jsonl, json_safe
from .metrics import PLAUSIBILITY_METRICS, Summary, summarize
from .reference import ReferenceTable, load_reference

__all__ = [
    "ReportPaths",
    "aggregate_rows",
    "load_rows",
    "markdown_report",
    "metric_names",
    "paired_rows",
    "with_groups",
    "write_report",
]

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
PLOTS_DIR = "plots"
ALL = "all"

#: Preferred column order of metrics (others follow alphabetically).
_METRIC_ORDER = (
    *PLAUSIBILITY_METRICS,
    "abpc",
    "auc_morf",
    "auc_lerf",
    "soft_nc",
    "soft_ns",
    "pi_soft_nc_auc",
    "pi_soft_ns_auc",
    "topk_drop@1",
    "topk_drop@3",
    "topk_drop@5",
    "lds",
)
_HIDDEN = {"pi_max_gap"}  # diagnostics kept in the JSON, not tabulated or plotted


@dataclass
class ReportPaths:
    """Files written by :func:`write_report`."""

    markdown: Path
    json: Path
    plots: list[Path] = field(default_factory=list)


def load_rows(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a benchmark directory (raises :class:`InputError` when it has none)."""
    path = Path(out_dir) / ROWS_FILE
    if not path.is_file():
        raise InputError(f"{path} not found: not a benchmark directory, or no row finished yet")
    return _read_jsonl(path)


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Metrics present in ``rows``, in table order."""
    present: set[str] = set()
    for r in rows:
        present.update(k for k in r.get("metrics", {}) if k not in _HIDDEN)
    ordered = [m for m in _METRIC_ORDER if m in present]
    return ordered + sorted(present - set(ordered))


def _bucket_key(b: str) -> tuple[int, int, str]:
    """Groups by their smallest M ("1" before "2-3" … "12+", quantile bins "13-30" by their lower
    end), then ``all``; labels without a number after the numbered ones."""
    if b == ALL:
        return (2, 0, b)
    lead = re.match(r"\d+", b)
    return (0, int(lead.group()), b) if lead else (1, 0, b)


def with_groups(rows: Sequence[dict[str, Any]], n_bins: int = 4) -> list[dict[str, Any]]:
    """Copies of ``rows`` with a ``"group"`` label: the paper's bucket of M when a dataset's rows
    span at least two buckets, otherwise (e.g. HotpotQA full context, where every M ≥ 12) up to
    ``n_bins`` bins of M at the quantiles of the examples' M, labelled ``"lo-hi"``."""
    out: list[dict[str, Any]] = []
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_dataset.setdefault(str(r["dataset"]), []).append(r)
    for members in by_dataset.values():
        if len({str(r["bucket"]) for r in members}) >= 2:
            out += [{**r, "group": str(r["bucket"])} for r in members]
            continue
        ms = sorted({int(r["m"]) for r in members})
        # Quantiles over the examples (not over distinct values), so bins hold similar counts.
        per_example = sorted({str(r["id"]): int(r["m"]) for r in members}.values())
        last = len(per_example) - 1
        qs = [per_example[min(last, round(i * last / n_bins))] for i in range(n_bins + 1)]
        edges = sorted(set(qs[:-1])) if len(ms) > 1 else ms
        labels: dict[int, str] = {}
        for m in ms:
            lo = max(e for e in edges if e <= m)
            hi_candidates = [e for e in edges if e > lo]
            hi = (hi_candidates[0] - 1) if hi_candidates else ms[-1]
            labels[m] = f"{lo}-{hi}" if hi > lo else str(lo)
        out += [{**r, "group": labels[int(r["m"])]} for r in members]
    return out


def aggregate_rows(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One record per (dataset, surrogate, method, bucket) — and bucket ``"all"`` — with the
    :class:`~.metrics.Summary` of each metric and the mean seconds / surrogate sequences per
    explanation. Statistics are over examples: an example's rows for several seeds are averaged
    first, so ``n`` counts examples whatever the number of seeds."""
    names = list(metrics) if metrics is not None else metric_names(rows)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        for bucket in (str(r.get("group", r["bucket"])), ALL):
            key = (str(r["dataset"]), str(r["surrogate"]), str(r["method"]), bucket)
            groups.setdefault(key, []).append(r)
    out: list[dict[str, Any]] = []
    for (dataset, surrogate, method, bucket), seeded in groups.items():
        members = per_example(seeded, names)
        out.append(
            {
                "dataset": dataset,
                "surrogate": surrogate,
                "method": method,
                "bucket": bucket,
                "n": len(members),
                "metrics": {m: summarize(r.get("metrics", {}).get(m) for r in members) for m in names},
                "seconds": summarize(r.get("seconds") for r in members),
                "sequences": summarize(r.get("sequences") for r in members),
            }
        )
    return out


def _mean_of(values: Iterable[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(finite) / len(finite) if finite else None


def per_example(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One record per example id: each metric, ``seconds`` and ``sequences`` averaged over the
    example's rows (its seeds), ``nan``/missing values left out (``None`` when all are). A single
    row per example comes back unchanged in value."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_id.setdefault(str(r["id"]), []).append(r)
    out: list[dict[str, Any]] = []
    for example_id, members in by_id.items():
        out.append(
            {
                "id": example_id,
                "metrics": {m: _mean_of(r.get("metrics", {}).get(m) for r in members) for m in metrics},
                "seconds": _mean_of(r.get("seconds") for r in members),
                "sequences": _mean_of(r.get("sequences") for r in members),
            }
        )
    return out


def paired_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows of the examples that every (method, seed) of their (dataset, surrogate) has a row
    for, and how many examples were left out. A partial or resumed run then compares its methods on
    the same examples, each averaged over the same seeds, rather than on whichever examples (or
    seeds) each one finished."""
    methods: dict[tuple[str, str], set[tuple[str, str]]] = {}
    have: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    for r in rows:
        group = (str(r["dataset"]), str(r["surrogate"]))
        run = (str(r["method"]), str(r.get("seed", 0)))
        methods.setdefault(group, set()).add(run)
        have.setdefault((*group, str(r["id"])), set()).add(run)
    complete = {key for key, got in have.items() if got == methods[key[:2]]}
    kept = [r for r in rows if (str(r["dataset"]), str(r["surrogate"]), str(r["id"])) in complete]
    return kept, len(have) - len(complete)


def _method_order(rows: Sequence[dict[str, Any]], config: dict[str, Any] | None) -> list[str]:
    labels = [str(m["label"]) for m in (config or {}).get("methods", []) if isinstance(m, dict)]
    seen = list(dict.fromkeys(labels))
    for r in rows:
        if r["method"] not in seen:
            seen.append(str(r["method"]))
    return seen


def _fmt(s: Summary, stat: str) -> str:
    return s.mean_std() if stat == "mean" else s.median_iqr()


def _cell(s: Summary, stat: str, n: int) -> str:
    """A table cell; when the metric is undefined for some examples (AUROC where every feature
    is gold), the number of examples it is over follows in parentheses."""
    text = _fmt(s, stat)
    return text if s.n == n else f"{text} (n={s.n})"


def markdown_report(
    rows: Sequence[dict[str, Any]],
    *,
    config: dict[str, Any] | None = None,
    reference: ReferenceTable | None = None,
    plots: Sequence[Path] = (),
    base: Path | None = None,
    left_out: int = 0,
) -> str:
    """The markdown text of ``results.md``; ``left_out``: examples :func:`paired_rows` removed."""
    names = metric_names(rows)
    rows = with_groups(rows)
    aggs = aggregate_rows(rows, names)
    methods = _method_order(rows, config)
    lines = ["# Benchmark results", ""]
    if config:
        closed = config.get("closed_name", config.get("closed"))
        faith = ""
        if config.get("faithfulness"):
            faith = f", faithfulness on `{config.get('faithfulness_scores')}`"
        lines += [
            f"Dataset `{config.get('dataset')}` (split `{config.get('split')}`), closed model `{closed}`, "
            f"answers from `{config.get('answer_source')}`, seeds {config.get('seeds')}, plausibility on "
            f"`{config.get('plausibility_scores')}`{faith}.",
            "",
        ]
    lines += [
        "Cells are mean ± std over examples (sample std), then median [q1, q3]; `n` counts examples "
        "(several seeds of one example are averaged first; `(n=…)` after a cell: the metric is "
        "undefined for the other examples, e.g. AUROC when every feature is gold). "
        "`s/expl` is wall-clock seconds per explanation, `seq/expl` surrogate sequences per explanation.",
        "",
    ]
    if left_out:
        lines += [
            f"Paired: {left_out} example{'s' if left_out != 1 else ''} that not every method has "
            f"finished (yet) {'is' if left_out == 1 else 'are'} left out, so every method is compared "
            "on the same examples "
            "(`attribsdk bench report --unpaired` keeps them).",
            "",
        ]
    for dataset, surrogate in dict.fromkeys((a["dataset"], a["surrogate"]) for a in aggs):
        sel = [a for a in aggs if a["dataset"] == dataset and a["surrogate"] == surrogate]
        sel.sort(
            key=lambda a: (
                _bucket_key(a["bucket"]),
                methods.index(a["method"]) if a["method"] in methods else len(methods),
            )
        )
        lines += [f"## {dataset} — surrogate `{surrogate}`", ""]
        plaus_cols = [m for m in names if m in PLAUSIBILITY_METRICS]
        faith_cols = [m for m in names if m not in PLAUSIBILITY_METRICS]
        column_sets = [
            (c, t) for c, t in ((plaus_cols, "gold labels"), (faith_cols, "faithfulness (surrogate)")) if c
        ]
        for stat, title in (("mean", "Mean ± std"), ("median", "Median [q1, q3]")):
            for j, (cols, what) in enumerate(column_sets):
                lines += [f"### {title} — {what}", ""]
                timing = stat == "mean" and j == 0
                head = ["M", "method", "n", *cols] + (["s/expl", "seq/expl"] if timing else [])
                lines.append("| " + " | ".join(head) + " |")
                lines.append("|" + "---|" * len(head))
                for a in sel:
                    values = [_cell(a["metrics"][m], stat, a["n"]) for m in cols]
                    cells = [a["bucket"], a["method"], str(a["n"]), *values]
                    if timing:
                        cells += [
                            f"{a['seconds'].mean:.2f}" if a["seconds"].n else "n/a",
                            f"{a['sequences'].mean:.1f}" if a["sequences"].n else "n/a",
                        ]
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
        refs = reference.select(dataset=dataset) if reference else []
        if refs:
            lines += [
                "### Published reference points",
                "",
                "| M | method | metric | value | source |",
                "|---|---|---|---|---|",
            ]
            for ref in sorted(refs, key=lambda p: (_bucket_key(p.bucket), p.method, p.metric)):
                value = f"{ref.value:.3f}" + (f" ± {ref.std:.3f}" if ref.std is not None else "")
                lines.append(f"| {ref.bucket} | {ref.method} | {ref.metric} | {value} | {ref.citation} |")
            lines.append("")
        mine = [p for p in plots if p.name.startswith(f"{_slug(dataset)}__{_slug(surrogate)}__")]
        if mine:
            lines += ["### Plots", ""]
            for p in mine:
                rel = os.path.relpath(p, base) if base is not None else str(p)
                lines.append(f"![{p.stem}]({rel})")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _plot(
    rows: Sequence[dict[str, Any]],
    dataset: str,
    surrogate: str,
    metric: str,
    methods: Sequence[str],
    reference: ReferenceTable | None,
    path: Path,
) -> bool:
    """Write one metric-vs-M plot (drawn by :func:`attribsdk.views.plots.plot_metric_vs_m`);
    ``False`` (nothing written) when no method has a value for ``metric``."""
    sel = [r for r in rows if r["dataset"] == dataset and r["surrogate"] == surrogate]
    buckets = sorted({str(r["group"]) for r in sel}, key=_bucket_key)
    refs = reference.select(dataset=dataset, metric=metric) if reference else []
    buckets += sorted({p.bucket for p in refs if p.bucket != ALL and p.bucket not in buckets})
    buckets.sort(key=_bucket_key)
    xpos = {b: i for i, b in enumerate(buckets)}
    series: dict[str, tuple[list[float], list[float], list[float]]] = {}
    n_methods = max(1, len(methods))
    for j, method in enumerate(methods):
        xs: list[float] = []
        ys: list[float] = []
        es: list[float] = []
        for b in buckets:
            members = per_example([r for r in sel if r["method"] == method and r["group"] == b], [metric])
            s = summarize(r["metrics"][metric] for r in members)
            if s.n:
                xs.append(xpos[b] + (j - (n_methods - 1) / 2) * 0.06)
                ys.append(s.mean)
                es.append(0.0 if math.isnan(s.sem) else s.sem)
        if xs:
            series[method] = (xs, ys, es)
    if not series:
        return False
    from ..views.plots import plot_metric_vs_m

    plot_metric_vs_m(
        buckets,
        series,
        path,
        references=[(float(xpos[p.bucket]), p.value, p.citation) for p in refs if p.bucket in xpos],
        metric=metric,
        title=f"{dataset} · {metric} (mean ± s.e.m.) · surrogate {surrogate}",
    )
    return True


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    reference: ReferenceTable | str | os.PathLike[str] | None = None,
    plots: bool = True,
    paired: bool = True,
) -> ReportPaths:
    """(Re)write ``results.md``, ``results.json`` and ``plots/`` of a benchmark directory.

    ``reference`` is a :class:`~.reference.ReferenceTable` or a JSON file of reference points
    (:func:`~.reference.load_reference`); the built-in points are always included. ``paired``:
    tables and plots use only the examples every method finished (:func:`paired_rows`);
    ``results.json`` keeps every row either way.
    """
    out = Path(out_dir)
    all_rows = load_rows(out)
    rows, left_out = paired_rows(all_rows) if paired else (all_rows, 0)
    config_path = out / CONFIG_FILE
    config: dict[str, Any] | None = json.loads(config_path.read_text()) if config_path.is_file() else None
    if isinstance(reference, ReferenceTable):
        refs = load_reference() + reference
    else:
        refs = load_reference(reference)
    names = metric_names(rows)
    methods = _method_order(rows, config)
    grouped = with_groups(rows)
    plot_paths: list[Path] = []
    if plots:
        for dataset, surrogate in dict.fromkeys((str(r["dataset"]), str(r["surrogate"])) for r in rows):
            for metric in names:
                path = out / PLOTS_DIR / f"{_slug(dataset)}__{_slug(surrogate)}__{_slug(metric)}.png"
                if _plot(grouped, dataset, surrogate, metric, methods, refs, path):
                    plot_paths.append(path)
    md_path = out / RESULTS_MD
    md_path.write_text(
        markdown_report(rows, config=config, reference=refs, plots=plot_paths, base=out, left_out=left_out)
    )
    aggs = [
        {
            **a,
            "metrics": {m: s.to_dict() for m, s in a["metrics"].items()},
            "seconds": a["seconds"].to_dict(),
            "sequences": a["sequences"].to_dict(),
        }
        for a in aggregate_rows(grouped, names)
    ]
    json_path = out / RESULTS_JSON
    payload = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config,
        "metrics": names,
        "methods": methods,
        "aggregates": aggs,
        "paired": paired,
        "left_out_examples": left_out,
        "reference": refs.to_json(),
        "rows": all_rows,
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(json_safe(payload), indent=1, default=str, allow_nan=False))
    tmp.replace(json_path)
    return ReportPaths(markdown=md_path, json=json_path, plots=plot_paths)
