"""attribsdk: explain what a closed LLM's answer was based on, for the price of one API call.

The public façade. Everything importable from here is stable API; submodules hold the stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The error hierarchy has no dependencies: imported eagerly, every class exported.
from .errors import *  # noqa: F403
from .errors import __all__ as _error_names

if TYPE_CHECKING:
    from .adapters.base import ClosedModel, Completion, GenerationParams, Message, Usage
    from .adapters.wrappers import FunctionModel, TestModel
    from .citations import (
        Citation,
        Citations,
        CitedAnswer,
        Citer,
        SentenceCitations,
        Source,
        cite,
        cite_sync,
        with_citations,
    )
    from .cost import Budget, CallLedger, CostReport, Price, Pricing
    from .explainer import Explainer
    from .explanation import Counts, Explanation, Samples, Timings
    from .features import Feature
    from .methods import Method, RopeLime, make_method
    from .prompt import Document, Example, Prompt, build_prompt

__version__ = "0.1.0"

# Names are imported on first use so that ``import attribsdk`` stays fast and light: module -> names.
_EXPORTS: dict[str, tuple[str, ...]] = {
    ".adapters.base": ("ClosedModel", "Completion", "GenerationParams", "Message", "Usage"),
    ".adapters.wrappers": ("FunctionModel", "TestModel"),
    ".citations": (
        "Citation",
        "Citations",
        "CitedAnswer",
        "Citer",
        "SentenceCitations",
        "Source",
        "cite",
        "cite_sync",
        "with_citations",
    ),
    ".cost": ("Budget", "CallLedger", "CostReport", "Price", "Pricing"),
    ".explainer": ("Explainer",),
    ".explanation": ("Counts", "Explanation", "Samples", "Timings"),
    ".features": ("Feature",),
    ".methods": ("Method", "RopeLime", "make_method"),
    ".prompt": ("Document", "Example", "Prompt", "build_prompt"),
}
_LAZY: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attribsdk' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Budget",
    "CallLedger",
    "Citation",
    "Citations",
    "CitedAnswer",
    "Citer",
    "ClosedModel",
    "Completion",
    "CostReport",
    "Counts",
    "Document",
    "Example",
    "Explainer",
    "Explanation",
    "Feature",
    "FunctionModel",
    "GenerationParams",
    "Message",
    "Method",
    "Price",
    "Pricing",
    "Prompt",
    "RopeLime",
    "Samples",
    "SentenceCitations",
    "Source",
    "TestModel",
    "Timings",
    "Usage",
    "__version__",
    "build_prompt",
    "cite",
    "cite_sync",
    "make_method",
    "with_citations",
]
__all__ += _error_names
