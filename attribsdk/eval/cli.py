"""``attribsdk bench``: run the evaluation benchmark and render its report.

Mounted on the main CLI as ``app.add_typer(bench_app, name="bench")``. Examples::

    attribsdk bench run --dataset hotpotqa-paper --methods rope-lime rope-lime-loo \\
        --n-per-bucket 100 --out results/hotpotqa-paper
    attribsdk bench run --dataset hotpotqa-paper --split tune --methods sparse-k-sweep --out sweep
    attribsdk bench run ... --resume          # continue an interrupted run
    attribsdk bench run ... --ray-address auto --ray-actors 4   # score on a Ray cluster
    attribsdk bench report results/hotpotqa-paper
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from .._cli_common import fail as _fail
from .._cli_common import guard

_INTERRUPTED = "interrupted; finished rows are kept, continue with --resume"

app = typer.Typer(
    name="bench",
    help="Benchmark attribution methods on labelled data (tables, JSON, plots; resumable).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


_METHODS_HELP = (
    "Method specs, space separated or repeated: rope-lime, rope-lime-loo, 'rope-lime:k=2sqrt,c=M', "
    "sparse-k-sweep (the paper's 18 (k, c) configurations)."
)
_FAITH_HELP = "Faithfulness metrics (repeatable): abpc soft pi_soft topk lds, or 'all'. Off by default."

_DATASET_HELP = "hotpotqa-paper | hotpotqa-full | mmlu-words | eraser-movies | jsonl"
Dataset = Annotated[str, typer.Option(help=_DATASET_HELP)]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output directory (rows, answers, report).")]
Methods = Annotated[list[str] | None, typer.Option("--methods", "-m", help=_METHODS_HELP)]
DataPath = Annotated[Path | None, typer.Option(help="Dataset file (default: shared data; needed for jsonl).")]
Split = Annotated[str, typer.Option(help="tune | report | all (choose configurations on tune).")]
PerBucket = Annotated[int | None, typer.Option(help="At most this many examples per bucket of M.")]
MaxN = Annotated[int | None, typer.Option("--n", help="At most this many examples in all (round-robin).")]
Buckets = Annotated[list[str] | None, typer.Option(help="Only these buckets (repeatable): 2-3 … 12+.")]
Surrogates = Annotated[list[str] | None, typer.Option(help="Surrogate(s) (repeatable; default smollm2).")]
Closed = Annotated[str, typer.Option(help="Closed model answering each example once.")]
Answers = Annotated[str, typer.Option(help="closed | reference (the dataset's reference answers).")]
Seeds = Annotated[list[int] | None, typer.Option(help="Sampler seed(s) (repeatable; default 0).")]
Faith = Annotated[list[str] | None, typer.Option(help=_FAITH_HELP)]
SoftDraws = Annotated[int, typer.Option(help="Bernoulli draws for Soft-NC/NS.")]
PiDraws = Annotated[int, typer.Option(help="Bernoulli draws per π for π-Soft-NC/NS.")]
LdsMasks = Annotated[int, typer.Option(help="Random masks for LDS.")]
DeletionSteps = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Deletion curves at fractions 0, 1/S, ..., 1 of the features (GiLOT: 10) instead of every k.",
    ),
]
Features = Annotated[str | None, typer.Option(help="eraser-movies: tokens | words.")]
MaxTokens = Annotated[int | None, typer.Option(help="eraser-movies: first N tokens (default 200; 0 = all).")]
PlausOn = Annotated[str, typer.Option(help="attributions | coefficients (ranked by IoU/F1/AUROC).")]
Concurrency = Annotated[int, typer.Option(help="Examples in flight at once.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | mps")]
Dtype = Annotated[
    str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16")
]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished rows.")]
Reference = Annotated[Path | None, typer.Option(help="JSON file of published reference points.")]
ShowProgress = Annotated[bool, typer.Option(help="Show a progress bar.")]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="Score on Ray actors: 'local' (start a local cluster), 'auto', host:6379 or ray://host:10001 "
        "(pip install 'attribsdk\\[ray]'). Closed calls stay in this process."
    ),
]
RayActors = Annotated[
    int | None, typer.Option(min=1, help="Ray actors per surrogate (default: as many as fit).")
]
RayGpus = Annotated[float, typer.Option(min=0, help="GPUs per Ray actor (0: CPU actors).")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks.")]


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    dataset: Dataset,
    out: OutDir,
    methods: Methods = None,
    data: DataPath = None,
    split: Split = "report",
    n_per_bucket: PerBucket = None,
    n: MaxN = None,
    bucket: Buckets = None,
    surrogate: Surrogates = None,
    closed: Closed = "local:smollm2",
    answers: Answers = "closed",
    seed: Seeds = None,
    faithfulness: Faith = None,
    soft_draws: SoftDraws = 20,
    pi_draws: PiDraws = 10,
    lds_masks: LdsMasks = 32,
    deletion_steps: DeletionSteps = None,
    features: Features = None,
    max_tokens: MaxTokens = None,
    plausibility_on: PlausOn = "attributions",
    concurrency: Concurrency = 2,
    device: Device = "auto",
    dtype: Dtype = "auto",
    resume: Resume = False,
    reference: Reference = None,
    progress: ShowProgress = True,
    ray_address: RayAddress = None,
    ray_actors: RayActors = None,
    ray_gpus_per_actor: RayGpus = 0,
    debug: Debug = False,
) -> None:
    """Run (or resume) a benchmark and write results.md, results.json and plots/ into --out."""

    def go() -> None:
        from .bench import BenchConfig, parse_method_specs, run_benchmark
        from .faithfulness import FAITHFULNESS_METRICS, FaithfulnessConfig

        specs = [*(methods or []), *ctx.args]
        if not specs:
            _fail("give at least one method: --methods rope-lime rope-lime-loo")
        if deletion_steps is not None and not faithfulness:
            _fail("--deletion-steps applies to deletion curves: add --faithfulness (e.g. abpc)")
        if ray_address is None and (ray_actors is not None or ray_gpus_per_actor):
            _fail("--ray-actors and --ray-gpus-per-actor apply with --ray-address")
        options: dict[str, Any] = {}
        if features is not None:
            options["granularity"] = features
        if max_tokens is not None:
            options["max_tokens"] = max_tokens or None
        faith = None
        if faithfulness:
            names = list(FAITHFULNESS_METRICS) if "all" in faithfulness else list(dict.fromkeys(faithfulness))
            steps = deletion_steps
            fractions = None if steps is None else tuple(i / steps for i in range(steps + 1))
            faith = FaithfulnessConfig(
                metrics=tuple(names),
                soft_draws=soft_draws,
                pi_draws=pi_draws,
                lds_masks=lds_masks,
                fractions=fractions,
            )
        fields: dict[str, Any] = {
            "dataset": dataset,
            "data_path": str(data) if data is not None else None,
            "dataset_options": options,
            "split": split,
            "n_per_bucket": n_per_bucket,
            "max_examples": n,
            "buckets": tuple(bucket) if bucket else None,
            "methods": tuple(parse_method_specs(specs)),
            "seeds": tuple(seed or (0,)),
            "surrogates": tuple(surrogate or ("smollm2",)),
            "closed": closed,
            "answer_source": answers,
            "plausibility_scores": plausibility_on,
            "faithfulness": faith,
            "concurrency": concurrency,
            "device": device,
            "dtype": dtype,
        }
        config = BenchConfig(**fields)
        with contextlib.ExitStack() as stack:
            scorers: dict[str, Any] | None = None
            if ray_address is not None:
                from ..scoring.ray import RayScorer

                scorers = {}
                for name in config.surrogates:
                    pool = RayScorer(
                        name,
                        address=ray_address,
                        num_actors=ray_actors,
                        num_gpus_per_actor=ray_gpus_per_actor,
                        device=device,
                        dtype=dtype,
                    )
                    scorers[name] = stack.enter_context(pool)
                    typer.echo(f"{name}: scoring on {pool.num_actors} Ray actor(s)")
            result = run_benchmark(
                config, out, resume=resume, progress=progress, reference=reference, surrogates=scorers
            )
        summary = f"{result.computed} rows computed, {result.skipped} already done"
        if result.errors:
            summary += f", {len(result.errors)} failed (see {out / 'errors.jsonl'})"
        typer.echo(summary)
        if result.report is not None:
            typer.echo(f"report: {result.report.markdown}")
        if result.errors and not result.rows:  # nothing to report at all
            first = result.errors[0]
            _fail(f"every row failed; first: {first.get('error')}: {first.get('message')}", code=1)

    guard(go, debug=debug, interrupted=_INTERRUPTED)


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="A benchmark output directory.")],
    reference: Reference = None,
    plots: Annotated[bool, typer.Option(help="Render PNG plots.")] = True,
    paired: Annotated[
        bool,
        typer.Option(
            "--paired/--unpaired",
            help="Compare methods on the examples every method finished (--unpaired: all rows, "
            "e.g. of a run still in progress).",
        ),
    ] = True,
    debug: Debug = False,
) -> None:
    """Re-render results.md, results.json and plots/ from a directory's rows.jsonl."""

    def go() -> None:
        from .report import write_report

        paths = write_report(out, reference=reference, plots=plots, paired=paired)
        typer.echo(f"wrote {paths.markdown}, {paths.json} and {len(paths.plots)} plots")

    guard(go, debug=debug, interrupted=_INTERRUPTED)
