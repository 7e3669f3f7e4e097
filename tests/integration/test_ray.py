"""The Ray engine on a local Ray cluster started here (several actor processes on this machine).

A tiny random Llama saved to a directory is the surrogate, so every actor loads real weights with
``load_model``. Actor deaths are real: an actor process is frozen (SIGSTOP) while requests are
queued on it, then killed (SIGKILL), so the loss of unfinished work is certain, not a race.
Skipped when Ray is not installed; fails instead under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from attribsdk import ConfigError, Explainer, Explanation, ScoringError
from attribsdk.adapters.wrappers import TestModel
from attribsdk.cache import CachedModel, DiskCache
from attribsdk.errors import AttribError
from attribsdk.eval.bench import BenchConfig, arun_benchmark, parse_method_specs
from attribsdk.eval.datasets import load_jsonl
from attribsdk.prompt import Example, build_prompt
from attribsdk.scoring.base import CaptureSpec, ScoringRequest
from tests.tiny_models import tiny_local_model

try:
    import ray
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("Ray is not installed (pip install 'attribsdk[ray]')", allow_module_level=True)

from attribsdk.scoring.ray import RayScorer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::attribsdk.cost.UnknownPriceWarning"),
    pytest.mark.timeout(300),
]

SENTENCES = [
    "The capital of France is Paris.",
    "Paris is a large city on the Seine.",
    "Berlin is the capital of Germany.",
    "The cat sat on the mat in the sun.",
    "Marie Curie won two Nobel prizes.",
    "Water boils at 100 degrees at sea level.",
    "The quick brown fox jumps over the lazy dog.",
]
QUESTIONS = [
    "What is the capital of France?",
    "Which river runs through Paris?",
    "What is the capital of Germany?",
    "Where did the cat sit?",
    "How many Nobel prizes did Marie Curie win?",
    "At what temperature does water boil?",
]


def _examples(answer: bool = True) -> list[Example]:
    return [
        Example(
            id=f"e{i}",
            question=q,
            context=" ".join(SENTENCES[i:] + SENTENCES[:i]),
            answer="Paris is the capital." if answer else None,
        )
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of 3 CPU slots for this module (each actor takes one)."""
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lm = tiny_local_model(seed=3, context=2048)
    path = tmp_path_factory.mktemp("ray") / "tiny"
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def local_results(model_dir: Path) -> list[Explanation]:
    """The local engine's explanations of the examples: what every Ray run must reproduce."""

    async def run() -> list[Explanation | AttribError]:
        async with Explainer(closed=TestModel("Paris is the capital."), surrogate=str(model_dir),
                             device="cpu", cache=False) as ex:  # fmt: skip
            return await ex.explain_many(_examples(), concurrency=6)

    results = anyio.run(run)
    assert all(isinstance(r, Explanation) for r in results)
    return [r for r in results if isinstance(r, Explanation)]


def _assert_same(got: Explanation, want: Explanation) -> None:
    assert got.answer == want.answer and got.seed == want.seed
    assert [f.text for f in got.features] == [f.text for f in want.features]
    np.testing.assert_allclose(got.coefficients, want.coefficients, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-4, atol=1e-5)


async def _run_and_kill(
    ex: Explainer, pool: RayScorer, victim: int, *, after_results: int = 1
) -> list[Explanation | AttribError]:
    """explain_many over the examples while actor ``victim`` is frozen; once it holds queued
    requests and ``after_results`` examples have finished elsewhere, kill it."""
    pid = pool.actors[victim].pid
    os.kill(pid, signal.SIGSTOP)
    finished = 0

    def on_result(_i: int, _r: Any) -> None:
        nonlocal finished
        finished += 1

    try:
        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:

                async def killer() -> None:
                    while not (pool.in_flight()[victim] >= 1 and finished >= after_results):
                        await anyio.sleep(0.05)
                    os.kill(pid, signal.SIGKILL)

                tg.start_soon(killer)
                results = await ex.explain_many(_examples(), concurrency=6, on_result=on_result)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return results


