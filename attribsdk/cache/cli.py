"""``attribsdk cache stats|clear``: a typer sub-app the main CLI mounts with
``app.add_typer(cache_app, name="cache")``.

``--dir`` (alias ``--cache``) takes a directory or a ``redis://`` / ``rediss://`` / ``unix://``
URL; without it, ``$ATTRIBSDK_CACHE_URL`` if set, else the default directory.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .._cli_common import guard
from . import CacheBackend, CacheStats, is_cache_url, open_cache
from .backend import CACHE_URL_ENV

__all__ = ["app", "cache_app"]

cache_app = typer.Typer(
    name="cache", help="Inspect or clear the closed-model response cache.", no_args_is_help=True
)

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--dir",
        "--cache",
        help=(
            "Cache directory, or a redis://, rediss:// or unix:// URL "
            "(default: $ATTRIBSDK_CACHE_URL, else $ATTRIBSDK_CACHE_DIR or the user cache directory)."
        ),
    ),
]
NamespaceOption = Annotated[
    str, typer.Option(help="Key namespace on a Redis server (ignored for a directory).")
]
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks.")]


def _open(target: str | None, namespace: str) -> CacheBackend:
    # Resolve $ATTRIBSDK_CACHE_URL here, so that --namespace applies to it as to a given URL.
    target = target or os.environ.get(CACHE_URL_ENV) or None
    if is_cache_url(target):
        return open_cache(target, namespace=namespace)
    return open_cache(target)


def _where(info: CacheStats) -> str:
    return f"{info.directory} [{info.namespace}]" if info.namespace else info.directory


@cache_app.command("stats")
def stats(
    target: TargetOption = None,
    namespace: NamespaceOption = "attribsdk",
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show where the cache is, how many answers it holds and their size."""

    def run() -> None:
        with _open(target, namespace) as cache:
            info = cache.stats()
        if as_json:
            typer.echo(
                info.model_dump_json(
                    include={
                        "directory",
                        "exists",
                        "backend",
                        "namespace",
                        "entries",
                        "size_bytes",
                        "schema_version",
                    }
                )
            )
            return
        if not info.exists:
            typer.echo(f"no cache at {info.directory}")
            return
        if info.backend == "disk":
            typer.echo(f"directory: {info.directory}")
        else:
            typer.echo(f"server:    {info.directory}")
            typer.echo(f"namespace: {info.namespace}")
        typer.echo(f"entries:   {info.entries}")
        typer.echo(f"size:      {info.size_bytes / 1e6:.2f} MB")
        typer.echo(f"schema:    v{info.schema_version}")

    guard(run, debug=debug)


@cache_app.command("clear")
def clear(
    target: TargetOption = None,
    namespace: NamespaceOption = "attribsdk",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    debug: DebugOption = False,
) -> None:
    """Delete every cached answer (they will be paid for again when next needed) and the lock
    files no process holds."""

    def run() -> None:
        with _open(target, namespace) as cache:
            info = cache.stats()
            where = _where(info)
            if not info.exists or info.entries == 0:
                prune = getattr(cache, "prune_locks", None)
                if info.exists and prune is not None:
                    prune()  # no answers, but lock files no process holds go
                typer.echo(f"nothing to clear at {where}")
                return
            if not yes and not typer.confirm(f"delete {info.entries} cached answers in {where}?"):
                typer.echo("aborted: nothing deleted")
                raise typer.Exit(1)
            removed = cache.clear()
        typer.echo(f"deleted {removed} cached answers from {where}")

    guard(run, debug=debug)


#: The name the main CLI imports.
app = cache_app
