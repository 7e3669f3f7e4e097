"""Teacher-force one fixed answer under many prompts and score each prompt against the reference.

How the work is laid out (each step measured on the HotpotQA dev data, see benchmarks/bench_engine.py):

* **Reference first, its KV cache kept.** ``prompts[0]`` (the unmasked prompt) runs first and its
  per-layer keys/values are kept. A perturbed prompt is identical to the reference up to its first
  masked feature, so that *shared prefix* (chat template, system prompt, instructions and every
  feature before the first masked one) is never recomputed: each row feeds only its own suffix and
  attends to the reference's cached keys/values. The cache block is right-aligned per row (padding
  on its left, masked out), so relative distances -- and sliding attention windows -- are exact.
  Results equal the no-reuse path within fp32 tolerance (tests/unit/test_engine.py).
* **Length-aware micro-batches.** Rows are sorted by suffix length and packed greedily while a batch
  has at most ``max_sequences`` rows and ``rows * longest suffix <= max_tokens``; padding is on the
  right with explicit ``position_ids`` so a row gets its true RoPE positions in any batch. The padding
  fraction is reported.
* **Answer-only head.** The decoder runs for hidden states; the LM head runs only on the T positions
  that predict answer tokens, in row chunks bounded by ``max_logit_elements`` -- never over the whole
  sequence (Gemma's 262k vocabulary would need gigabytes).
* **Many requests, one queue.** :class:`Scheduler` holds any number of requests and fills each
  micro-batch from all of them (cross-example batching; every row brings its own request's cache);
  :class:`~attribsdk.scoring.queue.ScoringQueue` runs micro-batches on worker threads ("lanes"),
  several at once on CPU, where small matmuls scale poorly across threads.
* **Out of memory is not a crash.** A batch that runs out of memory is split in halves and retried;
  only a single row that still does not fit fails, with :class:`~attribsdk.errors.ScoringError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import AttribError, ConfigError, InputError, ScoringError
from ..prompt import RenderedPrompt
from .base import CaptureSpec, ScoreResult, ScoringRequest
from .capture import recording, resolve_layer, span_embeddings
from .targets import TargetFn, get_target

if TYPE_CHECKING:
    from .models import LocalModel

__all__ = [
    "ACCELERATOR_BATCH_LIMITS",
    "CPU_BATCH_LIMITS",
    "BatchLimits",
    "Job",
    "Scheduler",
    "TokenizedPrompt",
    "check_lanes",
    "pack_batches",
    "peak_memory",
    "prepare",
    "score_request",
    "tokenize_prompt",
]


@dataclass(frozen=True)
class BatchLimits:
    """Bounds of one micro-batch.

    ``max_tokens`` counts the padded suffix block (``rows * longest suffix``; cached prefix tokens are
    not recomputed and do not count). ``max_logit_elements`` bounds the ``[rows, T, V]`` block of
    answer logits materialised at once (the head runs in row chunks).
    """

    max_sequences: int = 8
    max_tokens: int = 2500
    max_logit_elements: int = 1 << 26

    def __post_init__(self) -> None:
        for name in ("max_sequences", "max_tokens", "max_logit_elements"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BatchLimits.{name} must be a positive int, got {value!r}")


def check_lanes(lanes: int) -> int:
    """``lanes`` if it is a positive int (the number of scoring lanes), else :class:`ConfigError`."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ConfigError(f"lanes must be a positive int, got {lanes!r}")
    return lanes


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