# -- tests -----------------------------------------------------------------------------------------


async def test_explain_many_on_ray_equals_local(
    cluster: None, model_dir: Path, local_results: list[Explanation]
) -> None:
    closed = TestModel("Paris is the capital.")
    with anyio.CancelScope() as scope:
        async with Explainer(closed=closed, surrogate=str(model_dir), device="cpu", cache=False) as ex:
            results = await ex.explain_many(
                _examples(answer=False), concurrency=6, engine="ray", ray_actors=2
            )
            pool = ex._ray
            assert pool is not None and pool.num_actors == 2
            assert (pool.device, pool.dtype) == ("cpu", "float32")  # as bench rows record it
            assert pool.stats.finished == 6 and pool.stats.restarts == 0
            # the closed model was called here, in the driver, once per example
            assert len(closed.calls) == 6 and ex.cost_report().closed_calls == 6
            again = await ex.explain_many(_examples()[:2], engine="ray")  # the pool is kept
            assert ex._ray is pool and pool.stats.finished == 8
            assert all(isinstance(r, Explanation) for r in again)
            scope.cancel()  # the block is left cancelled: closing must still stop the actors
    assert ex._ray is None and pool is not None and pool._closed  # aclose stopped the actors
    assert len(results) == 6
    for got, want in zip(results, local_results, strict=True):
        assert isinstance(got, Explanation)
        _assert_same(got, want)
    assert {r.engine["ray_actor"] for r in results if isinstance(r, Explanation)} == {0, 1}


async def test_killed_actor_restarts_and_its_examples_are_retried(
    cluster: None, model_dir: Path, local_results: list[Explanation]
) -> None:
    with RayScorer(str(model_dir), num_actors=2, device="cpu", max_task_retries=3) as pool:
        old_pid = pool.actors[0].pid
        async with Explainer(closed=TestModel("unused"), surrogate=pool, cache=False) as ex:
            results = await _run_and_kill(ex, pool, victim=0)
        for got, want in zip(results, local_results, strict=True):
            assert isinstance(got, Explanation), got
            _assert_same(got, want)
        assert pool.stats.restarts == 1 and pool.stats.dead == 0 and pool.stats.failed == 0
        assert pool.actors[0].pid != old_pid and pool.actor_pids()[0] == pool.actors[0].pid
        assert pool.stats.per_actor[0] >= 1  # the retried requests finished on the restarted actor


async def test_exhausted_retries_fail_only_that_actors_examples_then_failover(
    cluster: None, model_dir: Path, local_results: list[Explanation]
) -> None:
    with RayScorer(str(model_dir), num_actors=3, device="cpu", max_restarts=0, failover=0) as pool:
        async with Explainer(closed=TestModel("unused"), surrogate=pool, cache=False) as ex:
            results = await _run_and_kill(ex, pool, victim=0, after_results=4)
            failed = [r for r in results if not isinstance(r, Explanation)]
            assert 1 <= len(failed) <= 2  # what was queued on actor 0: the others are kept
            for err in failed:
                assert isinstance(err, ScoringError) and "Ray actor 0" in err.message
                assert err.partial["completion"].text == "Paris is the capital."
            for got, want in zip(results, local_results, strict=True):
                if isinstance(got, Explanation):
                    _assert_same(got, want)
            assert pool.stats.dead == 1 and pool.stats.failed == len(failed)

            # with failover, the requests of the next actor to die go to the survivor
            pool.failover = 1
            again = await _run_and_kill(ex, pool, victim=1)
        assert all(isinstance(r, Explanation) for r in again)
        assert pool.stats.dead == 2 and pool.stats.resubmitted >= 1
        assert [a.alive for a in pool.actors] == [False, False, True]


