"""Bad settings given to public constructors and factories are typed attribsdk errors that name
what is wrong, never a bare pydantic ValidationError or TypeError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from attribsdk.adapters.base import GenerationParams
from attribsdk.adapters.registry import resolve_closed_model
from attribsdk.compare import CompareConfig
from attribsdk.cost import Budget, CallLedger, Price
from attribsdk.errors import ConfigError, InputError
from attribsdk.eval.faithfulness import FaithfulnessConfig
from attribsdk.methods import GSmile, RopeLime, make_method

CASES: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: Budget(max_usd=-1), ConfigError, r"Budget\.max_usd"),
    (lambda: Budget(max_calls=1, max_dollars=2), ConfigError, r"Budget\.max_dollars: Extra"),  # type: ignore[call-arg]
    (lambda: Price(input_mtok=-1, output_mtok=1), ConfigError, r"Price\.input_mtok"),
    (lambda: GenerationParams(max_tokens=0), ConfigError, r"GenerationParams\.max_tokens"),
    (lambda: GenerationParams(temprature=0.5), ConfigError, r"GenerationParams\.temprature"),  # type: ignore[call-arg]
    (lambda: RopeLime(layer="x"), ConfigError, r"RopeLimeConfig\.layer"),  # type: ignore[arg-type]
    (lambda: RopeLime.from_config({"layer": "x"}), ConfigError, r"RopeLimeConfig\.layer"),
    (lambda: RopeLime.from_config(3), ConfigError, "a RopeLimeConfig or a dict"),  # type: ignore[arg-type]
    (lambda: GSmile(p=2.0), ConfigError, r"GSmileConfig\.p"),
    (lambda: make_method("rope-lime", layr=3), ConfigError, r"unknown option 'layr'; it takes .*layer"),
    (lambda: make_method("gsmile", bogus=1, other=2), ConfigError, "unknown options 'bogus', 'other'"),
    (lambda: make_method("saliency", bogus=1), ConfigError, r"SaliencyConfig\.bogus"),
    (
        lambda: resolve_closed_model("openai:m", api_key="k", tmeout=3),
        ConfigError,
        r"unknown option 'tmeout'; it takes base_url, .*timeout",
    ),
    (
        lambda: resolve_closed_model("openai-compatible:m@http://127.0.0.1:9/v1", api_key_enve="X"),
        ConfigError,
        "unknown option 'api_key_enve'",
    ),
    (lambda: CallLedger.from_json("{}"), InputError, "not a ledger written by CallLedger.to_json"),
    (lambda: CallLedger.from_json("not json"), InputError, "not a ledger"),
    (lambda: CompareConfig(methods=("rope-lime", "gsmlie")), ConfigError, "unknown method 'gsmlie'"),
    (lambda: CompareConfig(n_examples=0), ConfigError, r"CompareConfig\.n_examples"),
    (lambda: FaithfulnessConfig(soft_draws=0), ConfigError, r"FaithfulnessConfig\.soft_draws"),
]


@pytest.mark.parametrize(("build", "error", "message"), CASES)
def test_bad_settings_raise_typed_errors(
    build: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_good_settings_still_build() -> None:
    assert Budget(max_usd=1.5, max_calls=3).max_calls == 3
    assert GenerationParams(max_tokens=8).max_tokens == 8
    assert RopeLime.from_config(RopeLime(layer=4).config()).config() == RopeLime(layer=4).config()
    assert make_method("rope-lime", layer=2).config()["layer"] == 2
    ledger = CallLedger()
    assert CallLedger.from_json(ledger.to_json()).records == []


def test_unknown_options_of_factories_taking_keywords_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"method 'rope-lime-loo'.*'bogus'"):
        make_method("rope-lime-loo", bogus=1)
    with pytest.raises(ConfigError, match=r"closed model 'local:x'.*'base_url'"):
        resolve_closed_model("local:x", base_url="http://127.0.0.1:9/v1")


def test_model_strings_ignore_whitespace_and_a_known_providers_case() -> None:
    from attribsdk.adapters.registry import parse_model_string

    assert parse_model_string(" OpenAI:gpt-4o ") == ("openai", "gpt-4o")
    assert parse_model_string("anthropic: claude-haiku-4-5") == ("anthropic", "claude-haiku-4-5")
    assert parse_model_string(" smollm2 ") == ("local", "smollm2")
    with pytest.raises(ConfigError, match="names no model"):
        parse_model_string("openai: ")
    with pytest.raises(ConfigError, match="unknown model provider 'Nope'"):
        resolve_closed_model("Nope:x")
