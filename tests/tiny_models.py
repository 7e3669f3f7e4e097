"""Tiny, seeded, offline test doubles for the scoring layer.

* :func:`tiny_tokenizer` -- a byte-level BPE trained in-process with ``tokenizers`` and wrapped in
  ``PreTrainedTokenizerFast`` with a hand-written ChatML template (special tokens ``<|im_start|>``,
  ``<|im_end|>``, ``<|endoftext|>``).
* :func:`tiny_llama` -- a 2-layer ``LlamaForCausalLM`` (hidden 64, 4 query heads / 2 KV heads,
  head_dim 16) with random weights.
* :func:`tiny_local_model` -- both wrapped as a :class:`~attribsdk.scoring.models.LocalModel`.
* :func:`write_tiny_gguf` -- the same model and tokenizer written as a real llama GGUF with
  ``gguf.GGUFWriter`` (float32 tensors, llama.cpp's Q/K row permutation), to exercise the GGUF path.

Everything builds in a few milliseconds.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from attribsdk.scoring.models import LocalModel

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The capital of France is Paris. Paris is a large city on the Seine.",
    "Berlin is the capital of Germany. The cat sat on the mat in the sun.",
    "Answer the question using the context. Answer in one short sentence.",
    "Context: Question: What is the capital of France? Which river runs through it?",
    "Marie Curie won two Nobel prizes, in physics and in chemistry, in 1903 and 1911.",
    "The quick brown fox jumps over the lazy dog while the birds sing in the trees.",
    "You are a helpful assistant. Water boils at 100 degrees at sea level.",
]


@functools.cache
def _trained_tokenizer_json(extra_corpus: tuple[str, ...] = ()) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(extra_corpus), trainer)
    return str(tok.to_str())


def tiny_tokenizer(*, chat_template: str | None = CHATML_TEMPLATE, extra_corpus: tuple[str, ...] = ()) -> Any:
    """A fresh fast tokenizer (``chat_template=None``: a base-model tokenizer without a template;
    ``extra_corpus``: more training text, e.g. to make chosen words single tokens)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(tuple(extra_corpus))),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = chat_template
    return tok


def tiny_llama(
    vocab_size: int, *, seed: int = 0, context: int = 512, n_layers: int = 2, init_range: float = 0.2
) -> Any:
    """A random Llama (2 layers by default). ``init_range`` is large so that distributions are far
    from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        initializer_range=init_range,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model: Any = LlamaForCausalLM(config)
    return model.eval()


def tiny_local_model(
    *,
    seed: int = 0,
    context: int = 512,
    n_layers: int = 2,
    chat_template: str | None = CHATML_TEMPLATE,
    lanes: int | None = None,
) -> LocalModel:
    """A :class:`LocalModel` around :func:`tiny_llama` and :func:`tiny_tokenizer` (CPU, float32)."""
    from attribsdk.scoring.models import LocalModel

    tok = tiny_tokenizer(chat_template=chat_template)
    model = tiny_llama(len(tok), seed=seed, context=context, n_layers=n_layers)
    return LocalModel(model, tok, name="tiny-llama", lanes=lanes)


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter reorders Q/K rows from HF's rotate-half layout to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, *, seed: int = 0) -> tuple[Path, Any, Any]:
    """Write :func:`tiny_llama` + :func:`tiny_tokenizer` as a llama GGUF at ``path``.

    Returns ``(path, model, tokenizer)``: the in-memory originals, to compare the loaded model with.
    """
    import gguf

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=seed)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(SPECIAL_TOKENS)
    merges = _merges_from_json()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(CHATML_TEMPLATE)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(
            f"blk.{i}.attn_q.weight",
            _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight",
            _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
        )
        writer.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model, tok


def _merges_from_json() -> list[str]:
    import json

    merges = json.loads(_trained_tokenizer_json())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def tiny_gemma3(vocab_size: int, *, seed: int = 0, sliding_window: int = 8) -> Any:
    """A random 2-layer Gemma 3 text model whose first layer uses a sliding attention window of
    ``sliding_window`` tokens (the second is global), to exercise windowed attention."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model: Any = Gemma3ForCausalLM(config)
    return model.eval()