async def test_cancelled_bench_resumes_without_paying_twice(
    cluster: None, model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    with data.open("w") as fh:
        for ex in _examples(answer=False):
            assert isinstance(ex.context, str)
            record = {"id": ex.id, "question": ex.question, "context": ex.context, "gold": [0]}
            fh.write(json.dumps(record) + "\n")
    examples = list(load_jsonl(data))
    config = BenchConfig(
        dataset="jsonl", split="all", methods=tuple(parse_method_specs(["rope-lime-loo"])), concurrency=2,
        surrogates=("tiny",), device="cpu",
    )  # fmt: skip
    cache = DiskCache(tmp_path / "cache")
    out = tmp_path / "bench"
    first = TestModel("Paris is the capital.")
    with RayScorer(str(model_dir), num_actors=2, device="cpu") as pool:
        with anyio.CancelScope() as scope:  # cancelled as the first row lands, like Ctrl-C
            await arun_benchmark(
                config, out, closed=CachedModel(first, cache), surrogates={"tiny": pool},
                examples=examples, report=False, on_row=lambda _row: scope.cancel(),
            )  # fmt: skip
        assert scope.cancelled_caught
        rows_before = (out / "rows.jsonl").read_text().count("\n")
        assert 1 <= rows_before < 6
        second = TestModel("Paris is the capital.")
        result = await arun_benchmark(
            config, out, closed=CachedModel(second, cache), surrogates={"tiny": pool},
            examples=examples, report=False, resume=True,
        )  # fmt: skip
    assert len(result.rows) == 6 and not result.errors and result.skipped == rows_before
    # rows scored by the pool record its actors' device and dtype (the resume check compares them)
    assert {(r["runtime"]["device"], r["runtime"]["dtype"]) for r in result.rows[rows_before:]} == {
        ("cpu", "float32")
    }
    # every example's closed answer was paid for exactly once over both runs
    assert len(first.calls) + len(second.calls) == 6
    assert len(second.calls) < 6


def test_cli_bench_run_with_ray_address(cluster: None, model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from attribsdk.eval.cli import app

    data = tmp_path / "data.jsonl"
    with data.open("w") as fh:
        for ex in _examples()[:3]:
            record = {"id": ex.id, "question": ex.question, "context": ex.context, "gold": [0],
                      "answer": ex.answer}  # fmt: skip
            fh.write(json.dumps(record) + "\n")
    args = ["run", "--dataset", "jsonl", "--data", str(data), "--split", "all", "--answers", "reference",
            "--surrogate", str(model_dir), "--device", "cpu", "--out", str(tmp_path / "out"),
            "--no-progress", "--methods", "rope-lime",
            "--ray-address", "auto", "--ray-actors", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 rows computed" in result.output and "1 Ray actor" in result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "rows.jsonl").read_text().splitlines()]
    assert {r["surrogate"] for r in rows} == {str(model_dir)}

    from attribsdk.compare_cli import app as compare_app

    args = ["--out", str(tmp_path / "cmp"), "--dataset", "jsonl", "--data", str(data), "--split", "all",
            "--n", "3", "--method", "rope-lime", "--closed", f"local:{model_dir}", "--max-tokens", "4",
            "--surrogate", str(model_dir), "--device", "cpu",
            "--ray-address", "auto", "--ray-actors", "1"]  # fmt: skip
    result = CliRunner().invoke(compare_app, args)
    assert result.exit_code == 0, result.output
    assert "1 Ray actor" in result.output
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["methods"][0]["n_ok"] == 3 and report["methods"][0]["closed_calls"] == 3


def test_local_path_never_imports_ray_and_missing_ray_is_a_config_error(model_dir: Path) -> None:
    code = f"""
import sys, anyio
import attribsdk
from attribsdk import Explainer
from attribsdk.adapters.wrappers import TestModel
import attribsdk.scoring.ray, attribsdk.eval.cli, attribsdk.compare_cli

async def main():
    async with Explainer(closed=TestModel("Paris is the capital."), surrogate={str(model_dir)!r},
                         device="cpu") as ex:
        res = await ex.explain_many([dict(question="What is the capital of France?",
                                          context="The capital of France is Paris. Berlin is in Germany.")])
    assert type(res[0]).__name__ == "Explanation", res
anyio.run(main)
assert "ray" not in sys.modules, "the local path imported ray"
sys.modules["ray"] = None  # as if it were not installed
from attribsdk.errors import ConfigError
try:
    attribsdk.scoring.ray.RayScorer("smollm2")
except ConfigError as exc:
    assert "pip install 'attribsdk[ray]'" in exc.message, exc.message
else:
    raise AssertionError("no ConfigError")
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_unshippable_scorer_and_bad_options_are_config_errors(cluster: None) -> None:
    lm = tiny_local_model(seed=3)
    with pytest.raises(ConfigError, match="cannot be shipped to Ray actors"):
        RayScorer(lm)
    with pytest.raises(ConfigError, match="num_actors"):
        RayScorer("smollm2", num_actors=0)
    with pytest.raises(ConfigError, match="engine"):
        Explainer(engine="spark")  # type: ignore[arg-type]


def test_a_request_that_cannot_be_sent_fails_typed_and_frees_the_actor(
    cluster: None, model_dir: Path
) -> None:
    held = threading.Lock()

    def pooler(vectors: Any, pairing: Any) -> Any:  # holds a lock: Ray cannot serialise it
        with held:
            return vectors

    request = ScoringRequest(
        prompts=[build_prompt("Q?", "A b.").render()], answer="A.", capture=CaptureSpec(layer=0, pool=pooler)
    )
    with RayScorer(str(model_dir), num_actors=1, device="cpu") as pool:
        with pytest.raises(ScoringError, match=r"(?i)pickle"):
            pool.score(request)
        assert pool.actors[0].in_flight == 0 and pool.stats.failed == 1

        # a progress callback (here one holding a lock, so it could not travel) stays in this
        # process and is told when the result is back
        ticks: list[int] = []

        def on_progress(n: int) -> None:
            with held:
                ticks.append(n)

        two = build_prompt("Q?", "Paris is large. It is on the Seine.")
        rendered = [two.render(), two.render([True, False])]
        result = pool.score(ScoringRequest(prompts=rendered, answer="A.", on_progress=on_progress))
        assert ticks == [2] and result.n_sequences == 2 and pool.stats.finished == 1


def _two_row_request() -> ScoringRequest:
    two = build_prompt("Q?", "Paris is large. It is on the Seine.")
    return ScoringRequest(prompts=[two.render(), two.render([True, False])], answer="A.")


def _until(predicate: Any, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _score_killing(pool: RayScorer, request: ScoringRequest, victim: int = 0) -> Any:
    """``pool.score(request)`` sent to the frozen actor ``victim``, which is killed once the request
    is queued on it; the result (or the test fails)."""
    pid = pool.actors[victim].pid
    os.kill(pid, signal.SIGSTOP)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(pool.score(request)))
    thread.start()
    _until(lambda: pool.in_flight()[victim] == 1)
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert got, "the request did not come back"
    return got[0]


def test_an_actor_that_does_not_answer_is_set_aside_until_it_answers_again(
    cluster: None, model_dir: Path
) -> None:
    request = _two_row_request()
    with RayScorer(str(model_dir), num_actors=2, device="cpu", request_timeout=3, failover=0) as pool:
        pid = pool.actors[0].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ScoringError, match=r"Ray actor 0 .* did not answer within 3 s"):
                pool.score(request)  # actor 0 is the least loaded
            assert time.monotonic() - t0 < 30
            assert [a.alive for a in pool.actors] == [False, True] and pool.stats.timeouts == 1
            assert pool.score(request).extras["ray_actor"] == 1  # the frozen actor is left alone
            # the timed-out request still holds its slot there (it cannot be interrupted), and the
            # actor stays aside until it ends
            time.sleep(1)
            assert pool.check_actors() == [False, True] and pool.in_flight() == [1, 0]
        finally:
            os.kill(pid, signal.SIGCONT)
        # thawed, it finishes that request and takes requests again (not a restart, not dead)
        _until(lambda: pool.check_actors() == [True, True])
        assert pool.in_flight() == [0, 0]
        assert (pool.stats.dead, pool.stats.restarts, pool.actors[0].pid) == (0, 0, pid)
        assert pool.score(request).extras["ray_actor"] == 0

        # with failover the request of an actor that freezes again goes to the other one
        pool.failover = 1
        os.kill(pid, signal.SIGSTOP)
        try:
            assert pool.score(request).extras["ray_actor"] == 1
            assert pool.stats.timeouts == 2 and pool.stats.resubmitted == 1
        finally:
            os.kill(pid, signal.SIGCONT)


def test_a_restartable_actor_that_died_is_taken_back_after_its_restart(
    cluster: None, model_dir: Path
) -> None:
    request = _two_row_request()
    # no task retries: the request on the dying actor fails over, the actor itself comes back
    with RayScorer(str(model_dir), num_actors=2, device="cpu", max_task_retries=0, failover=1) as pool:
        pid = pool.actors[0].pid
        assert _score_killing(pool, request).extras["ray_actor"] == 1 and pool.stats.resubmitted == 1
        _until(lambda: pool.check_actors() == [True, True])
        assert (pool.stats.dead, pool.stats.restarts) == (0, 1) and pool.actors[0].pid != pid
        assert pool.actor_pids()[0] == pool.actors[0].pid
        assert pool.score(request).extras["ray_actor"] == 0


def test_a_one_actor_pool_waits_for_its_actor_to_come_back(cluster: None, model_dir: Path) -> None:
    request = _two_row_request()
    options: dict[str, Any] = {"num_actors": 1, "device": "cpu", "max_task_retries": 0, "failover": 1}
    with RayScorer(str(model_dir), request_timeout=4, **options) as pool:
        pid = pool.actors[0].pid
        # frozen: the request times out, then the wait for the actor to come back times out too
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ScoringError, match=r"within 4 s \(1 set aside, 0 dead\)"):
                pool.score(request)
            assert pool.in_flight() == [1] and pool.stats.timeouts == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        _until(lambda: pool.check_actors() == [True])
        assert pool.in_flight() == [0]

        # killed: the request waits for Ray to restart the actor, then runs on it
        pool.request_timeout = None  # a restart (a new process loading the model) takes a while
        result = _score_killing(pool, request)
        assert result.extras["ray_actor"] == 0 and result.n_sequences == 2
        assert (pool.stats.restarts, pool.stats.dead) == (1, 0) and pool.actors[0].pid != pid
    with pytest.raises(ScoringError, match="closed"):
        pool.score(request)


def test_the_default_pool_size_counts_only_free_slots(cluster: None, model_dir: Path) -> None:
    # 3 slots, 2 held by the first pool: a second pool of 3 would wait for slots that never free
    first = RayScorer(str(model_dir), num_actors=2, device="cpu")
    with first, RayScorer(str(model_dir), device="cpu", ready_timeout=120) as second:
        assert (first.num_actors, second.num_actors) == (2, 1)
        assert second.score(_two_row_request()).n_sequences == 2


def test_ray_started_by_a_pool_stays_up_until_the_last_pool_closes(model_dir: Path) -> None:
    code = f"""
import gc
import ray
from attribsdk.prompt import build_prompt
from attribsdk.scoring.base import ScoringRequest
from attribsdk.scoring.ray import RayScorer

two = build_prompt("Q?", "Paris is large. It is on the Seine.")
request = ScoringRequest(prompts=[two.render(), two.render([True, False])], answer="A.")
init = dict(num_cpus=2, log_to_driver=False)
options = dict(num_actors=1, device="cpu", address="local", init_options=init)
first = RayScorer({str(model_dir)!r}, **options)
second = RayScorer({str(model_dir)!r}, **options)
first.close()
assert ray.is_initialized(), "the first pool's close shut Ray down under the second"
assert second.score(request).n_sequences == 2
dropped = RayScorer({str(model_dir)!r}, num_actors=1, device="cpu")
del dropped  # never closed: collected, it lets go of the runtime
gc.collect()
second.close()
assert not ray.is_initialized(), "Ray started by a pool outlived the last pool"
print("ok")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
