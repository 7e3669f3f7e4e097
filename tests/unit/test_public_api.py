"""The public façade: every exported name resolves to the object its module defines, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import attribsdk


def test_all_lists_exactly_the_lazy_names() -> None:
    from attribsdk import errors

    assert sorted(attribsdk.__all__) == sorted([*attribsdk._LAZY, *errors.__all__, "__version__"])
    assert dir(attribsdk) == sorted(attribsdk.__all__)


@pytest.mark.parametrize("name", sorted(attribsdk._LAZY))
def test_each_name_is_its_modules_object(name: str) -> None:
    module = importlib.import_module(attribsdk._LAZY[name], "attribsdk")
    assert getattr(attribsdk, name) is getattr(module, name)


def test_every_error_class_is_exported() -> None:
    from attribsdk import errors

    assert all(getattr(attribsdk, name) is getattr(errors, name) for name in errors.__all__)


def test_errors_are_one_hierarchy_and_unknown_names_fail() -> None:
    from attribsdk import errors

    public = [n for n in attribsdk.__all__ if n.endswith(("Error", "Exceeded"))]
    defined = [n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)]
    assert sorted(public) == sorted(n for n in defined if n != "Exception")  # every error class
    assert all(issubclass(getattr(attribsdk, n), attribsdk.AttribError) for n in public)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        attribsdk.Nope  # noqa: B018


def test_import_stays_light() -> None:
    heavy = ("torch", "transformers", "openai", "anthropic", "matplotlib")
    code = f"import sys, attribsdk; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
