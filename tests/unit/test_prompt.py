"""Features and prompt rendering: offsets map back to the exact text; masking deletes text."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attribsdk import Example, FeatureError, InputError, build_prompt
from attribsdk.eval.datasets import load_hotpotqa
from attribsdk.features import Part, segment_text
from attribsdk.prompt import Document, Prompt

TEXT = (
    "Dr. Smith moved to Paris in 1999. He opened a bakery there!  Was it a success? "
    "Yes: it still runs today.\n\nA second paragraph follows. It has two sentences."
)


@pytest.mark.parametrize("granularity", ["words", "sentences", "paragraphs", "documents"])
def test_feature_offsets_map_back_to_exact_text(granularity: str) -> None:
    docs = [TEXT, "  Another doc.  With padding. "]
    prompt = build_prompt("Q?", docs, features=granularity)
    feats = prompt.features
    assert feats, granularity
    for f in feats:
        assert docs[f.source][f.start : f.end] == f.text
        assert f.text == f.text.strip() and f.text
    # features are in document order and never overlap
    for a, b in itertools.pairwise(feats):
        assert (a.source, a.end) <= (b.source, b.start)
    assert [f.index for f in feats] == list(range(len(feats)))


def test_sentence_splitting_handles_abbreviations_offline() -> None:
    spans = segment_text(TEXT, "sentences")
    sents = [TEXT[s:e] for s, e in spans]
    assert sents[0] == "Dr. Smith moved to Paris in 1999."
    assert "Was it a success?" in sents
    assert sents[-1] == "It has two sentences."
    assert len(segment_text(TEXT, "paragraphs")) == 2
    words = "a  b\tc\n"
    assert [words[s:e] for s, e in segment_text(words, "words")] == ["a", "b", "c"]


def test_words_match_str_split() -> None:
    q = "Among these elements which one has the highest atomic mass?"
    prompt = build_prompt(q, features="words")
    assert [f.text for f in prompt.features] == q.split()


def test_masking_deletes_feature_text_and_collapses_whitespace() -> None:
    prompt = build_prompt("the cat sat on the mat", features="words")
    assert prompt.render([1, 0, 1, 1, 1, 1]).messages[-1].content == "the sat on the mat"
    assert prompt.render([0, 1, 1, 1, 1, 0]).messages[-1].content == "cat sat on the"
    paras = build_prompt("Q", "P one.\n\nP two.\n\nP three.", features="paragraphs")
    content = paras.render([1, 0, 1]).messages[-1].content
    assert "P one.\n\nP three." in content and "P two." not in content


def test_rendered_spans_point_at_kept_features() -> None:
    prompt = build_prompt("Who?", [TEXT, "Doc two."], features="sentences", system="Be brief.")
    m = prompt.n_features
    for keep in ([True] * m, [i % 2 == 0 for i in range(m)], [i == m - 1 for i in range(m)]):
        r = prompt.render(keep)
        assert r.messages[0].role == "system" and r.messages[-1].role == "user"
        for f, span, k in zip(prompt.features, r.spans, keep, strict=True):
            if not k:
                assert span is None and f.text not in r.messages[-1].content  # deleted
                continue
            assert span is not None
            msg, s, e = span
            assert r.messages[msg].content[s:e] == f.text
        assert r.messages[-1].content.endswith("Question: Who?")


def test_question_is_fixed_unless_explained() -> None:
    fixed = build_prompt("What year?", "He left in 1999.", features="words")
    assert all(f.slot == "context" for f in fixed.features)
    both = build_prompt("What year?", "He left in 1999.", features="words", explain_question=True)
    assert [f.text for f in both.features if f.slot == "question"] == ["What", "year?"]
    r = both.render([True] * 4 + [False, True])
    assert r.messages[-1].content.endswith("Question: year?")


def test_explicit_spans_and_parts() -> None:
    text = "alpha beta gamma"
    prompt = build_prompt("Q", text, features=[(0, 5), (11, 16)])
    assert [f.text for f in prompt.features] == ["alpha", "gamma"]
    doc = Document(
        parts=(
            Part(text="Title: ", feature=False),
            Part(text="Body."),
        )
    )
    p = Prompt(template="{context}", documents=(doc,))
    assert p.features[0].start == 7
    assert p.render([False]).messages[-1].content == "Title: "  # fixed text stays
    # Spans cut a fixed gap into whitespace and text, so its whitespace is a separator: deleting
    # a feature leaves no stray space or line break beside the fixed text.
    cut = build_prompt("Q", "Title:\nA B", features=[(7, 8), (9, 10)], template="{context}|{question}")
    assert [pt.text for pt in cut.documents[0].parts] == ["Title:", "\n", "A", " ", "B"]
    assert cut.render([0, 1]).messages[-1].content == "Title: B|Q"
    greeting = build_prompt(
        "Q", "Hello world, foo", features=[(0, 5), (13, 16)], template="{context}|{question}"
    )
    assert greeting.render([0, 1]).messages[-1].content == "world, foo|Q"
    assert greeting.render([1, 0]).messages[-1].content == "Hello world,|Q"
    assert greeting.documents[0].text == "Hello world, foo"  # offsets unchanged
    # numpy integers are ints (spans often come from array arithmetic)
    spans = [(np.int64(0), np.int64(5)), (np.int64(11), np.int64(16))]
    assert [f.text for f in build_prompt("Q", text, features=spans).features] == ["alpha", "gamma"]
    with pytest.raises(InputError, match="both a document and a fixed value"):
        Prompt(template="{context}", documents=(doc,), fixed={"context": "x"})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"question": ""}, InputError, "question/prompt must be a non-empty string"),
        ({"question": "Q", "context": []}, InputError, "context is an empty list"),
        ({"question": "Q", "context": "text", "features": "letters"}, FeatureError, "granularity 'letters'"),
        ({"question": "Q", "context": "   "}, FeatureError, "has no features"),
        ({"question": "Q", "context": "abc", "features": [(2, 1)]}, FeatureError, r"\(2, 1\) is empty"),
        ({"question": "Q", "context": "abc", "features": [(0, 9)]}, FeatureError, "outside the text"),
        ({"question": "Q", "context": "abcdef", "features": [(0, 3), (2, 5)]}, FeatureError, "overlaps"),
        ({"question": "Q", "context": ["a b", "c"], "features": [[(0, 1)]]}, FeatureError, "span list per"),
        ({"question": "Q", "context": "a", "template": "{context} {nope}"}, InputError, r"\['nope'\]"),
        ({"question": "Q", "context": "a", "template": "{context"}, InputError, "invalid prompt template"),
        # not truncated to (0, 2)
        ({"question": "Q", "context": "abc", "features": [(0, 2.9)]}, FeatureError, r"ints, got \(0, 2.9\)"),
        ({"question": "Q", "context": "a b", "features": 5}, FeatureError, "got int"),
        ({"question": "Q", "context": "a b", "features": None}, FeatureError, "got NoneType"),
        ({"question": "Q", "context": 123}, InputError, "`context` must be a string"),
        ({"question": "Q", "context": "a", "system": 5}, InputError, "`system` must be a string"),
        ({"question": "Q", "context": "a", "template": 5}, InputError, "`template` must be a string"),
        ({"question": "Q", "context": "a  b", "features": [(0, 1), (1, 3)]}, FeatureError, "only whitespace"),
    ],
)
def test_bad_inputs_raise_documented_errors(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build_prompt(**kwargs)  # type: ignore[arg-type]


def test_mask_length_checked_and_example_validation() -> None:
    prompt = build_prompt("a b c", features="words")
    with pytest.raises(InputError, match="3 features"):
        prompt.render([True, False])
    # "0" would be truthy: masks hold booleans or 0/1 only
    for bad in (["1", "0", "1"], [1, 2, 1], np.array([1.0, 0.5, 1.0]), "101", np.ones((3, 1))):
        with pytest.raises(InputError, match="mask"):
            prompt.render(bad)  # type: ignore[arg-type]
    assert prompt.render(np.array([1, 0, 1])) == prompt.render([True, False, True])
    assert prompt.render(np.array([1.0, 0.0, 1.0])) == prompt.render([1, 0, 1])
    with pytest.raises(FeatureError, match="not booleans"):
        Example(question="Q", context="abc", features=[(True, 3)])  # type: ignore[arg-type]
    with pytest.raises(InputError):
        Example()
    ex = Example(question="Q?", context="One. Two.")
    assert ex.to_prompt().n_features == 2
    assert Example.model_validate_json(ex.model_dump_json()) == ex


def test_prompt_round_trips_through_json() -> None:
    prompt = build_prompt("Who?", [TEXT, "Doc two."], features="sentences", system="S")
    again = Prompt.model_validate_json(prompt.model_dump_json())
    assert again == prompt and again.render([True] * again.n_features) == prompt.render()


def test_hotpotqa_paper_protocol_fixture() -> None:
    ex = next(e for e in load_hotpotqa() if e.id == "5abd94525542992ac4f382d2")
    texts = [f.text for f in ex.prompt.features]
    assert ex.n_features == 6 and ex.bucket == "6-8"
    assert [texts[i] for i in ex.gold] == [
        "2014 S/S is the debut album of South Korean group WINNER.",
        "Winner (band): Winner (Hangul: 위너), often stylized as WINNER, is a South Korean boy group formed "
        "in 2013 by YG Entertainment and debuted in 2014."[len("Winner (band): ") :],
    ]
