"""Model strings → closed-model adapters: ``"openai:gpt-4o-mini"``, ``"local:smollm2"``...

Each provider prefix maps to a factory ``(model_name, **options) -> ClosedModel``. Factories are
imported lazily so that using one provider never imports another provider's SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._strategy import call_with_options
from ..errors import ConfigError
from .base import ClosedModel

__all__ = ["PROVIDERS", "parse_model_string", "register_provider", "resolve_closed_model"]

Factory = Callable[..., ClosedModel]

#: prefix → "module:attribute" of its factory (lazy) or the factory itself.
PROVIDERS: dict[str, str | Factory] = {
    "local": "attribsdk.adapters.local:LocalClosedModel.from_name",
    "openai": "attribsdk.adapters.openai:OpenAIModel",
    "openai-compatible": "attribsdk.adapters.openai:OpenAIModel.compatible_from_spec",
    "anthropic": "attribsdk.adapters.anthropic:AnthropicModel",
}


def register_provider(prefix: str, factory: str | Factory) -> None:
    """Register ``factory`` for model strings ``"<prefix>:<model>"``."""
    if not prefix or ":" in prefix:
        raise ConfigError(f"invalid provider prefix {prefix!r}")
    PROVIDERS[prefix] = factory


def parse_model_string(spec: str) -> tuple[str, str]:
    """Split ``"provider:model"``; a bare name means ``local``. Surrounding whitespace is ignored
    and a known provider may be written in any case (``" OpenAI:gpt-4o "``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("a model string must be a non-empty string such as 'openai:gpt-4o-mini'")
    spec = spec.strip()
    provider, sep, model = spec.partition(":")
    if not sep:
        return "local", spec
    provider, model = provider.strip(), model.strip()
    if provider.lower() in PROVIDERS:
        provider = provider.lower()
    if not model:
        raise ConfigError(f"model string {spec!r} names no model after {provider!r}:")
    return provider, model


def _load_factory(ref: str | Factory) -> Factory:
    if not isinstance(ref, str):
        return ref
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def resolve_closed_model(spec: str | ClosedModel, **options: Any) -> ClosedModel:
    """Return a :class:`ClosedModel` for a model string (or pass an adapter through unchanged)."""
    if not isinstance(spec, str):
        if isinstance(spec, ClosedModel):
            return spec
        raise ConfigError(f"closed model must be a model string or a ClosedModel, got {type(spec).__name__}")
    provider, model = parse_model_string(spec)
    ref = PROVIDERS.get(provider)
    if ref is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigError(f"unknown model provider {provider!r} in {spec!r}; known providers: {known}")
    factory = _load_factory(ref)
    model_: ClosedModel = call_with_options(factory, (model,), options, f"closed model {spec!r}")
    return model_