PLANTED_WORDS = [
    "cat",
    "mat",
    "sun",
    "dog",
    "lazy",
    "fox",
    "birds",
    "trees",
    "water",
    "river",
    "city",
    "large",
]
PLANTED_CITIES = {"Paris": "France", "Berlin": "Germany"}
#: The answer when the prompt names no city: deleting the city word flips the answer to this.
PLANTED_NO_CITY = "Unknown"
PLANTED_QUESTION = "Which country?"
#: Extra tokenizer text so that every planted word, city and answer is one token, with and without
#: a leading space (a city split into " " + "Berlin" would let the model answer from the space).
_PLANTED_VOCAB = [*PLANTED_WORDS, *PLANTED_CITIES, *PLANTED_CITIES.values(), PLANTED_NO_CITY]
_PLANTED_CORPUS = tuple(f"{w} {w} {w} {w}." for w in _PLANTED_VOCAB for _ in range(6))


def planted_tokenizer() -> Any:
    """:func:`tiny_tokenizer` trained with the planted vocabulary as single tokens."""
    return tiny_tokenizer(extra_corpus=_PLANTED_CORPUS)


def planted_example(seed: int, n_words: int = 8, *, city: bool = True) -> tuple[Any, str, int]:
    """A word-feature prompt of ``n_words`` distractor words with one city word at a random place,
    the answer the city determines, and the city's feature index. ``city=False``: the same prompt
    without the city word, answer :data:`PLANTED_NO_CITY` and index ``-1``."""
    from attribsdk.prompt import build_prompt

    rng = np.random.default_rng(seed)
    words = [str(w) for w in rng.choice(PLANTED_WORDS, size=n_words)]
    name = str(rng.choice(list(PLANTED_CITIES)))
    pos = int(rng.integers(0, n_words + 1))
    if not city:
        return build_prompt(PLANTED_QUESTION, " ".join(words), features="words"), PLANTED_NO_CITY, -1
    words.insert(pos, name)
    prompt = build_prompt(PLANTED_QUESTION, " ".join(words), features="words")
    return prompt, PLANTED_CITIES[name], pos


@functools.cache
def _planted_state() -> tuple[dict[str, torch.Tensor], str]:
    """Train :func:`tiny_llama` (once per process, a few seconds) so that the answer's first token is
    decided by the one city word in the prompt and by nothing else (no city: ``Unknown``)."""
    from attribsdk.scoring.engine import tokenize_prompt
    from attribsdk.scoring.models import LocalModel

    tok = planted_tokenizer()
    for w in _PLANTED_VOCAB:  # the premise of every planted test: one word, one token
        assert len(tok.tokenize(" " + w)) == 1 and len(tok.tokenize(w)) == 1, (w, tok.tokenize(" " + w))
    model = tiny_llama(len(tok), seed=0, init_range=0.02)
    lm = LocalModel(model, tok, name="planted")
    seqs: list[tuple[list[int], int]] = []
    for seed in range(300):
        n_words = int(np.random.default_rng(seed).integers(4, 10))
        prompt, answer, _ = planted_example(seed, n_words=n_words, city=seed % 3 != 2)
        prompt_ids = tokenize_prompt(lm, prompt.render()).ids
        answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
        seqs.append((prompt_ids + answer_ids, len(prompt_ids)))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)
    recent: list[float] = []
    for _ in range(400):
        batch = [seqs[int(i)] for i in torch.randint(len(seqs), (16,), generator=gen)]
        width = max(len(s) for s, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100)
        for b, (s, n) in enumerate(batch):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
            labels[b, n : len(s)] = torch.tensor(s[n:])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent = [*recent[-9:], float(loss.detach())]
        if len(recent) == 10 and max(recent) < 0.02:  # converged: the city decides the answer
            break
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, f"{float(loss.detach()):.4f}"


def planted_model() -> LocalModel:
    """A fresh :class:`LocalModel` whose answer (``France``/``Germany``, ``Unknown`` without a city)
    is determined by one input token (the city word ``Paris``/``Berlin``) among distractor words:
    see :func:`planted_example`."""
    from attribsdk.scoring.models import LocalModel

    state, _ = _planted_state()
    tok = planted_tokenizer()
    model = tiny_llama(len(tok), seed=0, init_range=0.02)
    model.load_state_dict(state)
    return LocalModel(model.eval(), tok, name="planted")
