"""The ``attribsdk`` command line: ``explain``, ``demo`` and ``cache``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._cli_common import fail as _fail
from ._cli_common import guard

app = typer.Typer(
    name="attribsdk",
    help="Explain what a closed LLM's answer was based on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _run_explain(
    kwargs: dict[str, Any], explainer_kwargs: dict[str, Any], as_json: bool, top: int | None
) -> None:
    from .explainer import Explainer
    from .views.progress import progress_enabled

    with Explainer(**explainer_kwargs) as ex:
        # a bar on a terminal for every method: scoring a long context on a CPU takes minutes
        res = ex.explain_sync(**kwargs, progress=progress_enabled(None))
    if as_json:
        typer.echo(res.model_dump_json(indent=2))
    elif sys.stdout.isatty():  # a person is reading: the rich view; pipes get the plain table
        from .views.terminal import render

        render(res, top=top)
    else:
        typer.echo(res.table(top))


@app.command()
def explain(
    question: Annotated[str, typer.Argument(help="The question or prompt ('-' reads stdin).")],
    context: Annotated[
        list[str] | None, typer.Option("--context", "-c", help="A context document (repeatable).")
    ] = None,
    context_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--context-file",
            "-f",
            help="Read a context document from a file (repeatable; numbered after the -c documents).",
        ),
    ] = None,
    features: Annotated[str, typer.Option(help="words | sentences | paragraphs | documents")] = "sentences",
    method: Annotated[
        str,
        typer.Option(
            help="rope-lime, rope-lime-loo; closed-loop: gsmile, closed-loo; white-box on the surrogate: "
            "saliency, input-x-gradient, integrated-gradients, attention, occlusion, random, heat, "
            "grad-ellm, gilot"
        ),
    ] = "rope-lime",
    closed: Annotated[
        str, typer.Option(help="Closed model, e.g. local:smollm2, openai:gpt-4o-mini")
    ] = "local:smollm2",
    surrogate: Annotated[
        str, typer.Option(help="Surrogate: smollm2, gemma3-270m, a directory or a .gguf file")
    ] = "smollm2",
    answer: Annotated[
        str | None, typer.Option(help="Use this answer instead of calling the closed model.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt (fixed, not a feature).")] = None,
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    top: Annotated[int | None, typer.Option(min=1, help="Show only the top N features.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the Explanation as JSON.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Explain one answer."""

    def run() -> None:
        if as_json and top is not None:
            _fail("--top shortens the table; --json prints the whole Explanation")
        q = sys.stdin.read() if question == "-" else question
        docs: list[str] = list(context or [])
        for p in context_file or []:
            try:
                docs.append(p.read_text(encoding="utf-8"))
            except OSError as exc:
                _fail(f"cannot read {p}: {exc.strerror}")
            except UnicodeDecodeError as exc:
                _fail(f"cannot read {p}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        kwargs: dict[str, Any] = {
            "question": q,
            "context": docs or None,
            "features": features,
            "answer": answer,
            "system": system,
            "seed": seed,
        }
        _run_explain(
            kwargs,
            {"closed": closed, "surrogate": surrogate, "method": method, "device": device, "dtype": dtype},
            as_json,
            top,
        )

    guard(run, debug=debug)


@app.command()
def demo(
    as_json: Annotated[bool, typer.Option("--json", help="Print the Explanation as JSON.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    """Explain one HotpotQA answer with the embedded defaults (offline, no API key)."""
    from ._demo import CONTEXT, QUESTION

    def run() -> None:
        if not as_json:
            typer.echo(f"Question: {QUESTION}\n")
        _run_explain({"question": QUESTION, "context": CONTEXT, "features": "sentences"}, {}, as_json, None)

    guard(run, debug=debug)


def _mount_optional() -> None:
    try:
        from .cache.cli import app as cache_app
    except ImportError:  # pragma: no cover - cache CLI is part of the package
        return
    app.add_typer(cache_app, name="cache")
    from .eval.cli import app as bench_app

    app.add_typer(bench_app, name="bench")
    from .compare_cli import app as compare_app

    app.add_typer(compare_app)


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
