"""Teacher-force one fixed answer under many prompts and score each prompt against the reference.

For every prompt the chat is rendered, tokenised and followed by the answer's tokens (tokenised once).
Sequences are packed into micro-batches by a token budget, sorted by length to cut padding, padded on
the right with explicit ``position_ids = cumsum(mask) - 1`` so a sequence gets the same RoPE positions
(and, in float32, the same numbers to ~1e-5) whatever batch it lands in. The base model runs for
hidden states; the LM head runs only on the T positions that predict answer tokens, never on the whole
sequence (Gemma's 262k vocabulary would need gigabytes). The reference prompt (``prompts[0]``) is run
in the first micro-batch so every later row can be compared with it as soon as it is computed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import AttribError, ConfigError, ContextWindowError, InputError, ScoringError
from ..prompt import RenderedPrompt
from .base import ScoreResult, ScoringRequest
from .capture import recording, resolve_layer, span_embeddings
from .targets import get_target

if TYPE_CHECKING:
    from .models import LocalModel

__all__ = [
    "ACCELERATOR_BATCH_LIMITS",
    "CPU_BATCH_LIMITS",
    "BatchLimits",
    "TokenizedPrompt",
    "plan_batches",
    "score_request",
    "tokenize_prompt",
]


@dataclass(frozen=True)
class BatchLimits:
    """Bounds of one micro-batch.

    ``max_tokens`` counts padding (``sequences * longest``). ``max_logit_elements`` bounds the
    ``[rows, T, V]`` block of answer logits materialised at once (the head runs in row chunks).
    """

    max_sequences: int = 8
    max_tokens: int = 2500
    max_logit_elements: int = 1 << 26

    def __post_init__(self) -> None:
        for name in ("max_sequences", "max_tokens", "max_logit_elements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BatchLimits.{name} must be a positive int, got {value!r}")


#: Micro-batches of ~8 sequences / ~2.5k tokens are fastest on a small CPU (activations stay in cache).
CPU_BATCH_LIMITS = BatchLimits()
#: GPUs want bigger batches; bounded so a 262k-vocabulary head still fits comfortably.
ACCELERATOR_BATCH_LIMITS = BatchLimits(max_sequences=64, max_tokens=32768, max_logit_elements=1 << 28)


@dataclass
class TokenizedPrompt:
    """One prompt as the surrogate sees it.

    ``ids`` are the prompt's token ids (generation prompt included, answer excluded);
    ``features[m]`` holds the indices into ``ids`` of the tokens that overlap feature ``m``'s
    characters (int64 array), or ``None`` when the feature is masked or maps to no token.
    """

    ids: list[int]
    features: list[np.ndarray | None]


def plan_batches(lengths: Sequence[int], limits: BatchLimits, *, first: int = 0) -> list[list[int]]:
    """Group sequence indices into micro-batches.

    Indices are sorted by length and packed greedily while a batch has at most
    ``limits.max_sequences`` sequences and ``count * longest <= limits.max_tokens`` (a single
    sequence longer than the budget gets a batch of its own). The batch holding ``first`` is moved to
    the front with ``first`` as its first row.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if current and (
            len(current) + 1 > limits.max_sequences or new_longest * (len(current) + 1) > limits.max_tokens
        ):
            batches.append(current)
            current, new_longest = [], lengths[i]
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    if not batches:
        return batches
    k = next(j for j, b in enumerate(batches) if first in b)
    head = batches.pop(k)
    head.remove(first)
    batches.insert(0, [first, *head])
    return batches


def _validate(request: ScoringRequest) -> int:
    """Check the request's shape; returns the number of features M."""
    prompts = request.prompts
    if not isinstance(request.answer, str) or not request.answer:
        raise InputError("the answer to score must be a non-empty string")
    if len(prompts) == 0:
        raise InputError("ScoringRequest.prompts is empty; prompts[0] must be the unmasked reference")
    m = len(prompts[0].keep)
    for n, p in enumerate(prompts):
        if not isinstance(p, RenderedPrompt):
            raise InputError(f"prompts[{n}] is a {type(p).__name__}, expected RenderedPrompt")
        if len(p.keep) != m or len(p.spans) != m:
            raise InputError(
                f"prompts[{n}] has {len(p.keep)} mask entries and {len(p.spans)} spans; "
                f"prompts[0] has {m} features"
            )
        if not p.messages:
            raise InputError(f"prompts[{n}] has no messages")
    if not all(prompts[0].keep):
        raise InputError("prompts[0] must be the unmasked reference (every keep entry True)")
    return m


