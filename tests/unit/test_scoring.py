"""The scoring engine, on a tiny random Llama with a real (in-process trained) BPE tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.errors import ConfigError, ContextWindowError, InputError, ModelLoadError, ScoringError
from attribsdk.prompt import RenderedPrompt, build_prompt
from attribsdk.scoring import Scorer
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from attribsdk.scoring.engine import BatchLimits, pack_batches, tokenize_prompt
from attribsdk.scoring.models import LocalModel
from attribsdk.scoring.targets import available_targets, get_target, register_target
from attribsdk.scoring.templates import render_chat
from tests.tiny_models import tiny_llama, tiny_local_model, tiny_tokenizer

CONTEXT = (
    "The capital of France is Paris. Berlin is the capital of Germany. "
    "The cat sat on the mat. Water boils at 100 degrees."
)
QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."
MASKS = [
    [True, True, True, True],
    [False, True, True, True],
    [True, False, True, True],
    [True, True, False, False],
    [False, False, False, True],
    [True, False, True, False],
]


@pytest.fixture(scope="module")
def lm() -> LocalModel:
    return tiny_local_model()


@pytest.fixture(scope="module")
def prompts() -> list[RenderedPrompt]:
    prompt = build_prompt(QUESTION, CONTEXT, system="You are a helpful assistant.")
    assert prompt.n_features == 4
    return [prompt.render(mask) for mask in MASKS]


def request(prompts: list[RenderedPrompt], **kw: Any) -> ScoringRequest:
    return ScoringRequest(prompts=prompts, answer=kw.pop("answer", ANSWER), **kw)


def naive_logprobs(model: Any, lm: LocalModel, prompt: RenderedPrompt, answer: str) -> torch.Tensor:
    """Full-sequence logits of one unpadded sequence, the textbook way: ``[T, V]`` log-probs."""
    prompt_ids = tokenize_prompt(lm, prompt).ids
    answer_ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.inference_mode():
        logits = model(ids).logits[0].float()
    p = len(prompt_ids)
    return torch.log_softmax(logits[p - 1 : p - 1 + len(answer_ids)], dim=-1)


# -- numerics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["kl", "delta_nll"])
def test_batched_equals_unbatched(prompts: list[RenderedPrompt], target: str) -> None:
    lm = tiny_local_model(lanes=1)  # one lane: batch counts below are the single-lane packing
    batched = lm.score(request(prompts, target=target))
    # the reference runs alone (its KV cache is kept), every other row in one batch
    assert batched.extras["batches"] == 2 and batched.extras["padding_fraction"] > 0  # lengths differ
    lm.batch_limits = BatchLimits(max_sequences=1)
    single = lm.score(request(prompts, target=target))
    assert single.extras["batches"] == len(prompts)
    lm.batch_limits = BatchLimits(max_sequences=3, max_tokens=10_000)
    mixed = lm.score(request(prompts, target=target))
    for other in (single, mixed):
        np.testing.assert_allclose(batched.targets, other.targets, atol=1e-4)
        np.testing.assert_allclose(batched.answer_logprobs, other.answer_logprobs, atol=1e-4)


def test_answer_head_matches_full_logits(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    # An independent copy of the weights with stock SDPA attention and full-sequence logits.
    naive_model = tiny_llama(len(lm.tokenizer), seed=0)
    assert naive_model.config._attn_implementation == "sdpa"
    result = lm.score(request(prompts, target="kl"))
    answer_ids = torch.tensor(lm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"])
    ref = naive_logprobs(naive_model, lm, prompts[0], ANSWER)
    for n, prompt in enumerate(prompts):
        rows = naive_logprobs(naive_model, lm, prompt, ANSWER)
        picked = rows.gather(-1, answer_ids[:, None]).squeeze(-1).double().numpy()
        np.testing.assert_allclose(result.answer_logprobs[n], picked, atol=1e-4)
        kl = (ref.exp() * (ref - rows)).sum(-1).mean().item()
        assert result.targets[n] == pytest.approx(kl, abs=1e-4)
    assert result.answer_tokens == [lm.tokenizer.decode([int(t)]) for t in answer_ids]
    assert "".join(result.answer_tokens) == ANSWER


def test_kl_is_zero_for_reference_and_nonnegative(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    result = lm.score(request(prompts, target="kl"))
    assert result.targets.shape == (len(prompts),) and result.targets.dtype == np.float64
    assert result.answer_logprobs.shape == (len(prompts), len(result.answer_tokens))
    assert result.targets[0] == 0.0
    assert (result.targets >= 0).all()
    assert (result.targets[1:] > 1e-4).all()  # every masked prompt moves the distribution
    assert result.n_sequences == len(prompts)
    assert result.spans is None
    lengths = [len(tokenize_prompt(lm, p).ids) + len(result.answer_tokens) for p in prompts]
    assert result.n_tokens == sum(lengths)


def test_delta_nll_sign_and_value(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    result = lm.score(request(prompts, target="delta_nll"))
    nll = -result.answer_logprobs.mean(axis=1)  # nats per token
    np.testing.assert_allclose(result.targets, nll - nll[0], atol=1e-6)
    assert result.targets[0] == 0.0
    # positive exactly when the prompt makes the fixed answer less likely
    assert (
        (result.targets > 0) == (result.answer_logprobs.mean(axis=1) < result.answer_logprobs[0].mean())
    ).all()
    assert len({float(np.sign(t)) for t in result.targets[1:]}) == 2  # the check above sees both signs


# -- capture ----------------------------------------------------------------------------------------


def test_capture_does_not_change_scores(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    with_capture = lm.score(request(prompts, capture=CaptureSpec(layer=0)))
    plain = lm.score(request(prompts))
    np.testing.assert_array_equal(with_capture.targets, plain.targets)
    np.testing.assert_array_equal(with_capture.answer_logprobs, plain.answer_logprobs)
    # ... and the capturing attention gives what stock SDPA gives.
    sdpa = LocalModel(tiny_llama(len(lm.tokenizer), seed=0), lm.tokenizer, name="sdpa")
    sdpa.model.set_attn_implementation("sdpa")
    np.testing.assert_allclose(sdpa.score(request(prompts)).answer_logprobs, plain.answer_logprobs, atol=1e-6)


def test_capture_attention_builds_padding_masks(lm: LocalModel) -> None:
    """Left padding needs a real mask (right padding survives a plain causal one): without the
    mask function registered for the capturing attention, this would silently differ."""
    sdpa = tiny_llama(len(lm.tokenizer), seed=0)
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        ours = lm.model(ids, attention_mask=mask, position_ids=positions).logits
        reference = sdpa(ids, attention_mask=mask, position_ids=positions).logits
        unmasked = sdpa(ids, position_ids=positions).logits
    assert lm.model.config._attn_implementation == "attribsdk_capture"
    torch.testing.assert_close(ours[:, 3:], reference[:, 3:], atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked[0, 3:], reference[0, 3:], atol=1e-3)  # the mask matters here


def _feature_token_oracle(lm: LocalModel, prompt: RenderedPrompt) -> list[list[int]]:
    chat = lm.render_chat(prompt.messages)
    enc = lm.tokenizer(chat.text, add_special_tokens=chat.add_special_tokens, return_offsets_mapping=True)
    out: list[list[int]] = []
    for span in prompt.spans:
        if span is None:
            out.append([])
            continue
        a = chat.content_offsets[span[0]] + span[1]
        b = chat.content_offsets[span[0]] + span[2]
        out.append([t for t, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < b and e > a])
    return out


@pytest.mark.parametrize("layer", [0, -1])
@pytest.mark.parametrize("row", [0, 4])
def test_captured_keys_equal_keys_recomputed_by_hand(
    lm: LocalModel, prompts: list[RenderedPrompt], layer: int, row: int
) -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    result = lm.score(request(prompts, capture=CaptureSpec(layer=layer, which="key")))
    assert result.spans is not None and result.rotary_pairing == "half"

    # By hand, on one unpadded sequence: layer input -> input norm -> k_proj -> RoPE at 0..S-1.
    model = tiny_llama(len(lm.tokenizer), seed=0)
    decoder_layer = model.model.layers[layer]
    seen: dict[str, torch.Tensor] = {}

    def keep_input(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen["h"] = args[0] if args else kwargs["hidden_states"]

    decoder_layer.register_forward_pre_hook(keep_input, with_kwargs=True)
    ids = tokenize_prompt(lm, prompts[row]).ids
    with torch.inference_mode():
        model(torch.tensor([ids]))
        attn = decoder_layer.self_attn
        normed = decoder_layer.input_layernorm(seen["h"])
        keys = attn.k_proj(normed).view(1, len(ids), -1, attn.head_dim).transpose(1, 2)
        cos, sin = model.model.rotary_emb(normed, torch.arange(len(ids))[None])
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
    keys_np = keys[0].numpy()  # [n_kv, S, D]

    oracle = _feature_token_oracle(lm, prompts[row])
    for m, tokens in enumerate(oracle):
        span = result.spans[row][m]
        if not prompts[row].keep[m]:
            assert span is None
            continue
        assert span is not None and span.dtype == np.float32
        assert span.shape == (len(tokens), 2, 16)  # [n_tok, kv heads, head_dim]
        np.testing.assert_allclose(span, keys_np[:, tokens, :].transpose(1, 0, 2), atol=1e-5)


def test_query_capture_has_all_heads_and_pool_is_applied(
    lm: LocalModel, prompts: list[RenderedPrompt]
) -> None:
    calls: list[tuple[tuple[int, ...], str]] = []

    def pool(vectors: np.ndarray, pairing: str) -> tuple[tuple[int, ...], str]:
        calls.append((vectors.shape, pairing))
        return vectors.shape, pairing

    result = lm.score(request(prompts, capture=CaptureSpec(layer=-2, which="query", pool=pool)))
    assert result.spans is not None
    for row, prompt in zip(result.spans, prompts, strict=True):
        for span, keep in zip(row, prompt.keep, strict=True):
            assert (span is None) == (not keep)
            if span is not None:
                shape, pairing = span
                assert shape[1:] == (4, 16) and shape[0] >= 1 and pairing == "half"
    assert len(calls) == sum(sum(m) for m in MASKS)


def test_failing_pool_raises_scoring_error(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    def pool(vectors: np.ndarray, pairing: str) -> None:
        raise ValueError("boom")

    with pytest.raises(ScoringError, match="pooler"):
        lm.score(request(prompts, capture=CaptureSpec(layer=0, pool=pool)))


def test_feature_tokens_decode_to_text_containing_the_feature(lm: LocalModel) -> None:
    prompt = build_prompt(QUESTION, CONTEXT)
    for mask in ([True] * 4, [False, True, False, True]):
        rendered = prompt.render(mask)
        tokenized = tokenize_prompt(lm, rendered)
        for feature, tokens, keep in zip(prompt.features, tokenized.features, mask, strict=True):
            if not keep:
                assert tokens is None
                continue
            assert tokens is not None
            assert list(tokens) == list(range(tokens[0], tokens[-1] + 1))  # contiguous
            decoded = lm.tokenizer.decode([tokenized.ids[t] for t in tokens])
            assert feature.text in decoded
            assert len(decoded) < len(feature.text) + 4  # and not much more


def test_feature_tokens_with_plain_fallback_template() -> None:
    lm = tiny_local_model(chat_template=None)
    prompt = build_prompt(QUESTION, CONTEXT, system="Be brief.")
    chat = lm.render_chat(prompt.render().messages)
    assert chat.fallback and chat.add_special_tokens
    assert chat.text.startswith("Be brief.\n\nAnswer the question") and chat.text.endswith("\n\nAnswer:\n")
    tokenized = tokenize_prompt(lm, prompt.render())
    for feature, tokens in zip(prompt.features, tokenized.features, strict=True):
        assert tokens is not None
        assert feature.text in lm.tokenizer.decode([tokenized.ids[t] for t in tokens])
    result = lm.score(
        ScoringRequest(prompts=[prompt.render(), prompt.render([False, True, True, True])], answer=ANSWER)
    )
    assert result.targets[0] == 0.0 and result.targets[1] > 0


# -- errors -----------------------------------------------------------------------------------------


def test_context_window_error() -> None:
    lm = tiny_local_model(context=64)
    long_prompt = build_prompt(QUESTION, " ".join([CONTEXT] * 3)).render()
    with pytest.raises(ContextWindowError) as info:
        lm.score(ScoringRequest(prompts=[long_prompt], answer=ANSWER))
    assert info.value.limit == 64 and info.value.n_tokens > 64
    assert isinstance(info.value, InputError)


def test_input_errors(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    with pytest.raises(InputError, match="empty"):
        lm.score(ScoringRequest(prompts=[], answer=ANSWER))
    with pytest.raises(InputError, match="non-empty"):
        lm.score(ScoringRequest(prompts=prompts, answer=""))
    with pytest.raises(InputError, match="unmasked reference"):
        lm.score(ScoringRequest(prompts=prompts[1:], answer=ANSWER))
    other = build_prompt(QUESTION, "One sentence. Two sentences.").render()
    with pytest.raises(InputError, match="features"):
        lm.score(ScoringRequest(prompts=[prompts[0], other], answer=ANSWER))
    bad_span = RenderedPrompt(messages=prompts[0].messages, spans=((5, 0, 3),) * 4, keep=(True,) * 4)
    with pytest.raises(InputError, match="message 5"):
        lm.score(ScoringRequest(prompts=[bad_span], answer=ANSWER))


def test_config_errors(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    with pytest.raises(ConfigError, match=r"known targets: .*delta_nll.*kl"):
        lm.score(request(prompts, target="nope"))
    with pytest.raises(ConfigError, match="out of range"):
        lm.score(request(prompts, capture=CaptureSpec(layer=2)))
    with pytest.raises(ConfigError, match="out of range"):
        lm.score(request(prompts, capture=CaptureSpec(layer=-3)))
    with pytest.raises(ConfigError):
        BatchLimits(max_sequences=0)


def test_custom_target_registry(lm: LocalModel, prompts: list[RenderedPrompt]) -> None:
    def mean_answer_logprob(ref: torch.Tensor, rows: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        return rows.gather(-1, answer_ids.view(1, -1, 1).expand(rows.shape[0], -1, 1)).squeeze(-1).mean(-1)

    register_target("test-mean-logprob", mean_answer_logprob, replace=True)
    assert "test-mean-logprob" in available_targets()
    assert get_target("test-mean-logprob") is mean_answer_logprob
    result = lm.score(request(prompts, target="test-mean-logprob"))
    np.testing.assert_allclose(result.targets, result.answer_logprobs.mean(axis=1), atol=1e-6)
    with pytest.raises(ConfigError, match="already registered"):
        register_target("kl", mean_answer_logprob)

    register_target("test-bad-shape", lambda ref, rows, ids: rows.sum(), replace=True)
    with pytest.raises(ScoringError, match="shape"):
        lm.score(request(prompts, target="test-bad-shape"))


def test_pack_batches_respects_limits_in_order() -> None:
    lengths = [10, 11, 12, 30, 40, 50, 60]
    batches = pack_batches(lengths, BatchLimits(max_sequences=3, max_tokens=100))
    assert [i for b in batches for i in b] == list(range(len(lengths)))  # order kept, nothing lost
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 100
    assert batches[0] == [0, 1, 2]  # 3 * 12 = 36 fits; a fourth would exceed max_sequences
    # an entry over the token budget still gets a batch of its own
    assert pack_batches([10, 500], BatchLimits(max_tokens=100)) == [[0], [1]]
    assert pack_batches([], BatchLimits()) == []


def test_closed_handle_raises(prompts: list[RenderedPrompt]) -> None:
    lm = tiny_local_model()
    as_object: object = lm
    assert isinstance(as_object, Scorer)
    with lm:
        lm.score(request(prompts[:2]))
    assert lm.closed
    with pytest.raises(ModelLoadError, match="closed"):
        lm.score(request(prompts[:2]))
    with pytest.raises(ModelLoadError, match="closed"):
        lm.generate([Message(role="user", content="hi")])
    lm.close()  # idempotent


# -- templates --------------------------------------------------------------------------------------


def test_render_chat_offsets_locate_each_content() -> None:
    tok = tiny_tokenizer()
    messages = [
        Message(role="system", content="  Be brief. "),
        Message(role="user", content="What is the capital of France?"),
        Message(role="assistant", content="Paris."),
        Message(role="user", content="And Germany?"),
    ]
    chat = render_chat(tok, messages)
    assert not chat.add_special_tokens and not chat.fallback
    assert chat.text.endswith("<|im_start|>assistant\n")
    for msg, off in zip(messages, chat.content_offsets, strict=True):
        assert chat.text[off : off + len(msg.content)] == msg.content


def test_render_chat_with_a_trimming_template() -> None:
    tok = tiny_tokenizer(
        chat_template=(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
        )
    )
    messages = [Message(role="user", content="  padded content  "), Message(role="assistant", content="ok")]
    chat = render_chat(tok, messages, add_generation_prompt=False)
    off = chat.content_offsets[0]
    assert chat.text[off + 2 : off + 16] == "padded content"


def test_render_chat_rejects_templates_that_hide_content() -> None:
    drops_system = tiny_tokenizer(
        chat_template=(
            "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}\n{% endif %}{% endfor %}"
        )
    )
    messages = [Message(role="system", content="sys"), Message(role="user", content="hello")]
    with pytest.raises(ConfigError, match="drops the content of message 0"):
        render_chat(drops_system, messages)
    with pytest.raises(InputError, match="empty"):
        render_chat(drops_system, [])


# -- generation -------------------------------------------------------------------------------------

MESSAGES = [Message(role="user", content=QUESTION)]


def test_generate_greedy_is_deterministic_and_counts_usage(lm: LocalModel) -> None:
    params = GenerationParams(max_tokens=12)
    first = lm.generate(MESSAGES, params)
    assert first == lm.generate(MESSAGES, params)
    assert first.model == "tiny-llama"
    n_prompt = len(lm.tokenizer(lm.render_chat(MESSAGES).text, add_special_tokens=False)["input_ids"])
    assert first.usage.input_tokens == n_prompt
    assert first.finish_reason == "length" and first.usage.output_tokens == 12
    assert len(first.text) > 5


def test_generate_stop_strings_are_removed(lm: LocalModel) -> None:
    full = lm.generate(MESSAGES, GenerationParams(max_tokens=12)).text
    stop = full[3:6]
    stopped = lm.generate(MESSAGES, GenerationParams(max_tokens=12, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.find(stop)]
    with_logprobs = lm.generate(MESSAGES, GenerationParams(max_tokens=12, stop=(stop,), logprobs=True))
    assert with_logprobs.text == stopped.text and with_logprobs.logprobs is not None
    tokens = [e.token for e in with_logprobs.logprobs]
    assert "".join(tokens).startswith(stopped.text) and not "".join(tokens[:-1]).startswith(stopped.text)


def test_generate_seeded_sampling_is_reproducible_and_keeps_global_rng(lm: LocalModel) -> None:
    params = GenerationParams(max_tokens=10, temperature=1.0, seed=7)
    state = torch.random.get_rng_state()
    a = lm.generate(MESSAGES, params)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.text == lm.generate(MESSAGES, params).text
    others = {lm.generate(MESSAGES, params.model_copy(update={"sample_index": i})).text for i in range(1, 4)}
    assert others - {a.text}


def test_generate_logprobs(lm: LocalModel) -> None:
    c = lm.generate(MESSAGES, GenerationParams(max_tokens=5, logprobs=True, top_logprobs=3))
    assert c.logprobs is not None and len(c.logprobs) == 5
    for entry in c.logprobs:
        assert len(entry.top) == 3
        assert entry.logprob == pytest.approx(entry.top[0][1], abs=1e-6)  # greedy picks the best
        assert [v for _, v in entry.top] == sorted((v for _, v in entry.top), reverse=True)
    assert "".join(e.token for e in c.logprobs) == c.text


def test_resolve_layer() -> None:
    from attribsdk.scoring.capture import resolve_layer

    assert [resolve_layer(x, 30) for x in (0, 29, -1, -30, 0.0, 1.0)] == [0, 29, 29, 0, 0, 29]
    for bad in (30, -31, 1.5, -0.1, "2", True):
        with pytest.raises(ConfigError):
            resolve_layer(bad, 30)  # type: ignore[arg-type]
