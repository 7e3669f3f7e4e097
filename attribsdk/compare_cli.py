"""``attribsdk compare``: RoPE-LIME vs the closed-loop baselines, cost and quality side by side.

A typer sub-app; mount it on the main CLI with ``app.add_typer(compare_app)`` -- typer then
exposes its single ``compare`` command directly -- or register the command itself with
``app.command("compare")(compare_cli.compare)``. Examples::

    attribsdk compare --n 5 --price-as openai:gpt-4o-mini --out results/compare      # offline
    attribsdk compare --closed openai:gpt-4o-mini --n 20 --out results/compare-real  # real calls
    attribsdk compare --n 50 --ray-address auto --ray-actors 4 --out results/compare  # Ray actors
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._cli_common import fail, guard

app = typer.Typer(
    help="Compare RoPE-LIME with closed-loop baselines: closed calls, dollars, time, quality.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("compare")
def compare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (compare.json, .png, .html).")],
    dataset: Annotated[
        str, typer.Option(help="hotpotqa-paper | hotpotqa-full | mmlu-words | eraser-movies | jsonl")
    ] = "hotpotqa-paper",
    data: Annotated[Path | None, typer.Option(help="Dataset file (default: shared data).")] = None,
    n: Annotated[int, typer.Option("--n", help="Number of examples.")] = 5,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method", "-m", help="Methods (repeatable): rope-lime rope-lime-loo gsmile closed-loo."
        ),
    ] = None,
    closed: Annotated[str, typer.Option(help="Closed model string (local:smollm2, openai:gpt-4o-mini…).")] = (
        "local:smollm2"
    ),
    surrogate: Annotated[str, typer.Option(help="Surrogate model.")] = "smollm2",
    price_as: Annotated[
        str | None, typer.Option(help="Price the calls as if this model answered (offline runs).")
    ] = None,
    split: Annotated[str, typer.Option(help="tune | report | all")] = "report",
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Examples in flight per method.")] = 2,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of every closed call.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Score on Ray actors: 'local', 'auto', host:6379 or ray://host:10001 "
            "(pip install 'attribsdk\\[ray]'). Closed calls stay in this process."
        ),
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option(min=1, help="Ray actors (default: as many as fit).")
    ] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Explain N examples with each method: cost and quality side by side.

    Prints the table and writes compare.json, compare.png and compare.html."""
    from .compare import CompareConfig, format_table
    from .compare import compare as run_compare

    def run() -> None:
        if ray_address is None and ray_actors is not None:
            fail("--ray-actors applies with --ray-address")
        config = CompareConfig(
            dataset=dataset,
            data_path=str(data) if data is not None else None,
            split=split,  # type: ignore[arg-type]
            n_examples=n,
            methods=tuple(methods) if methods else CompareConfig().methods,
            closed=closed,
            surrogate=surrogate,
            price_as=price_as,
            seed=seed,
            concurrency=concurrency,
            max_tokens=max_tokens,
            device=device,
            dtype=dtype,
        )
        if ray_address is None:
            report = run_compare(config, out)
        else:
            from .scoring.ray import RayScorer

            with RayScorer(
                surrogate, address=ray_address, num_actors=ray_actors, device=device, dtype=dtype
            ) as pool:
                typer.echo(f"scoring on {pool.num_actors} Ray actor(s)")
                report = run_compare(config, out, surrogate=pool)
        typer.echo(format_table(report))
        typer.echo(f"\nwrote {out / 'compare.json'}, {out / 'compare.png'} and {out / 'compare.html'}")
        # A method that explained nothing is a failed run for scripts and CI, files written or not.
        for summary in report.methods:
            if summary.n_ok == 0:
                first = next(
                    (r["error"] for r in report.rows if r["method"] == summary.method and "error" in r), ""
                )
                fail(
                    f"{summary.method} explained none of the {summary.n_examples} examples ({first})", code=1
                )

    guard(run, debug=debug, interrupted="interrupted; paid answers are in the cache under --out")
