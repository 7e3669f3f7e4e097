"""The scoring engine's work-saving paths give the same numbers as the plain ones.

Shared-prefix reuse (every row attends to the reference's cached keys/values), cross-request
batching (one scheduler, rows of several requests in one micro-batch), the threaded queue, and the
out-of-memory split -- each checked against the no-reuse / one-request / unsplit path in float32.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

from attribsdk.errors import ModelLoadError, ScoringError
from attribsdk.locality import PolarSpan, polar_pool
from attribsdk.prompt import RenderedPrompt, build_prompt
from attribsdk.scoring.base import CaptureSpec, ScoreResult, ScoringRequest
from attribsdk.scoring.engine import BatchLimits, Scheduler, prepare, score_request
from attribsdk.scoring.models import LocalModel
from attribsdk.scoring.targets import register_target
from tests.tiny_models import tiny_gemma3, tiny_local_model, tiny_tokenizer

CONTEXT = (
    "The capital of France is Paris. Berlin is the capital of Germany. "
    "The cat sat on the mat. Water boils at 100 degrees. Marie Curie won two Nobel prizes."
)
QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."


def masks(m: int, n: int, seed: int = 0) -> list[list[bool]]:
    rng = np.random.default_rng(seed)
    rows = [[True] * m] + [[bool(x) for x in rng.random(m) < 0.6] for _ in range(n - 1)]
    rows[1] = [True] * (m - 1) + [False]  # shares everything but the last feature with the reference
    rows[2] = [False] + [True] * (m - 1)  # shares only the template with it
    return rows


def prompts(seed: int = 0, n: int = 12, question: str = QUESTION) -> list[RenderedPrompt]:
    prompt = build_prompt(question, CONTEXT, system="You are a helpful assistant.")
    return [prompt.render(mask) for mask in masks(prompt.n_features, n, seed)]


def assert_same(a: ScoreResult, b: ScoreResult, atol: float = 1e-4) -> None:
    np.testing.assert_allclose(a.targets, b.targets, atol=atol)
    np.testing.assert_allclose(a.answer_logprobs, b.answer_logprobs, atol=atol)
    assert a.answer_tokens == b.answer_tokens
    assert (a.spans is None) == (b.spans is None)
    if a.spans is not None and b.spans is not None:
        for row_a, row_b in zip(a.spans, b.spans, strict=True):
            for x, y in zip(row_a, row_b, strict=True):
                assert (x is None) == (y is None)
                if isinstance(x, PolarSpan):
                    assert isinstance(y, PolarSpan)
                    np.testing.assert_allclose(x.magnitude, y.magnitude, atol=atol)
                    np.testing.assert_allclose(np.exp(1j * x.phase), np.exp(1j * y.phase), atol=atol)
                elif x is not None:
                    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


@pytest.fixture(scope="module")
def lm() -> LocalModel:
    return tiny_local_model()


@pytest.mark.parametrize("which", ["key", "query"])
@pytest.mark.parametrize("target", ["kl", "delta_nll"])
def test_prefix_reuse_equals_full_recompute(lm: LocalModel, which: str, target: str) -> None:
    capture = CaptureSpec(layer=1, which=which)  # type: ignore[arg-type]
    request = ScoringRequest(prompts=prompts(), answer=ANSWER, target=target, capture=capture)
    with lm.forward_lock:
        reused = score_request(lm, request, reuse_prefix=True)
        full = score_request(lm, request, reuse_prefix=False)
    assert reused.extras["reused_prefix_tokens"] > 0 and full.extras["reused_prefix_tokens"] == 0
    assert reused.extras["computed_tokens"] < full.extras["computed_tokens"]
    assert reused.n_tokens == full.n_tokens  # nominal tokens are the same work
    assert_same(reused, full)
    # raw vectors (no pooling) per span: [n_tok, heads, head_dim]
    heads = 2 if which == "key" else 4
    first = next(v for v in reused.spans[1] if v is not None)  # type: ignore[index]
    assert first.shape[1:] == (heads, 16)


def test_prefix_reuse_with_pooled_spans_and_any_batch_shape(lm: LocalModel) -> None:
    request = ScoringRequest(
        prompts=prompts(seed=3, n=16), answer=ANSWER, capture=CaptureSpec(layer=0, pool=polar_pool)
    )
    with lm.forward_lock:
        base = score_request(lm, request, reuse_prefix=False)
        old = lm.batch_limits
        try:
            for limits in (
                BatchLimits(max_sequences=1),
                BatchLimits(max_sequences=3),
                BatchLimits(max_tokens=60),
            ):
                lm.batch_limits = limits
                assert_same(score_request(lm, request), base)
        finally:
            lm.batch_limits = old


def test_prefix_reuse_is_exact_under_sliding_window_attention() -> None:
    # A prompt much longer than the 8-token window: the right-aligned cache block must keep the
    # window's relative distances exact for rows with short and long shared prefixes alike.
    tok = tiny_tokenizer()
    lm = LocalModel(tiny_gemma3(len(tok), sliding_window=8), tok, name="tiny-gemma3")
    request = ScoringRequest(prompts=prompts(seed=1), answer=ANSWER, capture=CaptureSpec(layer=0))
    with lm.forward_lock:
        reused = score_request(lm, request, reuse_prefix=True)
        full = score_request(lm, request, reuse_prefix=False)
    assert reused.extras["reused_prefix_tokens"] > 8 * (len(request.prompts) - 1)
    assert_same(reused, full)
    # and the no-reuse path is the textbook forward (one unpadded sequence, full logits)
    from attribsdk.scoring.engine import tokenize_prompt

    answer_ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    for n in (0, 1, 2, 5):
        ids = tokenize_prompt(lm, request.prompts[n]).ids
        with torch.inference_mode():
            logits = lm.model(torch.tensor([ids + answer_ids])).logits[0].float()
        lp = torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(answer_ids)], -1)
        picked = lp.gather(-1, torch.tensor(answer_ids)[:, None]).squeeze(-1).double().numpy()
        np.testing.assert_allclose(reused.answer_logprobs[n], picked, atol=1e-4)


def test_one_scheduler_mixes_requests_and_matches_separate_runs(lm: LocalModel) -> None:
    requests = [
        ScoringRequest(prompts=prompts(seed=0, n=5), answer=ANSWER, capture=CaptureSpec(layer=1)),
        ScoringRequest(
            prompts=prompts(seed=1, n=4, question="Where is Berlin?"), answer="Berlin is in Germany."
        ),
        ScoringRequest(prompts=prompts(seed=2, n=3), answer="Paris.", target="delta_nll"),
    ]
    with lm.forward_lock:
        alone = [score_request(lm, r) for r in requests]
        scheduler = Scheduler(lm)
        jobs = [prepare(lm, r) for r in requests]
        for job in jobs:
            scheduler.add(job)
        finished = []
        while scheduler:
            finished += scheduler.step()
    assert {id(j) for j in finished} == {id(j) for j in jobs}
    for job, ref in zip(jobs, alone, strict=True):
        assert job.error is None and job.result is not None
        assert_same(job.result, ref)
    assert sum(j.result.extras["mixed_batches"] for j in jobs if j.result) > 0
    # the three references ran together in the first batch, then 9 rows in two mixed batches
    assert all(j.result.extras["batches"] <= 3 for j in jobs if j.result)


class _OomBelow:
    """Wraps a decoder: raises an out-of-memory error for batches of more than ``rows`` rows."""

    def __init__(self, decoder: Any, rows: int, message: str) -> None:
        self.decoder, self.rows, self.message = decoder, rows, message
        self.calls: list[int] = []

    def __call__(self, **kw: Any) -> Any:
        n = int(kw["input_ids"].shape[0])
        self.calls.append(n)
        if n > self.rows:
            raise RuntimeError(self.message)
        return self.decoder(**kw)


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory",
        "[enforce fail at alloc_cpu.cpp:124] DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 9437184000 bytes. Error code 12 (Cannot allocate memory)",
    ],
)
def test_out_of_memory_batch_is_split_and_retried(message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lm = tiny_local_model()
    request = ScoringRequest(prompts=prompts(n=10), answer=ANSWER, capture=CaptureSpec(layer=1))
    with lm.forward_lock:
        base = score_request(lm, request)
    assert base.extras["oom_splits"] == 0
    wrapper = _OomBelow(lm.decoder, 2, message)
    monkeypatch.setattr(LocalModel, "decoder", property(lambda self: wrapper))
    with lm.forward_lock:
        split = score_request(lm, request)
    assert split.extras["oom_splits"] > 0
    assert max(n for n in wrapper.calls if n <= 2) <= 2 and max(wrapper.calls) > 2  # tried big, ran small
    assert_same(split, base)
    # a single row that does not fit fails that request with a clear error, nothing crashes
    wrapper.rows = 0
    with lm.forward_lock, pytest.raises(ScoringError, match="out of memory scoring one"):
        score_request(lm, request)


def test_queue_batches_concurrent_callers_and_matches(lm: LocalModel) -> None:
    lm = tiny_local_model()
    requests = [
        ScoringRequest(prompts=prompts(seed=s, n=6), answer=ANSWER if s % 2 else "Paris.") for s in range(6)
    ]
    with lm.forward_lock:
        alone = [score_request(lm, r) for r in requests]
    results: list[ScoreResult | None] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = lm.score(requests[i])

    with lm.forward_lock:  # hold the model so every request is queued before the first batch runs
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for _ in range(200):
            if len(lm.queue._incoming) == len(requests):
                break
            threading.Event().wait(0.01)
    for t in threads:
        t.join()
    for got, ref in zip(results, alone, strict=True):
        assert got is not None
        assert_same(got, ref)
    stats = lm.queue.stats
    assert stats.jobs == len(requests) and stats.max_jobs_in_flight == len(requests)
    assert stats.batches < sum(r.extras["batches"] for r in alone)  # fewer, fuller batches


def test_one_failing_request_fails_alone_and_the_queue_lives_on() -> None:
    def broken(ref: torch.Tensor, rows: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
        raise KeyError("a bug in a user's target")

    register_target("test-broken", broken, replace=True)
    lm = tiny_local_model()
    good = [ScoringRequest(prompts=prompts(seed=s, n=5), answer=ANSWER) for s in range(2)]
    bad = ScoringRequest(prompts=prompts(seed=9, n=5), answer=ANSWER, target="test-broken")
    with lm.forward_lock:
        alone = [score_request(lm, r) for r in good]
    with lm.forward_lock:  # queue all three so their references share the first batch
        futures = [lm.queue.submit(r) for r in (good[0], bad, good[1])]
    with pytest.raises(ScoringError, match="KeyError"):
        futures[1].result(timeout=60)
    assert_same(futures[0].result(timeout=60), alone[0])
    assert_same(futures[2].result(timeout=60), alone[1])
    assert_same(lm.score(good[0]), alone[0])  # the queue still serves
    lm.close()


def test_lanes_leave_torchs_thread_count_as_they_found_it() -> None:
    before = torch.get_num_threads()
    if before < 2:
        pytest.skip("needs 2 torch threads for lanes with fewer threads each")
    lm = tiny_local_model(lanes=2)
    requests = [ScoringRequest(prompts=prompts(seed=s, n=8), answer=ANSWER) for s in range(3)]
    threads = [threading.Thread(target=lm.score, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen: list[int] = []
    probe = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    assert seen == [before] and torch.get_num_threads() == before
    lm.close()


def test_closing_the_model_fails_queued_requests(lm: LocalModel) -> None:
    lm = tiny_local_model()
    request = ScoringRequest(prompts=prompts(n=6), answer=ANSWER)
    lm.score(request)  # starts the worker
    with lm.forward_lock:
        future = lm.queue.submit(request)
        closer = threading.Thread(target=lm.close)
        closer.start()
        for _ in range(200):
            if lm.queue._closed if lm._queue else True:
                break
            threading.Event().wait(0.01)
    closer.join()
    with pytest.raises(ModelLoadError):
        future.result(timeout=10)
    with pytest.raises(ModelLoadError):
        lm.score(request)


def _slow_forward(lm: LocalModel, seconds: float) -> Any:
    """Make every decoder pass take at least ``seconds`` (so lanes visibly overlap)."""

    def hook(*_: Any) -> None:
        threading.Event().wait(seconds)

    return lm.model.get_decoder().register_forward_hook(hook)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_run_batches_side_by_side_with_identical_results(lanes: int) -> None:
    lm = tiny_local_model(lanes=lanes)
    lm.batch_limits = BatchLimits(max_sequences=3, max_tokens=10_000)
    requests = [
        ScoringRequest(
            prompts=prompts(seed=s, n=8),
            answer=ANSWER if s % 2 else "Paris.",
            capture=CaptureSpec(layer=1) if s == 0 else None,
            target="delta_nll" if s == 2 else "kl",
        )
        for s in range(4)
    ]
    with lm.forward_lock:
        alone = [score_request(lm, r) for r in requests]
    hook = _slow_forward(lm, 0.05)
    try:
        results: list[ScoreResult | None] = [None] * len(requests)

        def worker(i: int) -> None:
            results[i] = lm.score(requests[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        hook.remove()
    for got, ref in zip(results, alone, strict=True):
        assert got is not None
        assert_same(got, ref)
        assert got.extras["computed_tokens"] == ref.extras["computed_tokens"]
    assert lm.lanes == lanes and lm.queue.lanes == lanes
    assert lm.queue.stats.max_lanes_busy == lanes  # every lane had a batch while the others ran
    lm.close()


def test_a_single_request_is_split_between_lanes() -> None:
    lm = tiny_local_model(lanes=2)
    request = ScoringRequest(prompts=prompts(n=12), answer=ANSWER)
    with lm.forward_lock:
        alone = score_request(lm, request)
    hook = _slow_forward(lm, 0.05)
    try:
        got = lm.score(request)
    finally:
        hook.remove()
    assert_same(got, alone)
    # 11 perturbed rows fit one default batch; with 2 lanes each takes at most half of them.
    assert lm.queue.stats.max_lanes_busy == 2 and got.extras["batches"] >= 3
    lm.close()


def test_generation_waits_for_scoring_lanes_and_is_not_starved() -> None:
    lm = tiny_local_model(lanes=2)
    lm.batch_limits = BatchLimits(max_sequences=1, max_tokens=10_000)  # many short batches
    hook = _slow_forward(lm, 0.02)
    try:
        future = lm.queue.submit(ScoringRequest(prompts=prompts(n=12), answer=ANSWER))
        while not lm.forward_lock.locked():
            threading.Event().wait(0.005)
        with lm.forward_lock:  # exclusive: waits for the lanes' batches, then holds them off
            assert not future.done()
            held_batches = lm.queue.stats.batches
            threading.Event().wait(0.1)
            assert lm.queue.stats.batches == held_batches  # no batch ran while held exclusively
        assert future.result(timeout=30).targets.shape == (12,)
    finally:
        hook.remove()
    lm.close()


def test_closing_with_lanes_fails_queued_requests() -> None:
    lm = tiny_local_model(lanes=2)
    request = ScoringRequest(prompts=prompts(n=6), answer=ANSWER)
    lm.score(request)  # starts the lanes
    with lm.forward_lock:
        futures = [lm.queue.submit(request) for _ in range(3)]
        closer = threading.Thread(target=lm.close)
        closer.start()
        for _ in range(200):
            if lm._queue is None:
                break
            threading.Event().wait(0.01)
    closer.join()
    for future in futures:
        with pytest.raises(ModelLoadError):
            future.result(timeout=10)


@pytest.mark.parametrize("lanes", [1, 2])
def test_progress_counts_every_scored_prompt_once(lanes: int) -> None:
    lm = tiny_local_model(lanes=lanes)
    lm.batch_limits = BatchLimits(max_sequences=3, max_tokens=10_000)  # several batches per request
    ticks: list[int] = []
    lock = threading.Lock()

    def on_progress(n: int) -> None:
        with lock:
            ticks.append(n)

    request = ScoringRequest(prompts=prompts(n=10), answer=ANSWER, on_progress=on_progress)
    result = lm.score(request)
    assert sum(ticks) == 10 == result.n_sequences and len(ticks) == result.extras["batches"]
    assert max(ticks) <= 3  # told per micro-batch, not once at the end

    def broken(n: int) -> None:
        raise RuntimeError("display gone")

    again = lm.score(ScoringRequest(prompts=prompts(n=10), answer=ANSWER, on_progress=broken))
    np.testing.assert_allclose(again.targets, result.targets, rtol=1e-6, atol=1e-7)  # scoring unaffected
    lm.close()


def test_lanes_must_be_positive() -> None:
    from attribsdk.errors import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="lanes"):
            tiny_local_model(lanes=bad)  # type: ignore[arg-type]
