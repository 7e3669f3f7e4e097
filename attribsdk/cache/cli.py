"""``attribsdk cache stats|clear``: a typer sub-app the main CLI mounts with
``app.add_typer(cache_app, name="cache")``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import ResponseCache, default_cache_dir

__all__ = ["app", "cache_app"]

cache_app = typer.Typer(
    name="cache", help="Inspect or clear the closed-model response cache.", no_args_is_help=True
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Cache directory (default: $ATTRIBSDK_CACHE_DIR or the user cache directory).",
        file_okay=False,
    ),
]


@cache_app.command("stats")
def stats(
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Show where the cache is, how many answers it holds and its size on disk."""
    with ResponseCache(directory or default_cache_dir()) as cache:
        info = cache.stats()
    if as_json:
        typer.echo(
            info.model_dump_json(include={"directory", "exists", "entries", "size_bytes", "schema_version"})
        )
        return
    if not info.exists:
        typer.echo(f"no cache at {info.directory}")
        return
    typer.echo(f"directory: {info.directory}")
    typer.echo(f"entries:   {info.entries}")
    typer.echo(f"size:      {info.size_bytes / 1e6:.2f} MB")
    typer.echo(f"schema:    v{info.schema_version}")


@cache_app.command("clear")
def clear(
    directory: DirOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every cached answer (they will be paid for again when next needed)."""
    with ResponseCache(directory or default_cache_dir()) as cache:
        info = cache.stats()
        if not info.exists or info.entries == 0:
            typer.echo(f"nothing to clear at {info.directory}")
            return
        if not yes:
            typer.confirm(f"delete {info.entries} cached answers in {info.directory}?", abort=True)
        removed = cache.clear()
    typer.echo(f"deleted {removed} cached answers from {info.directory}")


#: The name the main CLI imports.
app = cache_app