def tokenize_prompt(lm: LocalModel, prompt: RenderedPrompt, *, index: int = 0) -> TokenizedPrompt:
    """Render ``prompt`` with ``lm``'s chat template and map each kept feature to its tokens.

    A token belongs to a feature when its character offsets overlap the feature's span; tokens with
    empty offsets (special tokens added by the tokenizer) belong to none. ``index`` only labels
    errors. Raises :class:`InputError` for spans outside their message.
    """
    n = index
    tokenizer = lm.tokenizer
    chat = lm.render_chat(prompt.messages, add_generation_prompt=True)
    enc = tokenizer(chat.text, add_special_tokens=chat.add_special_tokens, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    # A tokenizer that appends EOS/SEP to any text must not end the prompt with it.
    special = set(getattr(tokenizer, "all_special_ids", ()))
    while len(ids) > 1 and offsets[-1] == (0, 0) and ids[-1] in special:
        ids.pop()
        offsets.pop()
    if not ids:
        raise InputError(f"prompts[{n}] renders to zero tokens")
    starts = np.fromiter((a for a, _ in offsets), dtype=np.int64, count=len(offsets))
    ends = np.fromiter((b for _, b in offsets), dtype=np.int64, count=len(offsets))
    nonempty = ends > starts

    features: list[np.ndarray | None] = []
    for i, (span, keep) in enumerate(zip(prompt.spans, prompt.keep, strict=True)):
        if not keep or span is None:
            features.append(None)
            continue
        msg_index, start, end = span
        if not 0 <= msg_index < len(prompt.messages):
            raise InputError(f"prompts[{n}]: feature {i} points to message {msg_index}, which does not exist")
        content = prompt.messages[msg_index].content
        if not 0 <= start <= end <= len(content):
            raise InputError(
                f"prompts[{n}]: feature {i} span [{start}, {end}) lies outside message {msg_index} "
                f"({len(content)} characters)"
            )
        a = chat.content_offsets[msg_index] + start
        b = chat.content_offsets[msg_index] + end
        idx = np.nonzero(nonempty & (starts < b) & (ends > a))[0]
        features.append(idx if idx.size else None)
    return TokenizedPrompt(ids=ids, features=features)


def score_request(lm: LocalModel, request: ScoringRequest) -> ScoreResult:
    """Score ``request.answer`` under every prompt with ``lm``. Call with ``lm``'s lock held.

    See :class:`~attribsdk.scoring.base.ScoreResult` for the output. Raises :class:`InputError` for a
    malformed request, :class:`ContextWindowError` when a prompt plus the answer exceeds the model's
    context window, :class:`ConfigError` for an unknown target or capture layer, and
    :class:`ScoringError` when the model or a target/pooler fails.
    """
    t0 = time.perf_counter()
    m = _validate(request)
    target_fn = get_target(request.target)
    capture = request.capture
    layer_idx = resolve_layer(capture.layer, lm.n_layers) if capture is not None else None

    tokenizer = lm.tokenizer
    answer_ids = [int(i) for i in tokenizer(request.answer, add_special_tokens=False)["input_ids"]]
    if not answer_ids:
        raise InputError("the answer tokenises to zero tokens")
    n_answer = len(answer_ids)
    rows = [tokenize_prompt(lm, p, index=n) for n, p in enumerate(request.prompts)]
    for n, row in enumerate(rows):
        total = len(row.ids) + n_answer
        if total > lm.context_window:
            raise ContextWindowError(
                f"prompts[{n}] plus the answer is {total} tokens; {lm.name} accepts {lm.context_window}",
                n_tokens=total,
                limit=lm.context_window,
            )

    n_rows = len(rows)
    lengths = [len(r.ids) + n_answer for r in rows]
    limits = lm.batch_limits
    batches = plan_batches(lengths, limits, first=0)

    targets = np.zeros(n_rows, dtype=np.float64)
    answer_lp = np.zeros((n_rows, n_answer), dtype=np.float64)
    spans: list[list[Any | None]] | None = (
        [[None] * m for _ in range(n_rows)] if capture is not None else None
    )
    answer_t = torch.tensor(answer_ids, dtype=torch.long, device=lm.torch_device)
    ref: torch.Tensor | None = None
    slots = 0

    try:
        with torch.inference_mode():
            for batch in batches:
                batch_rows = [rows[i] for i in batch]
                slots += len(batch) * max(lengths[i] for i in batch)
                if layer_idx is not None and capture is not None:
                    with recording(layer_idx, capture.which) as recorder:
                        hidden = _answer_hidden(lm, batch_rows, answer_ids)
                    if recorder.tensor is None:
                        raise ScoringError(
                            f"layer {layer_idx} produced no {capture.which} vectors to capture"
                        )
                    captured = recorder.tensor.float().cpu().numpy()  # [B, heads, S, head_dim]
                    assert spans is not None
                    for b, i in enumerate(batch):
                        spans[i] = span_embeddings(
                            captured[b], rows[i].features, capture.pool, lm.rotary_pairing
                        )
                else:
                    hidden = _answer_hidden(lm, batch_rows, answer_ids)

                chunk = max(1, limits.max_logit_elements // (n_answer * lm.vocab_size))
                for lo in range(0, len(batch), chunk):
                    logprobs = _answer_logprobs(lm, hidden[lo : lo + chunk])  # [b, T, V] float32
                    if ref is None:  # batch[0] is the reference, first row of the first chunk
                        ref = logprobs[0].clone()
                    idx = batch[lo : lo + chunk]
                    values = target_fn(ref, logprobs, answer_t)
                    if not isinstance(values, torch.Tensor) or tuple(values.shape) != (len(idx),):
                        raise ScoringError(
                            f"target {request.target!r} returned {getattr(values, 'shape', type(values))}, "
                            f"expected a tensor of shape ({len(idx)},)"
                        )
                    targets[idx] = values.double().cpu().numpy()
                    picked = logprobs.gather(-1, answer_t.view(1, -1, 1).expand(len(idx), -1, 1)).squeeze(-1)
                    answer_lp[idx] = picked.double().cpu().numpy()
    except AttribError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise ScoringError(
            f"out of device memory while scoring; lower {lm.name}.batch_limits (now {limits})"
        ) from exc
    except (RuntimeError, ValueError) as exc:
        raise ScoringError(f"{lm.name} failed while scoring: {exc}") from exc

    n_tokens = sum(lengths)
    seconds = time.perf_counter() - t0
    return ScoreResult(
        targets=targets,
        answer_logprobs=answer_lp,
        answer_tokens=[tokenizer.decode([t]) for t in answer_ids],
        spans=spans,
        rotary_pairing=lm.rotary_pairing,
        n_sequences=n_rows,
        n_tokens=n_tokens,
        seconds=seconds,
        extras={
            "batches": len(batches),
            "padding_fraction": 1.0 - n_tokens / slots if slots else 0.0,
            "tokens_per_second": n_tokens / seconds if seconds > 0 else 0.0,
            "answer_token_count": n_answer,
            "capture_layer": layer_idx,
            "device": lm.device,
            "dtype": lm.dtype,
        },
    )


def _answer_hidden(
    lm: LocalModel, rows: Sequence[TokenizedPrompt], answer_ids: Sequence[int]
) -> torch.Tensor:
    """Final hidden states at the positions predicting each answer token: ``[B, T, hidden]``."""
    n_answer = len(answer_ids)
    lengths = [len(r.ids) + n_answer for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), lm.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    gather = torch.empty((len(rows), n_answer), dtype=torch.long)
    answer = torch.tensor(list(answer_ids), dtype=torch.long)
    for b, row in enumerate(rows):
        p = len(row.ids)
        ids[b, :p] = torch.tensor(row.ids, dtype=torch.long)
        ids[b, p : p + n_answer] = answer
        mask[b, : p + n_answer] = 1
        gather[b] = torch.arange(p - 1, p - 1 + n_answer)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    dev = lm.torch_device
    out = lm.decoder(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=position_ids.to(dev),
        use_cache=False,
    )
    hidden: torch.Tensor = out[0]  # [B, S, hidden]
    index = gather.to(dev).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


def _answer_logprobs(lm: LocalModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM head (+ final logit soft-capping if the model has it) and float32 log-softmax: ``[b, T, V]``."""
    logits = lm.lm_head(hidden).float()
    cap = lm.logit_softcap
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)
