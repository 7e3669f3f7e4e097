"""Surrogate scoring: the only part of attribsdk that runs torch.

The protocol types (:class:`ScoringRequest`, :class:`ScoreResult`, :class:`Scorer`, :class:`CaptureSpec`)
import without torch. Everything else -- :func:`load_model`, :class:`LocalModel`, :class:`ModelStore`,
the target registry -- is imported on first access, so ``import attribsdk.scoring`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import CaptureSpec, RotaryPairing, Scorer, ScoreResult, ScoringRequest, SpanPooler

if TYPE_CHECKING:
    from .engine import BatchLimits
    from .models import LoadInfo, LocalModel, ModelStore, load_model
    from .targets import TargetFn, available_targets, get_target, register_target
    from .templates import RenderedChat

__all__ = [
    "BatchLimits",
    "CaptureSpec",
    "LoadInfo",
    "LocalModel",
    "ModelStore",
    "RenderedChat",
    "RotaryPairing",
    "ScoreResult",
    "Scorer",
    "ScoringRequest",
    "SpanPooler",
    "TargetFn",
    "available_targets",
    "get_target",
    "load_model",
    "register_target",
]

_LAZY = {
    "BatchLimits": "engine",
    "LoadInfo": "models",
    "LocalModel": "models",
    "ModelStore": "models",
    "load_model": "models",
    "RenderedChat": "templates",
    "TargetFn": "targets",
    "available_targets": "targets",
    "get_target": "targets",
    "register_target": "targets",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
