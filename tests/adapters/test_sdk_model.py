"""Constructor checks shared by the official-SDK adapters (``SDKModel._configure``): each bad
argument is a ConfigError naming the model, and nothing is sent or created for it."""

from __future__ import annotations

from typing import Any

import pytest

from attribsdk.adapters.anthropic import AnthropicModel
from attribsdk.adapters.openai import OpenAIModel
from attribsdk.errors import ConfigError

from .conftest import SECRET

ADAPTERS: list[tuple[type[Any], dict[str, Any], str]] = [
    (AnthropicModel, {"api_key": SECRET}, "anthropic:"),
    (OpenAIModel, {"api_key": SECRET}, "openai:"),
    (OpenAIModel, {"compatible": True, "base_url": "http://127.0.0.1:9/v1"}, "openai-compatible:"),
]


@pytest.mark.parametrize(("cls", "good", "prefix"), ADAPTERS)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "  "}, "model must be a non-empty string"),
        ({"model": 3}, "model must be a non-empty string"),
        ({"timeout": 0}, "timeout must be > 0 seconds"),
        ({"timeout": float("nan")}, "timeout must be > 0 seconds"),
        ({"base_url": "ftp://host/v1"}, "must be an http:// or https:// URL"),
        ({"base_url": "http://u:p@host/v1"}, "must not contain credentials"),
        ({"base_url": "http://host/v1?key=1"}, "query string"),
        ({"api_key": 42}, "api_key must be a string or SecretStr"),
    ],
)
def test_bad_constructor_arguments(
    cls: type[Any], good: dict[str, Any], prefix: str, change: dict[str, Any], message: str
) -> None:
    kwargs = {"model": "m-1", **good, **change}
    model = kwargs.pop("model")
    with pytest.raises(ConfigError, match=message) as info:
        cls(model, **kwargs)
    assert SECRET not in str(info.value)
    if "model" not in change:
        assert prefix in str(info.value)


@pytest.mark.parametrize(("cls", "good", "prefix"), ADAPTERS)
def test_good_arguments_are_normalised(cls: type[Any], good: dict[str, Any], prefix: str) -> None:
    model = cls("  m-1 ", timeout=3, **good)
    assert model.model == "m-1" and model.timeout == 3.0 and isinstance(model.timeout, float)
    assert model.name.startswith(prefix + "m-1")
    assert model.provider == prefix.rstrip(":")
    assert model._sdk is None  # the SDK client is created at the first call, not here
    assert SECRET not in repr(model)


def test_openai_specific_checks() -> None:
    with pytest.raises(ConfigError, match="openai-compatible:m: an OpenAI-compatible model needs base_url"):
        OpenAIModel("m", compatible=True)
    with pytest.raises(ConfigError, match="openai:m: api must be 'chat' or 'responses'"):
        OpenAIModel("m", api_key=SECRET, api="completions")  # type: ignore[arg-type]
    assert OpenAIModel("o3-pro", api_key=SECRET).api == "responses"
    assert OpenAIModel("gpt-4o-mini", api_key=SECRET).api == "chat"


@pytest.mark.anyio
async def test_aclose_without_a_call_is_a_no_op() -> None:
    model = AnthropicModel("m", api_key=SECRET)
    await model.aclose()
    await model.aclose()
    assert model._sdk is None
