"""The API reference builds from the docstrings (scripts/build_docs.py, ``make docs``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("pdoc")

ROOT = Path(__file__).resolve().parents[2]


def _load_builder() -> object:
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "scripts" / "build_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_covers_the_public_modules(tmp_path: Path) -> None:
    builder = _load_builder()
    modules = builder.public_modules()  # type: ignore[attr-defined]
    assert "attribsdk.explainer" in modules and "attribsdk.adapters" in modules
    assert not any(m.rsplit(".", 1)[-1].startswith("_") for m in modules)
    builder.build(tmp_path)  # type: ignore[attr-defined]
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    for page in (
        "attribsdk.html",
        "attribsdk/explainer.html",
        "attribsdk/citations.html",
        "attribsdk/adapters/openai.html",
        "attribsdk/cache/redis.html",
        "attribsdk/whitebox/gilot.html",
        "attribsdk/views/html.html",
    ):
        assert page in pages, page
    assert not any(re.search(r"/_[^/]*\.html$", p) for p in pages)  # private modules stay out
    explainer = (tmp_path / "attribsdk" / "explainer.html").read_text()
    # the class docstring's Google-style Args section is rendered, with its text
    assert 'id="Explainer"' in explainer and "the closed model" in explainer
    assert "explain_many" in explainer
