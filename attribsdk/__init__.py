"""attribsdk: explain what a closed LLM's answer was based on, for the price of one API call.

The public façade. Everything importable from here is stable API; submodules hold the stages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters.base import ClosedModel, Completion, GenerationParams, Message, Usage
    from .citations import (
        Citation,
        Citations,
        CitedAnswer,
        Citer,
        SentenceCitations,
        Source,
        cite,
        with_citations,
    )
    from .errors import (
        AdapterError,
        AttribError,
        ConfigError,
        ContextWindowError,
        FeatureError,
        InputError,
        ModelLoadError,
        ModelNotFoundError,
        ScoringError,
    )
    from .explainer import Explainer
    from .explanation import Counts, Explanation, Samples, Timings
    from .features import Feature
    from .methods import Method, RopeLime, make_method
    from .prompt import Document, Example, Prompt, build_prompt

__version__ = "0.1.0"

# Names are imported on first use so that ``import attribsdk`` stays fast and light.
_LAZY: dict[str, str] = {
    "AdapterError": ".errors",
    "AttribError": ".errors",
    "Citation": ".citations",
    "Citations": ".citations",
    "CitedAnswer": ".citations",
    "Citer": ".citations",
    "ClosedModel": ".adapters.base",
    "Completion": ".adapters.base",
    "ConfigError": ".errors",
    "ContextWindowError": ".errors",
    "Counts": ".explanation",
    "Document": ".prompt",
    "Example": ".prompt",
    "Explainer": ".explainer",
    "Explanation": ".explanation",
    "Feature": ".features",
    "FeatureError": ".errors",
    "GenerationParams": ".adapters.base",
    "InputError": ".errors",
    "Message": ".adapters.base",
    "Method": ".methods",
    "ModelLoadError": ".errors",
    "ModelNotFoundError": ".errors",
    "Prompt": ".prompt",
    "RopeLime": ".methods",
    "Samples": ".explanation",
    "ScoringError": ".errors",
    "SentenceCitations": ".citations",
    "Source": ".citations",
    "Timings": ".explanation",
    "Usage": ".adapters.base",
    "build_prompt": ".prompt",
    "cite": ".citations",
    "make_method": ".methods",
    "with_citations": ".citations",
}


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
    "AdapterError",
    "AttribError",
    "Citation",
    "Citations",
    "CitedAnswer",
    "Citer",
    "ClosedModel",
    "Completion",
    "ConfigError",
    "ContextWindowError",
    "Counts",
    "Document",
    "Example",
    "Explainer",
    "Explanation",
    "Feature",
    "FeatureError",
    "GenerationParams",
    "InputError",
    "Message",
    "Method",
    "ModelLoadError",
    "ModelNotFoundError",
    "Prompt",
    "RopeLime",
    "Samples",
    "ScoringError",
    "SentenceCitations",
    "Source",
    "Timings",
    "Usage",
    "__version__",
    "build_prompt",
    "cite",
    "make_method",
    "with_citations",
]
