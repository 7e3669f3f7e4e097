"""The shared pieces of the white-box methods: inputs, token→feature aggregation, answer-only logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribsdk.errors import ConfigError, InputError
from attribsdk.methods.base import MethodParts
from attribsdk.prompt import build_prompt
from attribsdk.whitebox import aggregate, answer_logits, embed, prepare_input
from attribsdk.whitebox._method import WhiteboxMethod, WhiteboxScores
from tests.tiny_models import planted_example, planted_model, tiny_local_model


def test_aggregate_sums_each_features_tokens() -> None:
    feats = [np.array([0, 1]), None, np.array([3])]
    np.testing.assert_allclose(aggregate([1.0, 2.0, 5.0, -4.0], feats), [3.0, 0.0, -4.0])
    with pytest.raises(InputError):
        aggregate(np.zeros((2, 2)), feats)


def test_prepare_input_and_answer_only_logits_match_the_full_forward() -> None:
    lm = tiny_local_model()
    prompt = build_prompt("What is the capital of France?", "Paris is in France. Berlin is not.")
    wi = prepare_input(lm, prompt, "Paris.")
    assert wi.ids.shape[0] == wi.n_prompt + wi.n_answer
    assert [f is not None for f in wi.feature_tokens] == [True, True]
    assert wi.feature_mask.sum() == sum(len(f) for f in wi.feature_tokens if f is not None)
    with torch.no_grad():
        logits, _ = answer_logits(wi, embed(wi))
        full = lm.model(wi.ids.unsqueeze(0)).logits[0, wi.answer_positions].float()
    assert logits.shape == (1, wi.n_answer, lm.vocab_size)
    torch.testing.assert_close(logits[0], full, atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError):
        prepare_input(lm, prompt, "")


def test_planted_model_answers_from_the_city_word() -> None:
    """The premise of every planted test: the city word (one token) decides the answer, and the
    same prompt without it answers ``Unknown``."""
    lm = planted_model()
    for seed in range(1000, 1010):
        for with_city in (True, False):
            prompt, answer, city = planted_example(seed, city=with_city)
            if with_city:
                assert prompt.features[city].text in {"Paris", "Berlin"}
            else:
                assert answer == "Unknown" and city == -1
                assert not {"Paris", "Berlin"} & {f.text for f in prompt.features}
            wi = prepare_input(lm, prompt, answer)
            assert len(wi.answer_ids) == 1
            with torch.no_grad():
                logits, _ = answer_logits(wi, embed(wi))
            assert int(logits[0, 0].argmax()) == wi.answer_ids[0], (seed, with_city)


class _Constant(WhiteboxMethod):
    name = "constant-test"

    def run(self, wi, rng):  # type: ignore[no-untyped-def]
        return WhiteboxScores(token_scores=np.arange(wi.n_prompt, dtype=float), forward_passes=1)


@pytest.mark.anyio
async def test_method_base_checks_the_surrogate_and_options() -> None:
    prompt, answer, _ = planted_example(0)
    method = _Constant()
    with pytest.raises(ConfigError, match="white-box"):
        await method.attribute(prompt, answer, MethodParts(scorer=None))
    with pytest.raises(ConfigError, match="bad options"):
        _Constant(unknown=1)
    lm = tiny_local_model()
    result = await method.attribute(prompt, answer, MethodParts(scorer=lm))
    assert result.coefficients.shape == (prompt.n_features,)
    # token i scored i: a feature's coefficient is the sum of its prompt-token positions
    spans = prepare_input(lm, prompt, answer).feature_tokens
    expected = [float(sum(int(t) for t in idx)) if idx is not None else 0.0 for idx in spans]
    np.testing.assert_allclose(result.coefficients, expected)
    assert min(expected) > 0  # every feature has prompt tokens past position 0
    assert abs(result.attributions.sum() - 1) < 1e-9 and result.surrogate_sequences == 1
    assert method.config() == {"kind": "constant-test"}


def test_white_box_methods_are_registered_by_name() -> None:
    from attribsdk.methods import Method, make_method

    names = ("saliency", "input-x-gradient", "integrated-gradients", "attention", "occlusion", "random")
    for name in (*names, "heat", "grad-ellm", "gilot"):
        method = make_method(name)
        assert isinstance(method, Method) and method.name == name
    assert make_method("integrated-gradients", steps=8).config()["steps"] == 8
    with pytest.raises(ConfigError):
        make_method("saliency", nonsense=1)
