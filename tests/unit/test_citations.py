"""RAG citations: source normalisation, spans, per-sentence citations from one scoring pass, the
decorator (asyncio and trio), sync wrappers, errors. Tiny in-process models only."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from attribsdk import Citations, Citer, ConfigError, Explanation, InputError, Source, cite, with_citations
from attribsdk.adapters.local import LocalClosedModel
from attribsdk.citations import (
    CitedAnswer,
    as_sources,
    cite_sync,
    sentence_token_ranges,
    token_char_spans,
)
from attribsdk.prompt import DEFAULT_TEMPLATE
from attribsdk.regression import WLS, fit_answer_spans
from attribsdk.scoring.base import ScoreResult, ScoringRequest
from tests.tiny_models import PLANTED_QUESTION, planted_model, tiny_local_model, tiny_tokenizer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- a surrogate with planted per-sentence behaviour ----------------------------------------------

SOURCES: list[dict[str, Any]] = [
    {
        "id": "fr",
        "text": "The capital of France is Paris. Paris lies on the Seine.",
        "metadata": {"lang": "en"},
    },
    {"id": "de", "text": "Berlin is the capital of Germany. The cat sat on the mat."},
]
ANSWER = "Paris is the capital of France. Berlin is the capital of Germany."
QUESTION = "What are the capitals of France and Germany?"


class PlantedScorer:
    """A surrogate whose answer tokens depend on known features: answer tokens are whitespace-led
    words; each token of answer sentence j has log-probability -0.1 when feature ``needs[j]`` is
    kept and -3.0 when it is masked (every other feature is irrelevant)."""

    name = "planted-citations"

    def __init__(self, needs: dict[int, int]) -> None:
        self.needs = needs
        self.requests: list[ScoringRequest] = []

    def score(self, request: ScoringRequest) -> ScoreResult:
        self.requests.append(request)
        tokens = re.findall(r"\s*\S+", request.answer)
        sentence = np.cumsum([0] + [t.endswith(".") for t in tokens[:-1]])  # sentence of each token
        lp = np.array(
            [[-0.1 if p.keep[self.needs[int(s)]] else -3.0 for s in sentence] for p in request.prompts],
            dtype=np.float64,
        )
        delta = (lp[0] - lp).mean(axis=1)
        return ScoreResult(
            targets=delta,
            answer_logprobs=lp,
            answer_tokens=tokens,
            spans=None,
            n_sequences=len(request.prompts),
            n_tokens=10 * len(request.prompts),
        )


def planted_citer(needs: dict[int, int] | None = None, **kw: Any) -> Citer:
    # features: 0 fr "The capital of France is Paris."    1 fr "Paris lies on the Seine."
    #           2 de "Berlin is the capital of Germany."  3 de "The cat sat on the mat."
    return Citer(surrogate=PlantedScorer(needs or {0: 0, 1: 2}), **kw)


# -- sources ------------------------------------------------------------------------------------------


def test_sources_are_normalised_from_many_shapes() -> None:
    @dataclasses.dataclass
    class Passage:
        id: int
        text: str
        metadata: dict[str, Any]

    class LCDocument:  # LangChain-like: page_content + metadata, no text
        def __init__(self, page_content: str, metadata: dict[str, Any]) -> None:
            self.page_content = page_content
            self.metadata = metadata
            self.id = None

    class Doc(BaseModel):
        id: str
        content: str

    out = as_sources(
        [
            "plain string",
            {"text": "a dict", "metadata": {"url": "u"}},
            Passage(7, "a dataclass", {"page": 3}),
            LCDocument("langchain text", {"source": "wiki"}),
            Doc(id="pyd", content="a pydantic model"),
            Source(id="given", text="a Source"),
        ]
    )
    assert [s.id for s in out] == ["0", "1", "7", "3", "pyd", "given"]
    assert [s.text for s in out] == [
        "plain string",
        "a dict",
        "a dataclass",
        "langchain text",
        "a pydantic model",
        "a Source",
    ]
    assert out[1].metadata == {"url": "u"} and out[3].metadata == {"source": "wiki"}
    assert as_sources("one string") == [Source(id="0", text="one string")]
    # one mapping, Source or text-bearing object is one source, not a list of its keys or fields
    assert as_sources({"id": "a", "text": "hello"}) == [Source(id="a", text="hello")]
    assert as_sources(Source(id="s", text="t")) == [Source(id="s", text="t")]


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([], "no sources"),
        (["ok", "   "], "no text"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "id 'a'"),
        ([{"title": "no text field"}], "has no text"),
        ([{"text": "x", "metadata": ["not", "a", "mapping"]}], "metadata must be a mapping"),
    ],
)
def test_bad_sources_raise_input_error(sources: list[Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        as_sources(sources)


# -- alignment ----------------------------------------------------------------------------------------


def test_sentence_token_ranges_follow_a_real_tokenizer_even_through_split_characters() -> None:
    tok = tiny_tokenizer()
    text = "Café ☕ is open. Naïve émigrés returned to 東京! The end."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokens = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in t for t in tokens)  # the premise: multi-byte characters split over tokens
    spans = token_char_spans(text, tokens)
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(spans))  # never backwards
    sentences = [(0, 15), (16, 45), (46, 54)]
    assert [text[s:e] for s, e in sentences] == [
        "Café ☕ is open.",
        "Naïve émigrés returned to 東京!",
        "The end.",
    ]
    ranges = sentence_token_ranges(text, tokens, sentences)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(ids)
    for (t0, t1), (s, e) in zip(ranges, sentences, strict=True):
        assert tok.decode(ids[t0:t1]).strip() == text[s:e]


def test_fit_answer_spans_recovers_per_span_effects() -> None:
    masks = np.array([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]])
    lp = np.zeros((4, 4))
    lp[1, :2] = -2.0  # feature 0 supports tokens 0-1
    lp[3, 2:] = -1.0  # feature 2 supports tokens 2-3
    fits = fit_answer_spans(masks, lp, np.ones(4), [(0, 2), (2, 4), (1, 1)], WLS())
    assert fits[2] is None
    assert fits[0] is not None and fits[1] is not None
    np.testing.assert_allclose(fits[0].coef, [2.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(fits[1].coef, [0.0, 0.0, 1.0], atol=1e-9)
    with pytest.raises(InputError, match="outside"):
        fit_answer_spans(masks, lp, np.ones(4), [(0, 5)], WLS())


# -- citations ----------------------------------------------------------------------------------------


async def test_each_answer_sentence_cites_the_sentence_it_depends_on() -> None:
    async with planted_citer() as citer:
        cits = await citer.cite(ANSWER, SOURCES, query=QUESTION)
    scorer = citer.explainer._surrogate_spec
    assert isinstance(scorer, PlantedScorer) and len(scorer.requests) == 1  # one scoring pass
    assert len(scorer.requests[0].prompts) == 5  # leave-one-out: M + 1 rows
    assert [s.text for s in cits.sentences] == [
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
    ]
    first, second = (s.citations for s in cits.sentences)
    assert [(c.source_id, c.sentence_index, c.text) for c in first] == [
        ("fr", 0, "The capital of France is Paris.")
    ]
    assert [(c.source_id, c.sentence_index, c.text) for c in second] == [
        ("de", 0, "Berlin is the capital of Germany.")
    ]
    # 6 tokens, each 2.9 nats less likely without the sentence
    assert first[0].score == pytest.approx(6 * 2.9) and first[0].confidence == pytest.approx(
        1 - np.exp(-17.4)
    )
    assert cits.sentences[0].r2 == pytest.approx(1.0)
    # whole answer: both supporting sentences, each carrying half of the tokens
    assert {(c.source_id, c.feature_index) for c in cits.overall} == {("fr", 0), ("de", 2)}
    assert all(c.score == pytest.approx(6 * 2.9) for c in cits.overall)
    # spans index the source and the answer
    by_id = {s.id: s for s in cits.sources}
    for c in [*cits.overall, *first, *second]:
        assert by_id[c.source_id].text[c.start : c.end] == c.text
        assert cits.sources[c.source_index].id == c.source_id
    for s in cits.sentences:
        assert cits.answer[s.start : s.end] == s.text and s.token_end > s.token_start
        assert len(s.scores) == 4
    assert cits.sources[0].metadata == {"lang": "en"} and cits.query == QUESTION
    assert cits.annotated() == "Paris is the capital of France. [fr] Berlin is the capital of Germany. [de]"
    assert cits.cited_source_ids == ["fr", "de"]
    assert cits.explanation is not None and cits.explanation.closed_model is None  # no closed call
    assert cits.timings.total >= cits.timings.explain > 0
    assert "Sentence 2: Berlin is the capital of Germany." in cits.table()


async def test_json_round_trip() -> None:
    async with planted_citer() as citer:
        cits = await citer.cite(ANSWER, SOURCES, query=QUESTION)
    again = Citations.model_validate_json(cits.model_dump_json())
    assert again == cits
    assert again.explanation is not None and again.explanation.samples is not None
    assert np.asarray(again.explanation.samples.answer_logprobs).shape == (5, len(ANSWER.split()))


async def test_thresholds_and_top_k() -> None:
    async with planted_citer(min_confidence=0.0, top_k=None) as citer:
        all_support = await citer.cite(ANSWER, SOURCES)
    assert len(all_support.overall) == 2  # only positive coefficients, even without thresholds
    async with planted_citer(top_k=1) as citer:
        assert len((await citer.cite(ANSWER, SOURCES)).overall) == 1
    async with planted_citer(min_score=17.0) as citer:  # every score is 6 × 2.9 = 17.4 nats
        kept = await citer.cite(ANSWER, SOURCES)
    assert len(kept.overall) == 2 and all(len(s.citations) == 1 for s in kept.sentences)
    async with planted_citer(min_score=17.5) as citer:
        cits = await citer.cite(ANSWER, SOURCES)
    assert cits.overall == [] and all(s.citations == [] for s in cits.sentences)
    assert cits.settings == {"top_k": 3, "min_score": 17.5, "min_confidence": 0.5, "unit": "sentences"}


async def test_documents_as_the_unit() -> None:
    async with planted_citer({0: 0, 1: 1}, unit="documents") as citer:
        cits = await citer.cite(ANSWER, SOURCES)
    # one feature per source, the whole text
    assert [[(c.source_id, c.text, c.start) for c in s.citations] for s in cits.sentences] == [
        [("fr", SOURCES[0]["text"], 0)],
        [("de", SOURCES[1]["text"], 0)],
    ]


async def test_planted_model_cites_the_city_and_not_for_a_wrong_answer() -> None:
    """A real (tiny, trained) model whose answer only the city word decides."""
    sources = ["cat mat", "lazy Paris dog", "sun fox"]
    async with Citer(surrogate=planted_model(), template=DEFAULT_TEMPLATE) as citer:
        right = await citer.cite("France", sources, query=PLANTED_QUESTION)
        wrong = await citer.cite("Germany", sources, query=PLANTED_QUESTION)
    assert [(c.source_id, c.text) for c in right.overall] == [("1", "lazy Paris dog")]
    assert right.overall[0].score > 3 and right.overall[0].confidence > 0.95
    (only,) = right.sentences[0].citations  # one sentence: the same fit up to float32 rounding
    assert only.feature_index == 1 and only.score == pytest.approx(right.overall[0].score, rel=1e-6)
    assert wrong.overall == []  # the city argues against "Germany": it is not a citation


async def test_default_rope_lime_on_a_real_tiny_model() -> None:
    """Sparse-K with the RWMD kernel: span capture, a weighted fit, spans always exact."""
    answer = "Paris is large. It is on the Seine."
    async with Citer(surrogate=tiny_local_model(seed=3), method="rope-lime", min_confidence=0.0) as citer:
        cits = await citer.cite(answer, [s["text"] for s in SOURCES], query=QUESTION)
    assert cits.explanation is not None and cits.explanation.config["sampler"]["kind"] == "sparse_k"
    assert len(cits.sentences) == 2
    assert cits.sentences[0].token_start == 0 and cits.sentences[1].token_end == len(
        cits.explanation.answer_tokens
    )
    assert sum(len(s.citations) for s in cits.sentences) >= 1  # the checks below run on something
    for s in cits.sentences:
        assert s.r2 is not None and len(s.scores) == 4
        for c in s.citations:
            assert cits.sources[c.source_index].text[c.start : c.end] == c.text and 0 <= c.confidence <= 1


# -- errors, generation ---------------------------------------------------------------------------------


async def test_errors() -> None:
    async with planted_citer() as citer:
        for bad in ("", "   "):
            with pytest.raises(InputError, match="non-empty"):
                await citer.cite(bad, SOURCES)
        with pytest.raises(InputError, match="no answer to cite"):
            await citer.cite(None, SOURCES, query=QUESTION)  # no closed model
        with pytest.raises(InputError, match="no sources"):
            await citer.cite(ANSWER, [])
        with pytest.raises(InputError, match="no text"):
            await citer.cite(ANSWER, [{"id": "x", "text": ""}])
    with pytest.raises(ConfigError, match="perturbation method"):
        Citer(method="gsmile")
    with pytest.raises(ConfigError, match="top_k"):
        Citer(top_k=0)
    for options in ({"top_k": 2.5}, {"top_k": "3"}, {"min_score": "x"}, {"min_score": float("nan")}):
        with pytest.raises(ConfigError, match=r"top_k|min_score"):
            Citer(**options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="either"):
        Citer(planted_citer().explainer, closed="local:smollm2")


async def test_no_answer_asks_the_local_closed_model_once() -> None:
    tiny = tiny_local_model(seed=3)
    async with Citer(
        closed=LocalClosedModel(tiny), surrogate=tiny, closed_options={"allow_truncated": True}
    ) as citer:
        cits = await citer.cite(None, SOURCES, query=QUESTION)
    expl = cits.explanation
    assert expl is not None and expl.counts.closed_calls == 1 and expl.closed_model
    assert cits.answer == expl.answer and cits.answer.strip()
    assert cits.sentences and all(cits.answer[s.start : s.end] == s.text for s in cits.sentences)


# -- integration ---------------------------------------------------------------------------------------


async def test_decorator_returns_the_answer_with_citations() -> None:
    citer = planted_citer()
    calls: list[tuple[str, int]] = []

    @with_citations(citer, sources="docs", query="question")
    async def rag(question: str, docs: list[dict[str, Any]], temperature: float = 0.0) -> str:
        calls.append((question, len(docs)))
        return ANSWER

    res = await rag(QUESTION, docs=SOURCES)
    assert isinstance(res, CitedAnswer) and res.output == ANSWER == res.answer
    assert calls == [(QUESTION, 2)] and res.citations.query == QUESTION
    assert [c.source_id for s in res.citations.sentences for c in s.citations] == ["fr", "de"]
    assert rag.__name__ == "rag"

    @dataclasses.dataclass
    class Reply:
        answer: str
        documents: list[dict[str, Any]]

    @with_citations(citer, sources=lambda args, out: out.documents, query=None)
    async def rag2(question: str) -> Reply:
        return Reply(ANSWER, SOURCES)

    res2 = await rag2(QUESTION)
    assert res2.output.documents == SOURCES and res2.answer == ANSWER and res2.citations.query is None
    await citer.aclose()

    with pytest.raises(ConfigError, match="no parameter 'docs'"):
        with_citations(citer, sources="docs")(rag2)

    def not_async(sources: list[str], query: str) -> str:
        return ""

    with pytest.raises(ConfigError, match="async"):
        with_citations(citer)(not_async)  # type: ignore[arg-type]


async def test_decorator_needs_an_answer_it_can_find() -> None:
    @with_citations(planted_citer(), query=None)
    async def rag(sources: list[str]) -> dict[str, int]:
        return {"tokens": 3}

    with pytest.raises(InputError, match="cannot find the answer") as info:
        await rag(["x"])
    assert info.value.partial["output"] == {"tokens": 3}  # what the function produced is kept


class ZeroProbabilityScorer(PlantedScorer):
    """Like PlantedScorer, but one answer token has probability 0 under every masked prompt (as a
    half-precision underflow gives): the whole-answer target stays finite, the per-token data not."""

    def score(self, request: ScoringRequest) -> ScoreResult:
        res = super().score(request)
        lp = np.asarray(res.answer_logprobs).copy()
        lp[1:, 0] = -np.inf
        return dataclasses.replace(res, answer_logprobs=lp)


async def test_a_citation_failure_keeps_the_explanation() -> None:
    async with Citer(surrogate=ZeroProbabilityScorer({0: 0, 1: 2})) as citer:
        with pytest.raises(InputError, match="NaN or infinite") as info:
            await citer.cite(ANSWER, SOURCES, query=QUESTION)
    expl = info.value.partial["explanation"]
    assert isinstance(expl, Explanation) and expl.answer == ANSWER and len(expl.features) == 4
    assert info.value.partial["cost"] == expl.cost


async def test_module_level_cite_with_a_citer_or_one_shot() -> None:
    citer = planted_citer()
    a = await cite(ANSWER, SOURCES, query=QUESTION, citer=citer)
    b = await cite(ANSWER, SOURCES, query=QUESTION, surrogate=PlantedScorer({0: 0, 1: 2}))
    assert a.overall == b.overall and a.sentences == b.sentences
    with pytest.raises(ConfigError):
        await cite(ANSWER, SOURCES, citer=citer, top_k=1)
    await citer.aclose()


def test_sync_wrappers() -> None:
    with planted_citer() as citer:
        a = citer.cite_sync(ANSWER, SOURCES, query=QUESTION)
    b = cite_sync(ANSWER, SOURCES, query=QUESTION, surrogate=PlantedScorer({0: 0, 1: 2}))
    assert a.sentences == b.sentences and [c.source_id for c in a.overall] == ["fr", "de"]
    with pytest.raises(ConfigError, match="with"):
        planted_citer().cite_sync(ANSWER, SOURCES)
