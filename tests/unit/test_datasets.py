"""Dataset loaders on small slices of the real files (tests/fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attribsdk.errors import FeatureError, InputError
from attribsdk.eval.datasets import (
    DATASETS,
    ERASER_MAX_TOKENS,
    bucket_of,
    load_dataset,
    load_eraser_movies,
    load_hotpotqa,
    load_jsonl,
    load_mmlu_words,
    split_of,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOTPOT = FIXTURES / "hotpotqa_slice.jsonl"
MMLU = FIXTURES / "mmlu_words_slice.jsonl"
ERASER = FIXTURES / "eraser_movies_slice.jsonl"
USER = FIXTURES / "user_examples.jsonl"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bucket_of_follows_the_paper() -> None:
    assert [bucket_of(m) for m in (1, 2, 3, 4, 5, 6, 8, 9, 11, 12, 40)] == [
        "1",
        "2-3",
        "2-3",
        "4-5",
        "4-5",
        "6-8",
        "6-8",
        "9-11",
        "9-11",
        "12+",
        "12+",
    ]


# -- HotpotQA --------------------------------------------------------------------------------------


def test_hotpotqa_paper_protocol() -> None:
    rows = _rows(HOTPOT)
    ten = [r for r in rows if len(r["context"]) == 10]
    examples = list(load_hotpotqa(HOTPOT))
    assert [e.id for e in examples] == [r["_id"] for r in ten]  # rows without 10 paragraphs are dropped
    for ex, row in zip(examples, ten, strict=True):
        facts = {(t, i) for t, i in row["supporting_facts"]}
        gold_titles = {t for t, _ in facts}
        sentences = [
            (t, j, s.strip())
            for t, ss in row["context"]
            if t in gold_titles
            for j, s in enumerate(ss)
            if s.strip()
        ]
        assert [f.text for f in ex.prompt.features] == [s for _, _, s in sentences]
        assert list(ex.gold) == [i for i, (t, j, _) in enumerate(sentences) if (t, j) in facts]
        assert ex.reference_answer == row["answer"] and ex.dataset == "hotpotqa-paper"
        user = ex.prompt.render().messages[-1].content
        assert row["question"] in user and all(f"{t}: " in user for t in gold_titles)


def test_hotpotqa_full_protocol_uses_all_paragraphs() -> None:
    paper = {e.id: e for e in load_hotpotqa(HOTPOT)}
    for ex in load_hotpotqa(HOTPOT, protocol="full"):
        assert ex.n_features > paper[ex.id].n_features
        gold_text = [paper[ex.id].prompt.features[i].text for i in paper[ex.id].gold]
        assert [ex.prompt.features[i].text for i in ex.gold] == gold_text
        assert ex.dataset == "hotpotqa-full"


def test_hotpotqa_deleting_sentences_leaves_single_spaces() -> None:
    for ex in load_hotpotqa(HOTPOT):
        row = next(r for r in _rows(HOTPOT) if r["_id"] == ex.id)
        gold_titles = {t for t, _ in row["supporting_facts"]}
        title = next(t for t, _ in row["context"] if t in gold_titles)  # the first document's
        n0 = sum(p.feature for p in ex.prompt.documents[0].parts)
        assert n0 >= 2, "the fixture's first gold paragraph has two sentences or more"
        texts = [f.text for f in ex.prompt.features]
        full = ex.prompt.render().messages[-1].content
        assert f"{title}: {texts[0]} {texts[1]}" in full
        # the paragraph's first sentence deleted: the second follows the title after one space
        keep = [True] * ex.n_features
        keep[0] = False
        user = ex.prompt.render(keep).messages[-1].content
        assert f"{title}: {texts[1]}" in user and texts[0] not in user
        # every sentence of the paragraph deleted: its title stands alone, no trailing space
        keep[:n0] = [False] * n0
        user = ex.prompt.render(keep).messages[-1].content
        assert f"{title}:\n" in user
        # whitespace the data does not hold never appears, whatever is deleted
        rng = np.random.default_rng(0)
        question = ex.prompt.fixed["question"]
        for _ in range(20):
            masked = ex.prompt.render(rng.integers(0, 2, ex.n_features)).messages[-1].content
            assert "  " not in masked.replace(question, "")


def test_fingerprint_follows_the_prompt_and_gold() -> None:
    a, b = list(load_hotpotqa(HOTPOT))[:2]
    again = next(iter(load_hotpotqa(HOTPOT)))
    assert a.fingerprint == again.fingerprint and a.fingerprint != b.fingerprint
    assert a.model_copy(update={"gold": a.gold[:-1]}).fingerprint != a.fingerprint
    other = a.prompt.model_copy(update={"template": a.prompt.template + " "})
    assert a.model_copy(update={"prompt": other}).fingerprint != a.fingerprint
    # what an explanation does not depend on leaves it alone
    assert a.model_copy(update={"meta": {}, "reference_answer": None}).fingerprint == a.fingerprint


def test_splits_partition_the_examples() -> None:
    every = {e.id for e in load_hotpotqa(HOTPOT)}
    tune = {e.id for e in load_hotpotqa(HOTPOT, split="tune")}
    report = {e.id for e in load_hotpotqa(HOTPOT, split="report")}
    assert tune | report == every and not tune & report and tune and report
    assert all(split_of(i) == "tune" for i in tune)


# -- MMLU word labels ------------------------------------------------------------------------------


def test_mmlu_words_features_are_the_question_words() -> None:
    rows = _rows(MMLU)
    examples = list(load_mmlu_words(MMLU))
    assert len(examples) == len(rows)
    for ex, row in zip(examples, rows, strict=True):
        assert [f.text for f in ex.prompt.features] == row["words"]
        assert list(ex.gold) == sorted(row["gold_indices"])
        letter = "ABCD"[row["answer"]]
        assert ex.reference_answer == f"{letter}. {row['choices'][row['answer']]}"
        text = ex.prompt.render().messages[-1].content
        assert text.startswith(row["question"])
        for i, choice in enumerate(row["choices"]):
            assert f"\n{'ABCD'[i]}. {choice}" in text
    # choices are fixed: masking every feature leaves them in place
    first = examples[0]
    masked = first.prompt.render([False] * first.n_features).messages[-1].content
    assert "A. " + rows[0]["choices"][0] in masked and rows[0]["words"][0] not in masked.split("\n")[0]


def test_mmlu_words_rejects_inconsistent_rows(tmp_path: Path) -> None:
    row = _rows(MMLU)[0]
    with pytest.raises(InputError, match="words"):
        list(load_mmlu_words(_write(tmp_path / "a.jsonl", [{**row, "words": ["other"]}])))
    with pytest.raises(InputError, match="out of range"):
        list(load_mmlu_words(_write(tmp_path / "b.jsonl", [{**row, "gold_indices": [99]}])))
    with pytest.raises(InputError, match="missing field"):
        list(load_mmlu_words(_write(tmp_path / "c.jsonl", [{"id": "x"}])))


# -- ERASER movies ---------------------------------------------------------------------------------


def test_eraser_tokens_truncation_and_gold() -> None:
    rows = _rows(ERASER)
    examples = list(load_eraser_movies(ERASER))
    assert ERASER_MAX_TOKENS == 200
    for ex, row in zip(examples, rows, strict=True):
        kept = row["tokens"][:ERASER_MAX_TOKENS]
        assert [f.text for f in ex.prompt.features] == kept
        assert list(ex.gold) == [i for i, v in enumerate(row["rationale_mask"][:ERASER_MAX_TOKENS]) if v]
        assert ex.meta["truncated"] == (len(row["tokens"]) > ERASER_MAX_TOKENS)
        assert ex.reference_answer == {"POS": "positive", "NEG": "negative"}[row["label"]]
        content = ex.prompt.render().messages[-1].content
        assert " ".join(kept) in content and "positive or negative" in content
    full = list(load_eraser_movies(ERASER, max_tokens=None))
    assert [e.n_features for e in full] == [len(r["tokens"]) for r in rows]


def test_eraser_words_merge_punctuation_into_the_previous_token() -> None:
    tokens = list(load_eraser_movies(ERASER, max_tokens=40))
    words = list(load_eraser_movies(ERASER, max_tokens=40, granularity="words"))
    for t, w in zip(tokens, words, strict=True):
        assert t.prompt.render().messages[-1].content == w.prompt.render().messages[-1].content
        assert w.n_features < t.n_features
        assert all(f.text[0] not in ",.:;!?" for f in w.prompt.features[1:])


def test_eraser_skips_examples_without_rationale_in_the_kept_part(tmp_path: Path) -> None:
    row = _rows(ERASER)[1]
    mask = [0] * 10 + row["rationale_mask"][10:]
    path = _write(tmp_path / "e.jsonl", [{**row, "rationale_mask": mask}])
    assert list(load_eraser_movies(path, max_tokens=10)) == []
    assert len(list(load_eraser_movies(path, max_tokens=None))) == 1
    with pytest.raises(InputError):
        list(load_eraser_movies(path, max_tokens=0))


# -- the user's JSONL ------------------------------------------------------------------------------


def test_user_jsonl_granularities_spans_and_answers() -> None:
    u1, u2, u3 = load_jsonl(USER)
    assert u1.n_features == 4 and u1.gold == (0,) and u1.reference_answer == "Paris."
    assert [f.text for f in u2.prompt.features] == [
        "The capital of France is Paris.",
        "Paris is a large city on the Seine.",
    ]
    assert u2.reference_answer is None and u2.gold == (1,)
    assert [f.text for f in u3.prompt.features][:2] == ["Water", "boils"]  # no context: the question
    assert u1.dataset == "user_examples"


def test_user_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = {"id": "a", "question": "Q?", "context": "One. Two.", "gold": [0]}
    cases = [
        ([good, {**good, "id": "b", "gold": [7]}], r"e\.jsonl:2: gold indices \[7\] out of range"),
        ([good, good], "duplicate id"),
        ([{**good, "gold": "0"}], "list of integers"),
        ([{**good, "features": [[0, 99]]}], "outside the text"),
        ([{"id": "z", "gold": [0]}], "missing field 'question'"),
    ]
    for rows, message in cases:
        with pytest.raises(InputError, match=message):
            list(load_jsonl(_write(tmp_path / "e.jsonl", rows)))
    with pytest.raises(FeatureError):
        list(load_jsonl(_write(tmp_path / "e.jsonl", [{**good, "features": "letters"}])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"\n')
    with pytest.raises(InputError, match="invalid JSON"):
        list(load_jsonl(bad))


def test_load_dataset_registry(tmp_path: Path) -> None:
    assert "mmlu-words" in DATASETS
    assert [e.id for e in load_dataset("hotpotqa-full", HOTPOT)] == [e.id for e in load_hotpotqa(HOTPOT)]
    assert len(list(load_dataset("eraser-movies", ERASER, max_tokens=20))) == 2
    assert len(list(load_dataset("jsonl", USER))) == 3
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("squad")
    with pytest.raises(InputError, match="needs a path"):
        load_dataset("jsonl")
    with pytest.raises(InputError, match="not found"):
        list(load_dataset("mmlu-words", tmp_path / "missing.jsonl"))
