"""Shared plumbing for configuration: pluggable stage strategies (samplers, kernels, solvers),
run configurations and factory options.

Each shipped strategy is a frozen pydantic model with a ``kind`` discriminator, so configurations
round-trip through JSON inside results. Invalid settings raise :class:`ConfigError`, not pydantic's
``ValidationError``, and so do unknown keyword options (:func:`check_options`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

__all__ = ["ConfigModel", "build_strategy", "check_options", "describe_invalid", "validation_problems"]


def validation_problems(exc: ValidationError, *, owner: str = "", limit: int | None = None) -> str:
    """``"Owner.field: message; ..."`` for a pydantic validation error (the first ``limit`` problems;
    ``<root>`` names a problem with the whole value when there is no ``owner``)."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"])
        cause = err.get("ctx", {}).get("error")
        msg = str(cause) if isinstance(cause, Exception) else err["msg"]
        where = ".".join(p for p in (owner, loc) if p) or "<root>"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def describe_invalid(owner: str, exc: ValidationError) -> str:
    """``"invalid Owner.field: message; ..."`` for a pydantic validation error."""
    return "invalid " + validation_problems(exc, owner=owner)


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` naming the unknown keyword options for ``factory`` (a class or
    function) and the ones it takes, instead of letting the call fail with a ``TypeError``."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(options) - {p.name for p in known})
    if unknown:
        optional = [p.name for p in known if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
        raise ConfigError(
            f"{what}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(optional) or 'no options'}"
        )


def call_with_options(
    factory: Callable[..., Any], args: tuple[Any, ...], options: Mapping[str, Any], what: str
) -> Any:
    """``factory(*args, **options)`` after :func:`check_options`; a factory that takes ``**kwargs``
    and passes an unknown one on (a ``TypeError`` about a keyword) is a :class:`ConfigError` too."""
    check_options(factory, options, what)
    try:
        return factory(*args, **options)
    except TypeError as exc:
        if "keyword argument" not in str(exc):
            raise
        raise ConfigError(f"{what}: {exc}") from None


class ConfigModel(BaseModel):
    """Base of shipped strategies and run configurations: frozen, unknown keys rejected, bad
    settings → :class:`~attribsdk.errors.ConfigError` naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    if not TYPE_CHECKING:  # keep the field-derived signature for type checkers

        def __init__(self, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise ConfigError(describe_invalid(type(self).__name__, exc)) from exc


def build_strategy(spec: Any, registry: Mapping[str, type[Any]], protocol: type, what: str) -> Any:
    """A strategy from a name (case-insensitive, ``-`` read as ``_``), a dict with a ``kind`` key,
    or an object implementing ``protocol`` (returned unchanged)."""
    known = ", ".join(sorted(registry))
    if isinstance(spec, str):
        cls = registry.get(spec.strip().lower().replace("-", "_"))
        if cls is None:
            raise ConfigError(f"unknown {what} {spec!r}; known {what}s: {known}")
        return cls()
    if isinstance(spec, Mapping):
        kind = spec.get("kind")
        if not isinstance(kind, str) or kind not in registry:
            raise ConfigError(f"{what} config needs a 'kind' among {known}, got {kind!r}")
        if not all(isinstance(key, str) for key in spec):
            raise ConfigError(f"{what} config keys must be strings")
        return registry[kind](**spec)  # invalid settings raise ConfigError
    if isinstance(spec, protocol):
        return spec
    raise ConfigError(
        f"{what} must be a name ({known}), a dict with a 'kind', or a {protocol.__name__}; "
        f"got {type(spec).__name__}"
    )
