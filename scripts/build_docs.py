"""Build the API reference from the docstrings: ``python scripts/build_docs.py [OUT]`` (default docs/api).

Every public module of the package is documented (names starting with ``_`` are private and left
out), with pdoc. Docstrings use Google-style sections (``Args:``, ``Returns:``).
"""

from __future__ import annotations

import pkgutil
import sys
import warnings
from pathlib import Path

import pdoc
import pdoc.render

import attribsdk


def public_modules() -> list[str]:
    """``attribsdk`` and every submodule whose dotted path has no private part (listed explicitly:
    pdoc follows ``__all__``, which names a package's API, not its submodules)."""
    found = pkgutil.walk_packages(attribsdk.__path__, prefix="attribsdk.")
    public = (m.name for m in found if not any(p.startswith("_") for p in m.name.split(".")))
    return ["attribsdk", *sorted(public)]


def build(out: Path) -> list[str]:
    modules = public_modules()
    pdoc.render.configure(docformat="google", footer_text=f"attribsdk {attribsdk.__version__}")
    with warnings.catch_warnings():  # a package's submodules are also reached through it: no duplicates
        warnings.filterwarnings("ignore", message="The module specification", category=UserWarning)
        pdoc.pdoc(*modules, r"!attribsdk(\..+)?\._.*", output_directory=out)  # no private modules
    return modules


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api")
    build(target)
    pages = sorted(target.rglob("*.html"))
    print(f"{len(pages)} pages in {target}/ (open {target / 'index.html'})")
