"""The error hierarchy. Every error the SDK raises on purpose derives from :class:`AttribError`.

Errors that interrupt work after something was already computed or paid for carry it in
``partial`` so nothing is lost (for example the closed answer when scoring fails later).

:class:`InputError` and :class:`ConfigError` deliberately do not derive from ``ValueError``:
pydantic wraps ``ValueError`` raised in validators into its own ``ValidationError``, and these
errors must reach the caller with their own type, also from model constructors.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterError",
    "AttribError",
    "ConfigError",
    "ContextWindowError",
    "FeatureError",
    "InputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ScoringError",
]


class AttribError(Exception):
    """Base class of every error raised by attribsdk.

    ``partial`` holds whatever was already computed (or paid for) when the error happened,
    e.g. ``{"answer": ...}``; it is empty when nothing was.
    """

    def __init__(self, message: str, *, partial: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partial: dict[str, Any] = dict(partial or {})


class InputError(AttribError):
    """A user-supplied input is malformed (empty prompt, wrong type, out-of-range option)."""


class FeatureError(InputError):
    """Features could not be built from the input (no features, bad spans, unknown granularity)."""


class ConfigError(AttribError):
    """A configuration value is invalid or inconsistent (unknown method, sampler, target, kernel)."""


class ModelNotFoundError(AttribError, LookupError):
    """A model name, path or packaged weight file could not be found."""


class ModelLoadError(AttribError, RuntimeError):
    """A model was found but could not be loaded."""


class ContextWindowError(InputError):
    """A prompt plus the answer does not fit the surrogate's context window."""

    def __init__(self, message: str, *, n_tokens: int, limit: int, partial: dict[str, Any] | None = None):
        super().__init__(message, partial=partial)
        self.n_tokens = n_tokens
        self.limit = limit


class ScoringError(AttribError, RuntimeError):
    """The surrogate failed while scoring perturbations."""


class AdapterError(AttribError, RuntimeError):
    """A closed-model adapter failed (bad response, refused request, transport failure)."""