def pack_batches(lengths: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Group indices into micro-batches, in the order given.

    Packs greedily while a batch has at most ``limits.max_sequences`` entries and
    ``count * longest <= limits.max_tokens`` (an entry longer than the budget gets a batch of its
    own). Sort by length first to keep padding low.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        new_longest = max(longest, n)
        if current and (
            len(current) + 1 > limits.max_sequences or new_longest * (len(current) + 1) > limits.max_tokens
        ):
            batches.append(current)
            current, new_longest = [], n
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory so far and what it measures: CUDA's peak allocated bytes on a GPU, else the
    process's peak resident set size (``ru_maxrss``; the whole process, weights included)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda-max-allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "process-peak-rss"


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


# --------------------------------------------------------------------------------------------------
# jobs


@dataclass
class Job:
    """One :class:`ScoringRequest` in flight: its tokenised rows, what is computed so far, accounting."""

    request: ScoringRequest
    rows: list[TokenizedPrompt]
    answer_ids: list[int]
    target_fn: TargetFn
    capture: CaptureSpec | None
    layer_idx: int | None
    #: Per row: leading tokens identical to the reference and taken from its KV cache (0: none).
    shared: list[int]
    n_features: int
    started: float = field(default_factory=time.perf_counter)
    targets: np.ndarray = field(init=False)
    answer_lp: np.ndarray = field(init=False)
    spans: list[list[Any | None]] | None = field(init=False)
    #: Rows not computed yet (the reference, row 0, runs first).
    pending: list[int] = field(init=False)
    ref_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ref_lp: torch.Tensor | None = None
    #: The reference's captured vectors over its prompt, ``[heads, prompt_len, head_dim]`` float32.
    ref_capture: np.ndarray | None = None
    answer_t: torch.Tensor | None = None
    error: BaseException | None = None
    result: ScoreResult | None = None
    batches: int = 0
    mixed_batches: int = 0
    slots: int = 0
    computed: int = 0
    splits: int = 0
    #: Rows handed to a lane and not completed yet.
    inflight: int = 0
    #: The reference (row 0) has completed: its KV cache, log-probs and capture are in place.
    ref_done: bool = False
    #: The scheduler has handed this job back as finished (result or error).
    reported: bool = False

    def __post_init__(self) -> None:
        n = len(self.rows)
        self.targets = np.zeros(n, dtype=np.float64)
        self.answer_lp = np.zeros((n, len(self.answer_ids)), dtype=np.float64)
        self.spans = [[None] * self.n_features for _ in range(n)] if self.capture is not None else None
        self.pending = list(range(n))

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def prompt_len(self, row: int) -> int:
        return len(self.rows[row].ids)

    def suffix_len(self, row: int) -> int:
        """Tokens row ``row`` feeds through the model (prompt + answer minus the shared prefix)."""
        return len(self.rows[row].ids) + len(self.answer_ids) - self.shared[row]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prepare(lm: LocalModel, request: ScoringRequest, *, reuse_prefix: bool = True) -> Job:
    """Validate and tokenise ``request`` for ``lm`` (no model work). Raises :class:`InputError`,
    :class:`ContextWindowError` or :class:`ConfigError` for a request that cannot be scored."""
    m = _validate(request)
    target_fn = get_target(request.target)
    capture = request.capture
    layer_idx = resolve_layer(capture.layer, lm.n_layers) if capture is not None else None
    answer_ids = [int(i) for i in lm.tokenizer(request.answer, add_special_tokens=False)["input_ids"]]
    if not answer_ids:
        raise InputError("the answer tokenises to zero tokens")
    rows = [tokenize_prompt(lm, p, index=n) for n, p in enumerate(request.prompts)]
    for n, row in enumerate(rows):
        lm.check_fits(len(row.ids) + len(answer_ids), f"prompts[{n}] plus the answer")
    ref = rows[0].ids
    # The hidden state at the last prompt token predicts the first answer token, so it is never shared.
    shared = [0] + [
        min(_common_prefix(ref, row.ids), len(row.ids) - 1) if reuse_prefix else 0 for row in rows[1:]
    ]
    return Job(
        request=request,
        rows=rows,
        answer_ids=answer_ids,
        target_fn=target_fn,
        capture=capture,
        layer_idx=layer_idx,
        shared=shared,
        n_features=m,
    )


def _finish(lm: LocalModel, job: Job) -> None:
    seconds = time.perf_counter() - job.started
    lengths = [len(r.ids) + len(job.answer_ids) for r in job.rows]
    n_tokens = sum(lengths)
    peak, peak_kind = peak_memory(lm.torch_device)
    job.result = ScoreResult(
        targets=job.targets,
        answer_logprobs=job.answer_lp,
        answer_tokens=[lm.tokenizer.decode([t]) for t in job.answer_ids],
        spans=job.spans,
        rotary_pairing=lm.rotary_pairing,
        n_sequences=len(job.rows),
        n_tokens=n_tokens,
        seconds=seconds,
        extras={
            "batches": job.batches,
            "mixed_batches": job.mixed_batches,
            "padding_fraction": 1.0 - job.computed / job.slots if job.slots else 0.0,
            "computed_tokens": job.computed,
            "reused_prefix_tokens": int(sum(job.shared)),
            "oom_splits": job.splits,
            "tokens_per_second": n_tokens / seconds if seconds > 0 else 0.0,
            "answer_token_count": len(job.answer_ids),
            "capture_layer": job.layer_idx,
            "device": lm.device,
            "dtype": lm.dtype,
            "peak_memory_bytes": peak,
            "peak_memory_kind": peak_kind,
        },
    )
    job.ref_kv = job.ref_lp = job.ref_capture = None  # free the caches as soon as the request is done


# --------------------------------------------------------------------------------------------------
# the scheduler

Item = tuple[Job, int]


class Scheduler:
    """Runs the rows of any number of jobs on one model, one micro-batch at a time per lane.

    New jobs' references go first (batched together); then every pending row of every job whose
    reference is done is sorted by (job age, suffix length) and the first micro-batch of that order
    runs, so a job's tail shares a batch with the next job's head.

    One thread: :meth:`step` (take, run, complete). Several lanes (:class:`ScoringQueue`): each calls
    :meth:`take` and :meth:`complete` under one lock it holds, and :meth:`run` without it, so
    micro-batches of different rows run at the same time. With ``lanes > 1`` a batch takes at most
    its share of the runnable rows, so the lanes have work to split.
    """

    def __init__(self, lm: LocalModel, *, lanes: int = 1) -> None:
        self.lm = lm
        self.lanes = check_lanes(lanes)
        self.jobs: list[Job] = []

    def add(self, job: Job) -> None:
        self.jobs.append(job)

    def __bool__(self) -> bool:
        return bool(self.jobs)

    def runnable(self) -> bool:
        """Whether :meth:`take` would return a batch now."""
        return any(self._has_runnable_rows(j) for j in self.jobs)

    @staticmethod
    def _has_runnable_rows(job: Job) -> bool:
        if job.done or not job.pending:
            return False
        return job.ref_done or (0 in job.pending)

    def take(self) -> tuple[list[Item], bool] | None:
        """The next micro-batch and whether it is a batch of references (``keep_cache``); its rows
        leave ``pending``. ``None`` when nothing can run now (no rows, or only rows waiting for a
        reference that another lane is computing)."""
        live = [j for j in self.jobs if not j.done]
        limits = self.lm.batch_limits
        fresh = [j for j in live if 0 in j.pending]
        if fresh:
            items: list[Item] = sorted(((j, 0) for j in fresh), key=lambda it: it[0].suffix_len(0))
            keep_cache = True
        else:
            items = [(j, r) for j in live if j.ref_done for r in sorted(j.pending, key=j.suffix_len)]
            keep_cache = False
            if not items:
                return None
            if self.lanes > 1:
                share = -(-len(items) // self.lanes)  # ceil: every lane gets a part
                limits = dataclasses.replace(limits, max_sequences=min(limits.max_sequences, share))
        batch = items[: len(pack_batches([j.suffix_len(r) for j, r in items], limits)[0])]
        for job, r in batch:
            job.pending.remove(r)
            job.inflight += 1
        return batch, keep_cache

    def complete(self, items: list[Item], *, keep_cache: bool) -> list[Job]:
        """Account for a batch :meth:`run` finished; returns the jobs that finished (result or error)
        and stops tracking them once none of their rows is in flight."""
        for job, _ in items:
            job.inflight -= 1
            if keep_cache and job.error is None:
                job.ref_done = True
        jobs = {id(j): j for j, _ in items}
        rows_per_job = Counter(id(j) for j, _ in items)
        finished: list[Job] = []
        for key, job in jobs.items():
            if job.error is None and job.request.on_progress is not None:
                with contextlib.suppress(Exception):  # a progress display must never fail scoring
                    job.request.on_progress(rows_per_job[key])
            if job.reported:
                continue
            if job.error is not None:
                job.pending.clear()  # a failed job runs no more rows
                if job.inflight:
                    continue  # another lane still runs rows on its caches; report when they are back
                job.ref_kv = job.ref_lp = job.ref_capture = None
            elif job.pending or job.inflight:
                continue
            else:
                try:
                    _finish(self.lm, job)
                except Exception as exc:  # decoding the answer tokens cannot fail for a live model
                    job.error = ScoringError(f"could not assemble the scores: {exc}")
            job.reported = True
            finished.append(job)
        self.jobs = [j for j in self.jobs if not (j.done and not j.inflight)]
        return finished

    def step(self) -> list[Job]:
        """Take, run and complete one micro-batch in this thread; returns the jobs that finished."""
        taken = self.take()
        if taken is None:
            return []
        items, keep_cache = taken
        self.run(items, keep_cache=keep_cache)
        return self.complete(items, keep_cache=keep_cache)

    def run_until_done(self) -> None:
        """Run every job to completion in this thread."""
        while self.runnable():
            self.step()

    def run(self, items: list[Item], *, keep_cache: bool) -> None:
        """Run one micro-batch taken by :meth:`take` and store its rows' results in their jobs.

        A batch out of memory is split in halves and retried (after the failed attempt's tensors
        are released). Any other failure of a batch that mixes several requests re-runs each
        request's rows alone, so only the request at fault fails. Never raises an ``Exception``:
        failures land in ``job.error``. Touches no scheduler state, so lanes call it without the
        scheduler's lock."""
        lm = self.lm
        out_of_memory: BaseException | None = None
        failure: AttribError | None = None
        try:
            with torch.inference_mode():
                _run_batch(lm, items, keep_cache=keep_cache)
            return
        except _OutOfMemory as exc:
            # Drop the traceback: its frames hold the failed attempt's activations and caches.
            out_of_memory = (exc.__cause__ or exc).with_traceback(None)
        except AttribError as exc:
            failure = exc
        except Exception as exc:
            failure = ScoringError(f"{lm.name} failed while scoring: {type(exc).__name__}: {exc}")
            failure.__cause__ = exc
        jobs = list({id(j): j for j, _ in items}.values())
        if out_of_memory is not None:
            if len(items) == 1:
                job = items[0][0]
                job.error = ScoringError(
                    f"out of memory scoring one {job.suffix_len(items[0][1])}-token sequence on "
                    f"{lm.device}; use a smaller model, a shorter prompt or another device"
                )
                job.error.__cause__ = out_of_memory
                return
            with _ACCOUNTING:
                for job in jobs:
                    job.splits += 1
            half = len(items) // 2
            self.run(items[:half], keep_cache=keep_cache)
            self.run(items[half:], keep_cache=keep_cache)
            return
        if len(jobs) > 1:
            for job in jobs:
                self.run([item for item in items if item[0] is job], keep_cache=keep_cache)
            return
        for job, _ in items:
            job.error = failure


#: Guards the per-job counters that concurrent lanes update after their batches.
_ACCOUNTING = threading.Lock()


class _OutOfMemory(Exception):
    """Internal: a batch did not fit in memory (carries the original error as ``__cause__``)."""


#: How allocators word running out of memory (CUDA/MPS, Windows, Linux CPU allocator).
_OOM_WORDS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(words in text for words in _OOM_WORDS)


def score_request(lm: LocalModel, request: ScoringRequest, *, reuse_prefix: bool = True) -> ScoreResult:
    """Score ``request.answer`` under every prompt with ``lm``, in the calling thread. Call with
    ``lm``'s lock held.

    See :class:`~attribsdk.scoring.base.ScoreResult` for the output. Raises :class:`InputError` for a
    malformed request, :class:`ContextWindowError` when a prompt plus the answer exceeds the model's
    context window, :class:`ConfigError` for an unknown target or capture layer, and
    :class:`ScoringError` when the model or a target/pooler fails.
    """
    job = prepare(lm, request, reuse_prefix=reuse_prefix)
    scheduler = Scheduler(lm)
    scheduler.add(job)
    scheduler.run_until_done()
    if job.error is not None:
        raise job.error
    assert job.result is not None
    return job.result


# --------------------------------------------------------------------------------------------------
# one micro-batch


#: One row's cached keys and values: per layer ``(keys, values)``, each ``[1, kv_heads, tokens, head_dim]``.
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


def prefixed_forward(
    lm: LocalModel,
    fed: Sequence[Sequence[int]],
    prefixes: Sequence[LayerKV] | None = None,
    *,
    keep: Sequence[int] | None = None,
    wanted: Iterable[tuple[int, str]] = (),
) -> tuple[torch.Tensor, list[LayerKV] | None, dict[tuple[int, str], torch.Tensor]]:
    """One decoder pass over rows that each continue their own cached prefix.

    Row ``b`` feeds the tokens ``fed[b]``, right-padded to the widest row. With ``prefixes``, it
    first attends to ``prefixes[b]``'s cached keys/values (``p_b`` tokens), right-aligned in a block
    of the longest prefix with the left padding masked out, and its tokens take positions
    ``p_b, p_b + 1, ...`` (explicit positions: padding never shifts RoPE, sliding windows stay exact).
    ``keep[b]`` (without prefixes): keep the first ``keep[b]`` fed tokens' keys/values of row ``b``
    for later rows to continue. ``wanted``: post-RoPE ``(layer, "query"|"key")`` tensors to record.

    Returns the hidden states ``[rows, width, hidden]`` of the fed positions, the kept caches
    (``None`` without ``keep``) and the recorded tensors (keys include the cached block).
    """
    from transformers import DynamicCache

    if keep is not None and prefixes is not None:
        raise ValueError("prefixed_forward: keep= is for rows without a cached prefix")
    dev = lm.torch_device
    n = len(fed)
    shared = [0] * n if prefixes is None else [int(kv[0][0].shape[-2]) if kv else 0 for kv in prefixes]
    lengths = [len(f) for f in fed]
    width, block = max(lengths), max(shared)
    ids = torch.full((n, width), lm.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, block + width), dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    for b, (f, p, s) in enumerate(zip(fed, shared, lengths, strict=True)):
        ids[b, :s] = torch.tensor(list(f), dtype=torch.long)
        mask[b, block - p : block + s] = 1
        positions[b] = torch.arange(p, p + width).clamp(max=p + s - 1)

    past: Any = None
    if prefixes is not None and block > 0:
        layers = []
        pads = [(0, 0, block - p, 0) for p in shared]
        pad = torch.nn.functional.pad
        for layer in range(len(next(kv for kv in prefixes if kv))):
            keys = [pad(kv[layer][0], lr) for kv, lr in zip(prefixes, pads, strict=True)]
            values = [pad(kv[layer][1], lr) for kv, lr in zip(prefixes, pads, strict=True)]
            layers.append((torch.cat(keys), torch.cat(values)))
        past = DynamicCache(ddp_cache_data=layers)
    elif keep is not None:
        past = DynamicCache()

    with recording(set(wanted)) as recorder:  # type: ignore[arg-type]
        out = lm.decoder(
            input_ids=_to(ids, dev),
            attention_mask=_to(mask, dev),
            position_ids=_to(positions, dev),
            past_key_values=past,
            use_cache=past is not None,
        )
    hidden: torch.Tensor = out[0]
    kept: list[LayerKV] | None = None
    if keep is not None:
        cache = out.past_key_values
        kept = [
            [
                (lay.keys[b : b + 1, :, :k].clone(), lay.values[b : b + 1, :, :k].clone())
                for lay in cache.layers
            ]
            for b, k in enumerate(keep)
        ]
    return hidden, kept, recorder.tensors


def _run_batch(lm: LocalModel, items: Sequence[Item], *, keep_cache: bool) -> None:
    """Run ``items`` as one forward pass and store their targets, log-probs and spans in their jobs.

    Row b feeds its suffix (tokens after its shared prefix) right-padded to the batch's widest
    suffix; its shared prefix comes from its job's reference cache, right-aligned in a block of the
    batch's longest shared prefix. ``keep_cache`` (reference rows only) keeps each row's keys/values.
    """
    dev = lm.torch_device
    shared = [job.shared[r] for job, r in items]
    seqs = [job.rows[r].ids + job.answer_ids for job, r in items]
    fed = [seq[p:] for seq, p in zip(seqs, shared, strict=True)]
    suffixes = [len(f) for f in fed]
    width = max(suffixes)
    prefixes: list[LayerKV] | None = None
    if max(shared) > 0:
        prefixes = []
        for (job, _), p in zip(items, shared, strict=True):
            assert job.ref_kv is not None
            prefixes.append([(k[:, :, :p], v[:, :, :p]) for k, v in job.ref_kv])
    keep = [job.prompt_len(r) for job, r in items] if keep_cache else None
    wanted = {(int(job.layer_idx or 0), job.capture.which) for job, _ in items if job.capture is not None}
    try:
        hidden, kept, recorded_tensors = prefixed_forward(lm, fed, prefixes, keep=keep, wanted=wanted)
        if kept is not None:
            for (job, _), kv in zip(items, kept, strict=True):
                job.ref_kv = kv

        # Spans. The fed tokens are the last ``width`` positions of the recorded tensor (keys also
        # hold the cached block before them, queries do not); a row's shared prefix is the
        # reference's, recorded when the reference ran.
        for b, (job, r) in enumerate(items):
            if job.capture is None or job.spans is None:
                continue
            tensor = recorded_tensors.get((int(job.layer_idx or 0), job.capture.which))
            if tensor is None:
                raise ScoringError(
                    f"layer {job.layer_idx} produced no {job.capture.which} vectors to capture"
                )
            p, length = shared[b], job.prompt_len(r)
            start = tensor.shape[-2] - width
            recorded = tensor[b, :, start : start + length - p].float().cpu().numpy()  # [heads, fed, D]
            if keep_cache:
                job.ref_capture = recorded
            if p:
                assert job.ref_capture is not None
                recorded = np.concatenate([job.ref_capture[:, :p], recorded], axis=1)
            job.spans[r] = span_embeddings(
                recorded, job.rows[r].features, job.capture.pool, lm.rotary_pairing
            )

        # Answer head, grouped by job (answers differ between jobs).
        groups: dict[int, list[int]] = {}
        for b, (job, _) in enumerate(items):
            groups.setdefault(id(job), []).append(b)
        for members in groups.values():
            job = items[members[0]][0]
            if job.answer_t is None:
                job.answer_t = torch.tensor(job.answer_ids, dtype=torch.long, device=dev)
            t = len(job.answer_ids)
            gather = torch.stack(
                [
                    torch.arange(
                        job.prompt_len(items[b][1]) - 1 - shared[b],
                        job.prompt_len(items[b][1]) - 1 - shared[b] + t,
                    )
                    for b in members
                ]
            ).to(dev)
            rows_hidden = hidden[torch.as_tensor(members, device=dev)]
            answer_hidden = rows_hidden.gather(1, gather.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            _score_rows(lm, job, [items[b][1] for b in members], answer_hidden)
    except torch.cuda.OutOfMemoryError as exc:
        raise _OutOfMemory() from exc
    except RuntimeError as exc:
        if _is_oom(exc):
            raise _OutOfMemory() from exc
        raise

    # Accounting (after success, so a split-and-retried batch is counted once per piece that ran).
    jobs = {id(job): job for job, _ in items}
    with _ACCOUNTING:
        for job in jobs.values():
            job.batches += 1
            if len(jobs) > 1:
                job.mixed_batches += 1
        for (job, _), s in zip(items, suffixes, strict=True):
            job.slots += width
            job.computed += s


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device copy; pinned and non-blocking on CUDA."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _score_rows(lm: LocalModel, job: Job, rows: list[int], answer_hidden: torch.Tensor) -> None:
    """Log-probs, targets and picked answer log-probs of ``rows`` (all of ``job``)."""
    t = len(job.answer_ids)
    answer_t = job.answer_t
    assert answer_t is not None
    chunk = max(1, lm.batch_limits.max_logit_elements // (t * lm.vocab_size))
    for lo in range(0, len(rows), chunk):
        idx = rows[lo : lo + chunk]
        logprobs = head_logprobs(lm, answer_hidden[lo : lo + chunk])  # [b, T, V] float32
        if job.ref_lp is None:
            if idx[0] != 0:
                raise ScoringError("internal: a perturbed row ran before its reference")
            job.ref_lp = logprobs[0].clone()
        values = job.target_fn(job.ref_lp, logprobs, answer_t)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (len(idx),):
            raise ScoringError(
                f"target {job.request.target!r} returned {getattr(values, 'shape', type(values))}, "
                f"expected a tensor of shape ({len(idx)},)"
            )
        job.targets[idx] = values.double().cpu().numpy()
        picked = logprobs.gather(-1, answer_t.view(1, -1, 1).expand(len(idx), -1, 1)).squeeze(-1)
        job.answer_lp[idx] = picked.double().cpu().numpy()


def head_logprobs(lm: LocalModel, hidden: torch.Tensor) -> torch.Tensor:
    """LM head (+ final logit soft-capping if the model has it) and float32 log-softmax:
    ``[..., hidden]`` -> ``[..., V]``."""
    logits: torch.Tensor = lm.head_logits(hidden)
    return torch.log_softmax(logits, dim=-1)
