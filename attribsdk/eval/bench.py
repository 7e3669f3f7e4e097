"""The benchmark runner: methods × dataset × sampler configurations × surrogates, resumable.

For every selected example the closed model is called **once** (its answer is shared by every
method, configuration, seed and surrogate, and stored in ``answers.jsonl``); then every pending
``(method configuration, seed, surrogate)`` explains that fixed answer, and the row — attributions,
plausibility metrics against the gold labels, optional faithfulness metrics re-scored by the
surrogate, timings and counts — is appended to ``rows.jsonl``. (A faithfulness metric that fails
keeps its row: the message is stored in ``faithfulness_error``.) A row is keyed by
``(example id, method config hash, seed, surrogate)``; an interrupted run restarted with
``resume=True`` skips every finished key and recomputes nothing. Failures go to ``errors.jsonl``
and are retried on the next resume. The report (markdown, JSON, plots; :mod:`.report`) is rendered
from ``rows.jsonl`` at the end, and can be re-rendered any time with ``attribsdk bench report``.

Output directory::

    config.json     the configuration of the latest start
    runs.jsonl      one line per start (time, configuration, rows already done)
    answers.jsonl   closed answers, keyed by (example id, closed model)
    rows.jsonl      finished rows (append-only)
    errors.jsonl    failed units (append-only; retried on resume)
    results.md / results.json / plots/*.png   the report

Seeds are fixed: the sampler of each explanation uses the row's seed, the faithfulness metrics a
seed derived from ``(seed, example id)``, example selection is deterministic (file order within
each bucket of M).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
from pydantic import Field, field_validator

from .. import __version__
from .._strategy import ConfigModel
from .._sync import run_sync
from ..adapters.base import ClosedModel, GenerationParams, Message
from ..errors import ConfigError, InputError, callback_failed
from ..methods import Method, make_method
from ..regression import quiet_underdetermined
from ..sampling import CRule, KRule
from ..views.progress import progress_bar
from .datasets import BUCKETS, LabeledExample, load_dataset, split_of
from .faithfulness import FaithfulnessConfig, evaluate_faithfulness
from .metrics import plausibility

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..scoring.base import Scorer
    from .reference import ReferenceTable
    from .report import ReportPaths

__all__ = [
    "C_RULES",
    "K_RULES",
    "BenchConfig",
    "BenchResult",
    "MethodSpec",
    "arun_benchmark",
    "json_safe",
    "parse_method_specs",
    "row_key",
    "run_benchmark",
    "select_examples",
    "sparse_k_sweep",
]

#: The paper's Sparse-K sweep: k ∈ {√M, 2√M, 4√M} …
K_RULES: tuple[str, ...] = get_args(KRule)
#: … and c ∈ {min(M,16k), M, min(M,8k), 0.5M, 0.25M, min(M,4k)}.
C_RULES: tuple[str, ...] = get_args(CRule)

ROWS_FILE = "rows.jsonl"
ERRORS_FILE = "errors.jsonl"
ANSWERS_FILE = "answers.jsonl"
CONFIG_FILE = "config.json"
RUNS_FILE = "runs.jsonl"

_SAMPLER_KEYS = ("k", "c", "mode", "n_samples")


# -- methods ---------------------------------------------------------------------------------------


class MethodSpec(ConfigModel):
    """One method configuration of a benchmark: a name for tables (``label``), a registered
    method (``"rope-lime"``, ``"rope-lime-loo"``) and its constructor options (e.g.
    ``{"sampler": {"kind": "sparse_k", "k": "2sqrt", "c": "M"}}``)."""

    label: str
    method: str = "rope-lime"
    options: dict[str, Any] = Field(default_factory=dict)

    def build(self) -> Method:
        """The method instance (raises :class:`ConfigError` for unknown names or options)."""
        try:
            return make_method(self.method, **self.options)
        except TypeError as exc:
            raise ConfigError(f"method {self.label!r}: {exc}") from exc

    def config_hash(self) -> str:
        """16 hex digits of SHA-256 over the method's name and full configuration: two specs with
        the same effective configuration share it, whatever their labels."""
        method = self.build()
        blob = json.dumps({"name": method.name, "config": method.config()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sparse_k_sweep(
    method: str = "rope-lime", ks: Sequence[str] = K_RULES, cs: Sequence[str] = C_RULES
) -> list[MethodSpec]:
    """The paper's Sparse-K grid: one :class:`MethodSpec` per ``(k, c)``, labelled
    ``"rope-lime:k=2sqrt,c=M"`` (18 by default)."""
    return [
        MethodSpec(
            label=f"{method}:k={k},c={c}",
            method=method,
            options={"sampler": {"kind": "sparse_k", "k": k, "c": c}},
        )
        for k in ks
        for c in cs
    ]


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_method_specs(specs: Iterable[str]) -> list[MethodSpec]:
    """Method specs from strings, as the CLI takes them.

    * ``"rope-lime"``, ``"rope-lime-loo"`` — a registered method with its defaults;
    * ``"rope-lime:k=2sqrt,c=M"`` — options after a colon: ``k``, ``c``, ``mode``, ``n_samples``
      configure the Sparse-K sampler, ``sampler=loo|uniform|sparse-k`` picks another sampler, any
      other key is a method option (``layer=4``, ``target=delta_nll``, ``kernel=cosine``);
    * ``"sparse-k-sweep"`` — the paper's 18 ``(k, c)`` configurations (:func:`sparse_k_sweep`).

    Commas separate options; ``c`` rules such as ``min(M,16k)`` keep their commas. Duplicate
    labels are dropped.
    """
    out: list[MethodSpec] = []
    for raw in specs:
        text = raw.strip()
        if not text:
            continue
        if text == "sparse-k-sweep":
            out.extend(sparse_k_sweep())
            continue
        name, _, rest = text.partition(":")
        options: dict[str, Any] = {}
        sampler: dict[str, Any] = {}
        for item in _split_options(rest):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"method spec {raw!r}: expected key=value, got {item!r}")
            key, value = key.strip(), value.strip()
            if key in _SAMPLER_KEYS:
                sampler[key] = value if key == "c" and not _is_number(value) else _parse_value(value)
            elif key == "sampler":
                options["sampler"] = value
            else:
                options[key] = _parse_value(value)
        if sampler:
            if isinstance(options.get("sampler"), str) and options["sampler"].replace("-", "_") != "sparse_k":
                raise ConfigError(f"method spec {raw!r}: k, c, mode, n_samples need the sparse-k sampler")
            options["sampler"] = {"kind": "sparse_k", **sampler}
        out.append(MethodSpec(label=text, method=name.strip(), options=options))
    unique: dict[str, MethodSpec] = {}
    for spec in out:
        unique.setdefault(spec.label, spec)
    if not unique:
        raise ConfigError("no methods given")
    return list(unique.values())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_options(text: str) -> list[str]:
    """Split ``a=1,c=min(M,16k)`` at commas outside parentheses."""
    items: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [s for s in (x.strip() for x in items) if s]


# -- configuration ---------------------------------------------------------------------------------


class BenchConfig(ConfigModel):
    """Everything that defines a benchmark run (stored in ``config.json``).

    Selection: ``dataset`` (a name of :data:`~attribsdk.eval.datasets.DATASETS`) read from
    ``data_path`` (default: the shared data) with ``dataset_options``; ``split`` (choose
    configurations on ``"tune"``, report on ``"report"``); at most ``n_per_bucket`` examples per
    bucket of M and ``max_examples`` in all (round-robin over buckets), restricted to ``buckets``.

    Explanations: every ``methods`` entry × ``seeds`` × ``surrogates`` (names or paths, as for
    :class:`~attribsdk.explainer.Explainer`); ``closed`` answers each example once
    (``answer_source="reference"`` uses the dataset's reference answer instead, no closed call).
    ``plausibility_scores`` picks which vector IoU/F1/AUROC rank (``"attributions"``: normalised
    magnitudes, the default; ``"coefficients"``: signed). ``faithfulness`` (off by default) adds the
    metrics of :mod:`~attribsdk.eval.faithfulness`, computed with the row's surrogate on
    ``faithfulness_scores`` (signed coefficients by default: deleting a feature that argues
    against the answer should not count as deleting a relevant one).
    """

    dataset: str
    data_path: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    split: Literal["tune", "report", "all"] = "report"
    n_per_bucket: int | None = Field(default=None, ge=1)
    max_examples: int | None = Field(default=None, ge=1)
    buckets: tuple[str, ...] | None = None
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...] = (0,)
    surrogates: tuple[str, ...] = ("smollm2",)
    closed: str = "local:smollm2"
    answer_source: Literal["closed", "reference"] = "closed"
    max_answer_tokens: int = Field(default=64, ge=1)
    plausibility_scores: Literal["attributions", "coefficients"] = "attributions"
    faithfulness: FaithfulnessConfig | None = None
    faithfulness_scores: Literal["attributions", "coefficients"] = "coefficients"
    concurrency: int = Field(default=2, ge=1)
    device: str = "auto"
    dtype: str = "auto"

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[MethodSpec, ...]) -> tuple[MethodSpec, ...]:
        if not value:
            raise ValueError("at least one method is needed")
        labels = [m.label for m in value]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        return value

    @field_validator("seeds", "surrogates")
    @classmethod
    def _non_empty(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("must be a non-empty list without duplicates")
        return value

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        known = [b[0] for b in BUCKETS]
        if value is not None and any(b not in known for b in value):
            raise ValueError(f"unknown buckets {value}; known: {', '.join(known)}")
        return value


# -- selection -------------------------------------------------------------------------------------


def select_examples(
    examples: Iterable[LabeledExample],
    *,
    n_per_bucket: int | None = None,
    max_examples: int | None = None,
    buckets: Sequence[str] | None = None,
) -> list[LabeledExample]:
    """Deterministic selection: the first ``n_per_bucket`` examples of each bucket of M in file
    order (all when ``None``), restricted to ``buckets``; then, if ``max_examples`` is set, taken
    round-robin over the buckets (smallest M first) until that many. Returned in bucket order."""
    order = [b[0] for b in BUCKETS]
    by_bucket: dict[str, list[LabeledExample]] = {}
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise InputError(f"duplicate example id {ex.id!r}")
        seen.add(ex.id)
        b = ex.bucket
        if buckets is not None and b not in buckets:
            continue
        group = by_bucket.setdefault(b, [])
        if n_per_bucket is None or len(group) < n_per_bucket:
            group.append(ex)
    keys = sorted(by_bucket, key=lambda b: (order.index(b) if b in order else -1, b))
    if max_examples is None:
        return [ex for b in keys for ex in by_bucket[b]]
    picked: dict[str, list[LabeledExample]] = {b: [] for b in keys}
    queues = {b: list(by_bucket[b]) for b in keys}
    total = 0
    while total < max_examples and any(queues.values()):
        for b in keys:
            if queues[b] and total < max_examples:
                picked[b].append(queues[b].pop(0))
                total += 1
    return [ex for b in keys for ex in picked[b]]


# -- storage ---------------------------------------------------------------------------------------


def row_key(example_id: str, method_hash: str, seed: int, surrogate: str) -> str:
    """The resume key of one row."""
    return json.dumps([example_id, method_hash, seed, surrogate])


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only JSONL file; a torn last line (interrupted write) is ignored."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as a line, durably. After a torn last line (a write that was interrupted)
    the record starts on a new line, so the torn text costs only itself."""
    line = json.dumps(json_safe(record), default=str, allow_nan=False) + "\n"
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


# -- running ---------------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What :func:`run_benchmark` did: every row in the directory (old and new), the failures of
    this run, and how many units were computed now versus found finished."""

    out_dir: Path
    rows: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    report: ReportPaths | None = None


#: Settings that change a row's numbers or which rows a table mixes: a directory's rows are
#: resumed only under the same values (methods, seeds and surrogates may be added).
RESULT_SETTINGS = (
    "dataset",
    "data_path",
    "dataset_options",
    "split",
    "answer_source",
    "max_answer_tokens",
    "plausibility_scores",
    "faithfulness",
    "faithfulness_scores",
)


def _method_hashes(methods: Sequence[MethodSpec]) -> dict[str, str]:
    """Label → configuration hash; two labels for one configuration are refused (a row's resume
    key holds the hash, so the second label's rows would never be computed)."""
    hashes: dict[str, str] = {}
    for spec in methods:
        h = spec.config_hash()
        twin = next((label for label, other in hashes.items() if other == h), None)
        if twin is not None:
            raise ConfigError(
                f"methods {twin!r} and {spec.label!r} are the same configuration; keep one of them"
            )
        hashes[spec.label] = h
    return hashes


def _check_resume(
    out: Path,
    config: BenchConfig,
    closed_name: str,
    hashes: Mapping[str, str],
    existing: Sequence[Mapping[str, Any]],
) -> None:
    """Refuse to resume a directory whose rows were computed under other settings: resuming would
    skip work that was never done under these settings, and the report would mix both."""
    config_path = out / CONFIG_FILE
    stored: dict[str, Any] = {}
    # Stored answers count as results too: they were produced under the stored settings.
    if (existing or (out / ANSWERS_FILE).is_file()) and config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{config_path} cannot be read ({exc}); it describes the stored rows") from exc
        stored = loaded if isinstance(loaded, dict) else {}
    now = config.model_dump(mode="json")
    changed = [
        f"{name}: {stored[name]!r} -> {now[name]!r}"
        for name in RESULT_SETTINGS
        if name in stored and stored[name] != now[name]
    ]
    if "closed_name" in stored and stored["closed_name"] != closed_name:
        changed.append(f"closed: {stored['closed_name']!r} -> {closed_name!r}")
    labels = {h: label for label, h in hashes.items()}
    for row in existing:
        label, h = row.get("method"), row.get("method_hash")
        if label in hashes and h != hashes[str(label)]:
            changed.append(f"method {label!r}: its stored rows have another configuration")
            break
        if h in labels and label != labels[str(h)]:
            # Its rows count as done under the new label too: old examples would keep only the
            # old label, new ones only the new, and no example would pair.
            changed.append(f"method {labels[str(h)]!r}: its configuration's rows are stored as {label!r}")
            break
    if changed:
        raise ConfigError(
            f"{out} holds rows computed under other settings ({'; '.join(changed)}); resume with "
            "the settings they were computed with, or pick a new directory"
        )


def _check_examples(
    out: Path,
    selected: Sequence[LabeledExample],
    existing: Sequence[Mapping[str, Any]],
    answers: Sequence[Mapping[str, Any]],
) -> None:
    """Refuse to resume when the dataset now gives an example other prompt parts or gold labels
    than its stored rows and answers were computed from (:attr:`LabeledExample.fingerprint`; a
    changed loader, template or data file). Records written before fingerprints were kept carry
    none and are not compared."""
    now = {ex.id: ex.fingerprint for ex in selected}
    changed = sorted(
        {
            str(r["id"])
            for r in (*existing, *answers)
            if r.get("example_sha") is not None
            and str(r.get("id")) in now
            and r["example_sha"] != now[str(r["id"])]
        }
    )
    if changed:
        shown = ", ".join(repr(i) for i in changed[:3]) + (", …" if len(changed) > 3 else "")
        raise ConfigError(
            f"{out} holds results for {len(changed)} example(s) ({shown}) whose prompt or gold labels "
            "differ from what the dataset gives now (the loader, template or data changed since); "
            "resume with the version that computed them, or pick a new directory"
        )


#: What a row records of the surrogate that computed it. ``device="auto"``/``dtype="auto"``
#: resolve per machine (float32 on a CPU, bfloat16 on a GPU), so a directory resumed elsewhere would
#: otherwise mix rows of different precision in one table.
RUNTIME_FIELDS = ("surrogate_model", "device", "dtype")


async def _surrogate_runtime(explainer: Explainer) -> dict[str, str | None]:
    """The surrogate as it is loaded: its model name, device and weight dtype (``None`` where a
    scorer does not say, e.g. a Ray pool)."""
    scorer = await explainer.scorer()
    return {
        "surrogate_model": str(scorer.name),
        "device": getattr(scorer, "device", None),
        "dtype": getattr(scorer, "dtype", None),
    }


def _check_runtime(
    out: Path, existing: Sequence[Mapping[str, Any]], runtimes: Mapping[str, Mapping[str, str | None]]
) -> None:
    """Refuse to add rows computed by a surrogate loaded differently (another model behind the same
    name, another device or dtype) from the rows already stored under its name. Rows written
    before runtimes were recorded carry none and are not compared."""
    for row in existing:
        stored, now = row.get("runtime"), runtimes.get(str(row.get("surrogate")))
        if not isinstance(stored, Mapping) or now is None:
            continue
        diff = [
            f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in RUNTIME_FIELDS if stored.get(k) != now.get(k)
        ]
        if diff:
            raise ConfigError(
                f"{out} holds rows computed by another load of the surrogate "
                f"(surrogate {row.get('surrogate')!r} ({', '.join(diff)})); resume with the same model, "
                "device and dtype (e.g. device='cpu', dtype='float32'), or pick a new directory"
            )


@dataclass(frozen=True)
class _Unit:
    surrogate: str
    spec: MethodSpec
    method: Method
    method_hash: str
    seed: int


def _derived_seed(seed: int, example_id: str) -> int:
    return int(hashlib.sha256(f"{seed}|{example_id}".encode()).hexdigest()[:8], 16)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def arun_benchmark(
    config: BenchConfig,
    out_dir: str | os.PathLike[str],
    *,
    closed: ClosedModel | None = None,
    surrogates: Mapping[str, str | Scorer] | None = None,
    examples: Sequence[LabeledExample] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    report: bool = True,
    reference: ReferenceTable | str | os.PathLike[str] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> BenchResult:
    """Run (or resume) the benchmark described by ``config`` into ``out_dir``.

    ``closed`` replaces the closed model named by ``config.closed`` (any
    :class:`~attribsdk.adapters.base.ClosedModel`); ``surrogates`` maps a surrogate's row name to
    a name/path or a ready :class:`~attribsdk.scoring.base.Scorer` (default: each name of
    ``config.surrogates``); ``examples`` replaces loading ``config.dataset`` (selection still
    applies). An existing ``rows.jsonl`` requires ``resume=True``, and is resumed only under the
    settings its rows were computed with (:data:`RESULT_SETTINGS`, the closed model, each label's
    method configuration, each surrogate's :data:`RUNTIME_FIELDS` as loaded, each example's
    :attr:`~attribsdk.eval.datasets.LabeledExample.fingerprint`; methods, seeds and surrogates may
    be added); stored answers alone hold the settings too. A failure of one example or
    row is recorded in ``errors.jsonl`` and the run goes on. ``progress`` shows a rich
    progress bar on stderr (``None``: when stderr is a terminal). ``report`` renders the report at
    the end (with ``reference`` points). ``on_row`` is called with each new row; if it raises,
    the run still finishes and a :class:`ConfigError` carrying the :class:`BenchResult` in
    ``partial["result"]`` is raised at the end.
    """
    out = Path(out_dir)
    rows_path = out / ROWS_FILE
    if rows_path.exists() and not resume:
        raise ConfigError(
            f"{out} already holds results; resume them (resume=True / --resume) or pick a new directory"
        )
    out.mkdir(parents=True, exist_ok=True)

    if examples is None:
        source: Iterable[LabeledExample] = load_dataset(
            config.dataset, config.data_path, split=config.split, **config.dataset_options
        )
    else:
        source = [ex for ex in examples if config.split == "all" or split_of(ex.id) == config.split]
    selected = select_examples(
        source, n_per_bucket=config.n_per_bucket, max_examples=config.max_examples, buckets=config.buckets
    )
    if not selected:
        raise InputError(f"no examples selected from {config.dataset!r} (split {config.split!r})")

    surrogate_specs: dict[str, str | Scorer] = (
        dict(surrogates) if surrogates is not None else {name: name for name in config.surrogates}
    )
    if not surrogate_specs:
        raise ConfigError("no surrogates given")
    closed_spec: str | ClosedModel = closed if closed is not None else config.closed
    closed_name = closed_spec if isinstance(closed_spec, str) else closed_spec.name

    hashes = _method_hashes(config.methods)
    units = [
        _Unit(surrogate=s, spec=spec, method=spec.build(), method_hash=hashes[spec.label], seed=seed)
        for s in surrogate_specs
        for spec in config.methods
        for seed in config.seeds
    ]
    existing = _read_jsonl(rows_path)
    _check_resume(out, config, closed_name, hashes, existing)
    _check_examples(out, selected, existing, _read_jsonl(out / ANSWERS_FILE))
    done = {str(r.get("key")) for r in existing}
    pending = {
        ex.id: [u for u in units if row_key(ex.id, u.method_hash, u.seed, u.surrogate) not in done]
        for ex in selected
    }
    n_pending = sum(len(v) for v in pending.values())
    skipped = len(selected) * len(units) - n_pending

    answers = {(str(a["id"]), str(a["closed"])): str(a["answer"]) for a in _read_jsonl(out / ANSWERS_FILE)}
    new_rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    callback_errors: list[Exception] = []
    bar = _progress_bar(n_pending, progress)

    from ..explainer import Explainer, placement_applies
    from ..scoring.models import ModelStore

    store = ModelStore()
    try:
        async with AsyncExitStack() as stack:
            explainers: dict[str, Explainer] = {}
            params = GenerationParams(max_tokens=config.max_answer_tokens, temperature=0.0)
            for name, spec in surrogate_specs.items():
                # A ready scorer (a Ray pool) was placed when it was built.
                loads_by_name = placement_applies(closed_spec, spec)
                explainers[name] = await stack.enter_async_context(
                    Explainer(
                        closed=closed_spec,
                        surrogate=spec,
                        device=config.device if loads_by_name else "auto",
                        dtype=config.dtype if loads_by_name else "auto",
                        store=store,
                        params=params,
                    )
                )
            answerer = next(iter(explainers.values()))
            limiter = anyio.CapacityLimiter(config.concurrency)
            # Loading the surrogates to see how they resolved costs nothing extra when there is
            # work to do (they load for the first row anyway); a finished run loads nothing.
            runtimes: dict[str, dict[str, str | None]] = {}
            if n_pending:
                for name, explainer in explainers.items():
                    runtimes[name] = await _surrogate_runtime(explainer)
                _check_runtime(out, existing, runtimes)
            _record_start(out, config, surrogate_specs, closed_name, runtimes, len(selected), units, skipped)

            def fail(ex: LabeledExample, unit: _Unit | None, exc: BaseException) -> None:
                err: dict[str, Any] = dict.fromkeys(("key", "method", "seed", "surrogate"))
                err["id"] = ex.id
                if unit is not None:
                    err.update(
                        key=row_key(ex.id, unit.method_hash, unit.seed, unit.surrogate),
                        method=unit.spec.label,
                        seed=unit.seed,
                        surrogate=unit.surrogate,
                    )
                err.update(error=type(exc).__name__, message=getattr(exc, "message", str(exc)), at=_now())
                errors.append(err)
                _append(out / ERRORS_FILE, err)

            async def run_example(ex: LabeledExample) -> None:
                todo = pending[ex.id]
                if not todo:
                    return
                async with limiter:
                    # Any failure of one example or row is recorded and the run goes on.
                    try:
                        answer = await _answer(ex, config, answerer, closed_name, answers, out)
                    except Exception as exc:
                        fail(ex, None, exc)
                        bar(len(todo))
                        return
                    for unit in todo:
                        try:
                            explainer = explainers[unit.surrogate]
                            row = await _explain_row(ex, unit, answer, explainer, config, closed_name)
                            row["runtime"] = runtimes[unit.surrogate]
                        except Exception as exc:
                            fail(ex, unit, exc)
                        else:
                            _append(rows_path, row)
                            new_rows.append(row)
                            if on_row is not None:
                                try:
                                    on_row(row)
                                except Exception as exc:  # the run goes on; raised at the end
                                    callback_errors.append(exc)
                        bar(1)

            # The paper's sweep has underdetermined configurations by design; each row records
            # its fit's rank instead of a warning per (N, M).
            with quiet_underdetermined():
                async with anyio.create_task_group() as tg:
                    for ex in selected:
                        tg.start_soon(run_example, ex)
    finally:
        bar(0, close=True)
        await anyio.to_thread.run_sync(store.close)

    result = BenchResult(
        out_dir=out, rows=existing + new_rows, errors=errors, computed=len(new_rows), skipped=skipped
    )
    if report and result.rows:  # nothing to report when every row failed (see result.errors)
        from .report import write_report

        result.report = write_report(out, reference=reference)
    if callback_errors:
        kept = "every row was still computed and written"
        raise callback_failed("on_row", callback_errors, len(new_rows), kept, {"result": result})
    return result


def _record_start(
    out: Path,
    config: BenchConfig,
    surrogate_specs: Mapping[str, str | Scorer],
    closed_name: str,
    runtimes: Mapping[str, Mapping[str, str | None]],
    n_examples: int,
    units: Sequence[_Unit],
    skipped: int,
) -> None:
    """Write ``config.json`` (the latest start's configuration) and append to ``runs.jsonl``."""
    record = config.model_dump(mode="json")
    (out / CONFIG_FILE).write_text(
        json.dumps(
            {
                **record,
                "surrogate_names": list(surrogate_specs),
                "surrogate_runtime": dict(runtimes),
                "closed_name": closed_name,
                "attribsdk": __version__,
            },
            indent=1,
        )
    )
    _append(
        out / RUNS_FILE,
        {
            "started_at": _now(),
            "attribsdk": __version__,
            "examples": n_examples,
            "units": n_examples * len(units),
            "already_done": skipped,
            "config": record,
            "surrogate_runtime": dict(runtimes),
        },
    )


def run_benchmark(config: BenchConfig, out_dir: str | os.PathLike[str], **kwargs: Any) -> BenchResult:
    """Blocking :func:`arun_benchmark` (also where an event loop already runs, e.g. a notebook)."""
    return run_sync(lambda: arun_benchmark(config, out_dir, **kwargs))


async def _answer(
    ex: LabeledExample,
    config: BenchConfig,
    explainer: Explainer,
    closed_name: str,
    answers: dict[tuple[str, str], str],
    out: Path,
) -> str:
    """The example's answer: stored, the reference answer, or one closed call (then stored)."""
    if config.answer_source == "reference":
        if not ex.reference_answer or not ex.reference_answer.strip():
            raise InputError(f"example {ex.id!r} has no reference answer (answer_source='reference')")
        return ex.reference_answer
    key = (ex.id, closed_name)
    if key in answers:
        return answers[key]
    model = await explainer.closed_model()
    messages: list[Message] = list(ex.prompt.render().messages)
    completion = await model.generate(messages, explainer.params)
    text = completion.text
    if not text.strip():
        raise InputError(f"the closed model returned an empty answer for example {ex.id!r}")
    answers[key] = text
    _append(
        out / ANSWERS_FILE,
        {
            "id": ex.id,
            "example_sha": ex.fingerprint,
            "closed": closed_name,
            "answer": text,
            "model": completion.model,
            "finish_reason": completion.finish_reason,
            "input_tokens": completion.usage.input_tokens,
            "output_tokens": completion.usage.output_tokens,
            "cached": completion.cached,
            "at": _now(),
        },
    )
    return text


async def _explain_row(
    ex: LabeledExample,
    unit: _Unit,
    answer: str,
    explainer: Explainer,
    config: BenchConfig,
    closed_name: str,
) -> dict[str, Any]:
    res = await explainer.explain_prompt(
        ex.prompt, answer=answer, method=unit.method, seed=unit.seed, progress=False
    )
    plaus = res.attributions if config.plausibility_scores == "attributions" else res.coefficients
    metrics: dict[str, float] = plausibility(plaus, ex.gold)
    faith_seconds = 0.0
    faith_error: str | None = None
    if config.faithfulness is not None:
        scorer = await explainer.scorer()
        scores = res.coefficients if config.faithfulness_scores == "coefficients" else res.attributions
        fcfg, seed = config.faithfulness, _derived_seed(unit.seed, ex.id)
        t0 = time.perf_counter()
        try:
            faith = await anyio.to_thread.run_sync(
                lambda: evaluate_faithfulness(scorer, ex.prompt, answer, scores, fcfg, seed=seed)
            )
        except Exception as exc:  # keep the explanation and its plausibility metrics; note why
            faith_error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        else:
            metrics.update(faith)
        faith_seconds = time.perf_counter() - t0
    return {
        "key": row_key(ex.id, unit.method_hash, unit.seed, unit.surrogate),
        "id": ex.id,
        "example_sha": ex.fingerprint,
        "dataset": ex.dataset,
        "split": split_of(ex.id),
        "bucket": ex.bucket,
        "m": ex.n_features,
        "gold": list(ex.gold),
        "method": unit.spec.label,
        "method_name": res.method,
        "method_hash": unit.method_hash,
        "method_config": res.config,
        "seed": unit.seed,
        "surrogate": unit.surrogate,
        "closed": closed_name if config.answer_source == "closed" else "reference",
        "answer": answer,
        "metrics": metrics,
        "attributions": res.attributions,
        "coefficients": res.coefficients,
        "r2": res.r2,
        "fit_rank": res.fit_rank,
        "seconds": res.timings.total,
        "scoring_seconds": res.timings.scoring,
        "faithfulness_seconds": faith_seconds,
        "faithfulness_error": faith_error,
        "sequences": res.counts.surrogate_sequences,
        "tokens": res.counts.surrogate_tokens,
        "created_at": _now(),
    }


_progress_bar = functools.partial(progress_bar, description="benchmark", stderr=True)
