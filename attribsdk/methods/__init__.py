"""Attribution methods, one class per algorithm behind :class:`Method`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._strategy import call_with_options
from ..errors import ConfigError
from .base import Method, MethodParts, MethodResult
from .gsmile import ClosedLoo, GSmile
from .rope_lime import RopeLime, RopeLimeConfig

__all__ = [
    "METHODS",
    "ClosedLoo",
    "GSmile",
    "Method",
    "MethodParts",
    "MethodResult",
    "RopeLime",
    "RopeLimeConfig",
    "make_method",
]


def _whitebox(module: str, cls: str) -> Callable[..., Method]:
    """A white-box method's constructor, imported on first use (the algorithms need torch)."""

    def make(**options: Any) -> Method:
        method: Method = getattr(importlib.import_module(f"attribsdk.whitebox.{module}"), cls)(**options)
        return method

    return make


#: name → constructor. ``"rope-lime-loo"`` is RoPE-LIME with the leave-one-out sampler. The
#: white-box methods (:mod:`attribsdk.whitebox`) run on the surrogate itself.
METHODS: dict[str, Any] = {
    "rope-lime": RopeLime,
    "rope-lime-loo": lambda **kw: RopeLime(**{"sampler": "loo", **kw}),
    "gsmile": GSmile,
    "closed-loo": ClosedLoo,
    "saliency": _whitebox("baselines", "Saliency"),
    "input-x-gradient": _whitebox("baselines", "InputXGradient"),
    "integrated-gradients": _whitebox("baselines", "IntegratedGradients"),
    "attention": _whitebox("baselines", "Attention"),
    "occlusion": _whitebox("baselines", "Occlusion"),
    "random": _whitebox("baselines", "RandomAttribution"),
    "heat": _whitebox("heat", "Heat"),
    "grad-ellm": _whitebox("grad_ellm", "GradELLM"),
    "gilot": _whitebox("gilot", "GiLOT"),
}


def make_method(spec: str | Method, **options: Any) -> Method:
    """A method instance from a name (``"rope-lime"``, ``"rope-lime-loo"``) or an instance."""
    if not isinstance(spec, str):
        if isinstance(spec, Method):
            if options:
                raise ConfigError("method options are only accepted with a method name")
            return spec
        raise ConfigError(f"method must be a name or a Method, got {type(spec).__name__}")
    factory = METHODS.get(spec)
    if factory is None:
        raise ConfigError(f"unknown method {spec!r}; known methods: {', '.join(sorted(METHODS))}")
    method: Method = call_with_options(factory, (), options, f"method {spec!r}")
    return method
