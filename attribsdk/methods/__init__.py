"""Attribution methods, one class per algorithm behind :class:`Method`."""

from __future__ import annotations

from typing import Any

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

#: name → constructor. ``"rope-lime-loo"`` is RoPE-LIME with the leave-one-out sampler.
METHODS: dict[str, Any] = {
    "rope-lime": RopeLime,
    "rope-lime-loo": lambda **kw: RopeLime(**{"sampler": "loo", **kw}),
    "gsmile": GSmile,
    "closed-loo": ClosedLoo,
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
    method: Method = factory(**options)
    return method
