"""Citations for retrieval-augmented answers: which retrieved sentences support the answer, and
which support each sentence of it.

The answer is already there (your RAG step produced it), so no closed-model call is needed: the
surrogate re-reads the fixed answer under perturbed versions of the sources, exactly as an
:class:`~attribsdk.explainer.Explainer` explanation does. The features are the sentences of the
sources. One scoring pass serves every citation target: the surrogate's per-token log-probabilities
of the answer (``Samples.answer_logprobs``, ``[N, T]``) are regressed once for the whole answer (the
ordinary explanation) and once per answer sentence on that sentence's tokens
(:func:`~attribsdk.regression.fit_answer_spans`), ContextCite's trick of one ablation set for every
span of the answer.

>>> async with Citer() as citer:                                   # doctest: +SKIP
...     cits = await citer.cite(answer, sources, query=question)
>>> print(cits.table()); cits.annotated()                          # doctest: +SKIP

Offsets: ``Citation.start/end`` index the cited source's text (``source.text[start:end] ==
citation.text``); ``SentenceCitations.start/end`` index the answer.
"""

from __future__ import annotations

import functools
import inspect
import math
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeAlias, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._sync import run_sync
from .adapters.base import ClosedModel, Message
from .errors import AttribError, ConfigError, InputError, raise_keeping
from .explainer import DEFAULT_SURROGATE, Explainer
from .explanation import Explanation
from .features import Feature, parts_from_spans, segment_text
from .methods import Method, RopeLime, make_method
from .prompt import Document, Prompt
from .regression import fit_answer_spans

if TYPE_CHECKING:
    from .scoring.base import Scorer
    from .scoring.models import ModelStore

__all__ = [
    "CITE_TEMPLATE",
    "SOURCES_TEMPLATE",
    "Citation",
    "CitationTimings",
    "Citations",
    "CitedAnswer",
    "Citer",
    "SentenceCitations",
    "Source",
    "as_sources",
    "cite",
    "cite_sync",
    "close_default_store",
    "default_store",
    "with_citations",
]

P = ParamSpec("P")
R = TypeVar("R")

#: User-message template the surrogate re-reads when a query is given (``{context}``: the sources,
#: one per paragraph; ``{question}``: the query). Send your LLM the same (:meth:`Citer.messages`).
CITE_TEMPLATE = "Answer the question using the context.\n\nContext:\n{context}\n\nQuestion: {question}"
#: Template without a query.
SOURCES_TEMPLATE = "Context:\n{context}\n\nWrite an answer based on the context."
#: Scores at or below this (nats) are numerical noise, never support.
_NOISE = 1e-9
#: Citation units: a citation points at one such span of a source.
Unit = Literal["sentences", "paragraphs", "documents"]


# -- sources ---------------------------------------------------------------------------------------


class Source(BaseModel):
    """One retrieved source. ``metadata`` travels into the result as is (JSON values, so that
    :class:`Citations` round-trips)."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


def _get(item: Any, name: str) -> Any:
    if isinstance(item, Mapping):
        return item.get(name)
    return getattr(item, name, None)


def as_sources(sources: str | Iterable[Any]) -> list[Source]:
    """Normalise retrieved sources to :class:`Source` objects.

    Accepted items: a string (its id is its position: ``"0"``, ``"1"``...), a :class:`Source`, or
    any mapping or object with ``text`` (or ``page_content``, as LangChain documents have, or
    ``content``) and optional ``id`` and ``metadata`` — dicts, dataclasses, pydantic models.
    A single string, mapping, :class:`Source` or text-bearing object is one source. Raises
    :class:`InputError` for no sources, a source without text, metadata that is not a mapping, or
    two sources with the same id.
    """
    single = isinstance(sources, str | Mapping | Source) or any(
        isinstance(_get(sources, k), str) for k in ("text", "page_content", "content")
    )
    items = [sources] if single else list(sources)
    if not items:
        raise InputError("no sources to cite: pass the retrieved documents (strings or objects with text)")
    out: list[Source] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, Source):
            src = item
        elif isinstance(item, str):
            src = Source(id=str(i), text=item)
        else:
            text = next(
                (t for t in (_get(item, k) for k in ("text", "page_content", "content")) if t is not None),
                None,
            )
            if not isinstance(text, str):
                raise InputError(
                    f"source {i} ({type(item).__name__}) has no text: give it a `text` (or `page_content`) "
                    "string, or pass plain strings"
                )
            raw_id = _get(item, "id")
            metadata = _get(item, "metadata") or {}
            if not isinstance(metadata, Mapping):
                raise InputError(f"source {i}: metadata must be a mapping, got {type(metadata).__name__}")
            src = Source(
                id=str(i) if raw_id is None or raw_id == "" else str(raw_id),
                text=text,
                metadata=dict(metadata),
            )
        if not src.text.strip():
            raise InputError(f"source {src.id!r} has no text (empty or whitespace only)")
        if src.id in seen:
            raise InputError(f"two sources have the id {src.id!r}; source ids must be unique")
        seen.add(src.id)
        out.append(src)
    return out


# -- results ---------------------------------------------------------------------------------------


class Citation(BaseModel):
    """One cited span of a source.

    * ``source_id``/``source_index``: the source (its id and its position in the input).
    * ``sentence_index``: the span's position among its source's units (sentences by default);
      ``feature_index``: its index in ``Citations.explanation.features``.
    * ``text``, ``start``, ``end``: ``sources[source_index].text[start:end] == text``.
    * ``score``: the log-probability the cited text (the whole answer, or one answer sentence)
      loses when this span is removed, in nats summed over the text's tokens: the fit's signed
      coefficient (nats per token) times the number of tokens. With the default leave-one-out
      method this is exact: removing the span makes the cited text ``exp(score)`` times less
      likely to the surrogate. Only positive scores (support) become citations. (With a method
      whose target is ``"kl"`` the whole-answer score is the KL divergence avoided instead:
      influence on the surrogate's distribution rather than support for this answer.)
    * ``confidence`` in [0, 1]: ``(1 - exp(-score)) * clip(R², 0, 1)``. The first factor is the
      fraction of the cited text's probability that goes away when the span is removed (0.5 at
      0.69 nats, 0.95 at 3); the second discounts it by how well the additive fit explains the
      surrogate's responses (its weighted R²; exactly 1 for leave-one-out, whose fit is exact).
      It measures how much the *surrogate* needs the span to produce the cited text; it is not a
      probability calibrated against human judgements (``benchmarks/bench_citations.py`` reports
      how often cited sentences are HotpotQA's supporting facts).
    """

    model_config = ConfigDict(frozen=True)

    source_id: str
    source_index: int
    sentence_index: int
    feature_index: int
    text: str
    start: int
    end: int
    score: float
    confidence: float


class SentenceCitations(BaseModel):
    """The citations of one answer sentence (``answer[start:end] == text``).

    ``token_start``/``token_end``: the surrogate's answer tokens of this sentence
    (``explanation.answer_tokens[token_start:token_end]``); ``scores``: the signed score (see
    :class:`Citation`) of every feature, before ``top_k`` and the thresholds; ``r2``: the fit's
    weighted R² (``None`` when no answer token maps to the sentence).
    """

    model_config = ConfigDict(frozen=True)

    index: int
    text: str
    start: int
    end: int
    token_start: int
    token_end: int
    r2: float | None = None
    scores: list[float] = Field(default_factory=list)
    citations: list[Citation] = Field(default_factory=list)


class CitationTimings(BaseModel):
    """Wall-clock seconds: the explanation (scoring pass included), the per-sentence fits, all."""

    explain: float = 0.0
    fit: float = 0.0
    total: float = 0.0


class Citations(BaseModel):
    """Citations of one answer: ``overall`` for the whole answer, ``sentences`` per answer sentence.

    ``explanation`` is the whole-answer :class:`~attribsdk.explanation.Explanation` (features =
    the sources' sentences, perturbations and per-token log-probabilities in ``samples``).
    ``settings`` records the filters applied (``top_k``, ``min_score``, ``min_confidence``,
    ``unit``). Round-trips: ``Citations.model_validate_json(c.model_dump_json())``.
    """

    model_config = ConfigDict(extra="forbid")

    answer: str
    query: str | None = None
    sources: list[Source]
    overall: list[Citation]
    sentences: list[SentenceCitations]
    explanation: Explanation | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    timings: CitationTimings = CitationTimings()

    @property
    def cited_source_ids(self) -> list[str]:
        """Ids of the sources cited anywhere (whole answer or a sentence), in input order."""
        cited = {c.source_index for c in self.overall} | {
            c.source_index for s in self.sentences for c in s.citations
        }
        return [self.sources[i].id for i in sorted(cited)]

    def annotated(self, marker: str = " [{ids}]") -> str:
        """The answer with each sentence's cited source ids after it, e.g.
        ``"Paris is the capital. [doc2] It lies on the Seine. [doc1, doc3]"`` (``marker`` formats
        ``{ids}``, the comma-separated ids; a sentence without citations gets no marker)."""
        out: list[str] = []
        pos = 0
        for s in self.sentences:
            ids: list[str] = []
            for c in s.citations:
                if c.source_id not in ids:
                    ids.append(c.source_id)
            out.append(self.answer[pos : s.end])
            if ids:
                out.append(marker.format(ids=", ".join(ids)))
            pos = s.end
        out.append(self.answer[pos:])
        return "".join(out)

    def table(self, *, width: int = 100) -> str:
        """Plain text: the whole answer's citations, then each sentence's."""
        text_w = max(20, width - 40)

        def rows(cits: list[Citation]) -> list[str]:
            if not cits:
                return ["    (no supporting source sentence)"]
            return [
                f"    [{c.source_id}] conf {c.confidence:.2f}  score {c.score:+.3f}  "
                + textwrap.shorten(" ".join(c.text.split()), width=text_w, placeholder="…")
                for c in cits
            ]

        lines = [f"Answer: {self.answer.strip()}", "Whole answer:", *rows(self.overall)]
        for s in self.sentences:
            snippet = textwrap.shorten(" ".join(s.text.split()), width=text_w + 20, placeholder="…")
            lines += [f"Sentence {s.index + 1}: {snippet}", *rows(s.citations)]
        lines.append(f"{self.timings.total:.2f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# -- alignment of the answer's tokens ------------------------------------------------------------


def token_char_spans(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character span ``(start, end)`` in ``text`` of each decoded token.

    Tokens are matched left to right; a token that cannot be matched where expected (a multi-byte
    character split over tokens decodes to U+FFFD; some tokenizers drop a leading space) takes
    the characters up to the next matched token. Spans never go backwards.
    """
    spans: list[tuple[int, int]] = []
    pending: list[int] = []
    pos = 0
    for i, tok in enumerate(tokens):
        j = text.find(tok, pos) if tok and "\ufffd" not in tok else -1
        if j >= 0 and (j == pos or pending or not text[pos:j].strip()):
            for k in pending:
                spans[k] = (pos, j)
            pending = []
            spans.append((j, j + len(tok)))
            pos = j + len(tok)
        else:
            pending.append(i)
            spans.append((pos, pos))
    for k in pending:
        spans[k] = (pos, len(text))
    return spans


def sentence_token_ranges(
    text: str, tokens: Sequence[str], sentences: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Half-open token range of each sentence span of ``text``: the tokens whose first
    non-space character lies inside the sentence (``(0, 0)`` when none does)."""
    starts: list[int | None] = []
    for s, e in token_char_spans(text, tokens):
        lead = s
        while lead < e and text[lead].isspace():
            lead += 1
        starts.append(lead if lead < e else None)
    out: list[tuple[int, int]] = []
    for s0, e0 in sentences:
        idx = [t for t, c in enumerate(starts) if c is not None and s0 <= c < e0]
        out.append((idx[0], idx[-1] + 1) if idx else (0, 0))
    return out


# -- the citer -------------------------------------------------------------------------------------


def default_cite_method() -> RopeLime:
    """Leave-one-out RoPE-LIME on the answer's ΔNLL, without a locality kernel.

    * Leave-one-out: M + 1 scored prompts for M source sentences. With every sample one feature
      away from the reference the weighted fit is exact, so kernel weights cannot change it and
      their span capture is skipped; each coefficient is the exact effect of removing that
      sentence. LOO also ranked supporting facts better than Sparse-K on HotpotQA with the shipped
      surrogate (README, "Measured quality and speed").
    * ΔNLL target: a citation must *support* the answer (removing it makes the answer less
      likely). The KL target measures influence on the surrogate's whole next-token distribution,
      whatever the answer says; with it, a source that argues against the answer can rank first.
      ΔNLL also puts the whole answer and each sentence (:func:`fit_answer_spans`) in one unit.
    """
    return RopeLime(sampler="loo", kernel="none", target="delta_nll")


class Citer:
    """Finds the source sentences an answer is based on. Reusable: the surrogate loads once.

    Args:
        explainer: an :class:`~attribsdk.explainer.Explainer` to borrow (the caller closes it);
            by default the citer owns one built from ``closed``, ``surrogate`` and
            ``explainer_options`` and closes it in :meth:`aclose`.
        closed: a closed model (model string or :class:`ClosedModel`) used only when
            :meth:`cite` gets ``answer=None`` and a query: one call then writes the answer.
            ``None`` (default): answers must be given.
        surrogate: the surrogate (name, path or :class:`~attribsdk.scoring.base.Scorer`).
        method: a perturbation method that records per-token log-probabilities (a
            :class:`~attribsdk.methods.RopeLime`; ``"rope-lime"``, ``"rope-lime-loo"``); default
            :func:`default_cite_method`. Used even when the borrowed explainer has another default.
        unit: what a citation points at: source ``"sentences"``, ``"paragraphs"`` or whole
            ``"documents"``.
        top_k: at most this many citations per target (``None``: all that pass the thresholds).
        min_score: a citation's score must exceed this (nats; 0: any support above numerical
            noise, 1e-9).
        min_confidence: and its confidence must reach this (default 0.5: removing the span at
            least halves the probability of the cited text, with an exact fit).
        seed, template, system, language: sampler seed, user-message template (``{context}`` and,
            with a query, ``{question}``), system prompt and the language of sentence splitting.
        **explainer_options: further :class:`Explainer` arguments (``device=``, ``store=``...).
    """

    def __init__(
        self,
        explainer: Explainer | None = None,
        *,
        closed: str | ClosedModel | None = None,
        surrogate: str | Scorer = DEFAULT_SURROGATE,
        method: str | Method | None = None,
        unit: Unit = "sentences",
        top_k: int | None = 3,
        min_score: float = 0.0,
        min_confidence: float = 0.5,
        seed: int = 0,
        template: str | None = None,
        system: str | None = None,
        language: str = "en",
        **explainer_options: Any,
    ) -> None:
        meth = default_cite_method() if method is None else make_method(method)
        if not isinstance(meth, RopeLime):
            raise ConfigError(
                f"citations need a perturbation method that scores the answer's tokens (rope-lime, "
                f"rope-lime-loo), got {meth.name!r}"
            )
        if unit not in ("sentences", "paragraphs", "documents"):
            raise ConfigError(f"unit must be 'sentences', 'paragraphs' or 'documents', got {unit!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be an int >= 1 or None, got {top_k!r}")
        for name, value in (("min_score", min_score), ("min_confidence", min_confidence)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if explainer is not None and (closed is not None or explainer_options):
            raise ConfigError("pass either an explainer or the options to build one, not both")
        self.method: RopeLime = meth
        self.unit: Unit = unit
        self.top_k = top_k
        self.min_score = float(min_score)
        self.min_confidence = float(min_confidence)
        self.seed = seed
        self.template = template
        self.system = system
        self.language = language
        self._owns = explainer is None
        self._can_generate = explainer is not None or closed is not None
        if explainer is None:
            explainer = Explainer(
                closed="local:smollm2" if closed is None else closed,
                surrogate=surrogate,
                method=meth,
                seed=seed,
                **explainer_options,
            )
        self.explainer = explainer

    def __repr__(self) -> str:
        return f"Citer(surrogate={self.explainer.surrogate_name!r}, unit={self.unit!r}, top_k={self.top_k})"

    # -- lifetime ---------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the explainer this citer owns (a borrowed one is left to its owner)."""
        if self._owns:
            await self.explainer.aclose()

    async def __aenter__(self) -> Citer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Citer:
        """Synchronous use: ``with Citer() as citer: citer.cite_sync(...)``. A borrowed explainer
        must itself be entered (``with Explainer() as ex:``)."""
        if self._owns:
            self.explainer.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._owns:
            self.explainer.__exit__(exc_type, exc, tb)

    # -- prompt -----------------------------------------------------------------------------------
    def prompt(self, sources: str | Iterable[Any], query: str | None = None) -> Prompt:
        """The prompt the surrogate re-reads: the sources (one document each, its ``unit`` spans
        the features) in :data:`CITE_TEMPLATE` (:data:`SOURCES_TEMPLATE` without a query)."""
        return self._prompt(as_sources(sources), query)

    def messages(self, sources: str | Iterable[Any], query: str | None = None) -> list[Message]:
        """Chat messages of :meth:`prompt`: send your LLM exactly these so that the surrogate
        explains the answer to the prompt that produced it."""
        return list(self.prompt(sources, query).render().messages)

    def _prompt(self, sources: list[Source], query: str | None) -> Prompt:
        if query is not None and (not isinstance(query, str) or not query.strip()):
            raise InputError("`query` must be a non-empty string or None")
        docs: list[Document] = []
        for src in sources:
            spans = segment_text(src.text, self.unit, language=self.language)
            if not spans:
                raise InputError(f"source {src.id!r} has no text to cite")
            docs.append(Document(parts=tuple(parts_from_spans(src.text, spans))))
        template = self.template or (CITE_TEMPLATE if query is not None else SOURCES_TEMPLATE)
        fixed = {"question": query} if query is not None else {}
        return Prompt(template=template, documents=tuple(docs), system=self.system, fixed=fixed)

    # -- cite -------------------------------------------------------------------------------------
    async def cite(
        self,
        answer: str | None,
        sources: str | Iterable[Any],
        *,
        query: str | None = None,
        seed: int | None = None,
    ) -> Citations:
        """Citations of ``answer`` among ``sources`` (see :func:`as_sources` for what a source may
        be). ``query`` is the question the answer replies to (recommended: the surrogate then reads
        the prompt your LLM read). ``answer=None`` asks the closed model once (needs ``closed=``
        and a query). Raises :class:`InputError` for an empty answer, no sources or a source
        without text."""
        t_start = time.perf_counter()
        if answer is None:
            if query is None or not self._can_generate:
                raise InputError(
                    "no answer to cite: pass the answer, or a query and a Citer with a closed model "
                    "(Citer(closed=...)) to generate one"
                )
        elif not isinstance(answer, str) or not answer.strip():
            raise InputError("`answer` must be a non-empty string (the answer to cite)")
        srcs = as_sources(sources)
        prompt = self._prompt(srcs, query)
        expl = await self.explainer.explain_prompt(
            prompt, answer=answer, method=self.method, seed=self.seed if seed is None else seed
        )
        t_explain = time.perf_counter() - t_start
        try:
            return self._citations(expl, srcs, query, t_start, t_explain)
        except Exception as exc:  # the explanation (and any answer paid for) is kept
            raise_keeping(exc, "citing from the explanation failed", explanation=expl, cost=expl.cost)

    def _citations(
        self, expl: Explanation, srcs: list[Source], query: str | None, t_start: float, t_explain: float
    ) -> Citations:
        """Per-sentence and overall citations from a finished explanation."""
        t0 = time.perf_counter()
        samples = expl.samples
        if samples is None or samples.answer_logprobs is None:
            raise ConfigError(f"method {expl.method!r} recorded no per-token log-probabilities to cite from")
        text = expl.answer
        sent_spans = segment_text(text, "sentences", language=self.language) or [(0, len(text))]
        token_ranges = sentence_token_ranges(text, expl.answer_tokens, sent_spans)
        fits = fit_answer_spans(
            np.asarray(samples.masks),
            np.asarray(samples.answer_logprobs),
            np.asarray(samples.weights),
            token_ranges,
            self.method.cfg.solver,
        )
        features = expl.features
        sentence_of = _sentence_index(features)
        sentences: list[SentenceCitations] = []
        for i, ((s, e), (t0_, t1_), fit) in enumerate(zip(sent_spans, token_ranges, fits, strict=True)):
            coef = [] if fit is None else [float(v) * (t1_ - t0_) for v in fit.coef]
            sentences.append(
                SentenceCitations(
                    index=i,
                    text=text[s:e],
                    start=s,
                    end=e,
                    token_start=t0_,
                    token_end=t1_,
                    r2=None if fit is None else float(fit.r2),
                    scores=coef,
                    citations=self._select(
                        coef, None if fit is None else fit.r2, features, sentence_of, srcs
                    ),
                )
            )
        n_tokens = len(expl.answer_tokens)
        overall = self._select(
            [v * n_tokens for v in expl.coefficients], expl.r2, features, sentence_of, srcs
        )
        t_fit = time.perf_counter() - t0
        return Citations(
            answer=text,
            query=query,
            sources=srcs,
            overall=overall,
            sentences=sentences,
            explanation=expl,
            settings={
                "top_k": self.top_k,
                "min_score": self.min_score,
                "min_confidence": self.min_confidence,
                "unit": self.unit,
            },
            timings=CitationTimings(explain=t_explain, fit=t_fit, total=time.perf_counter() - t_start),
        )

    def _select(
        self,
        coef: Sequence[float],
        r2: float | None,
        features: Sequence[Feature],
        sentence_of: Sequence[int],
        sources: Sequence[Source],
    ) -> list[Citation]:
        """The supporting features of one target, strongest first, filtered (see :class:`Citation`
        for what ``confidence`` means)."""
        if not coef:
            return []
        c = np.asarray(coef, dtype=np.float64)
        quality = 1.0 if r2 is None else min(max(float(r2), 0.0), 1.0)
        out: list[Citation] = []
        for i in sorted(range(len(c)), key=lambda j: (-c[j], j)):
            confidence = quality * float(-np.expm1(-c[i])) if c[i] > 0 else 0.0
            if c[i] <= max(self.min_score, _NOISE) or confidence < self.min_confidence:
                break  # sorted by score, so confidence decreases too
            f = features[i]
            out.append(
                Citation(
                    source_id=sources[f.source].id,
                    source_index=f.source,
                    sentence_index=sentence_of[i],
                    feature_index=i,
                    text=f.text,
                    start=f.start,
                    end=f.end,
                    score=float(c[i]),
                    confidence=confidence,
                )
            )
            if self.top_k is not None and len(out) >= self.top_k:
                break
        return out

    def cite_sync(
        self,
        answer: str | None,
        sources: str | Iterable[Any],
        *,
        query: str | None = None,
        seed: int | None = None,
    ) -> Citations:
        """Blocking :meth:`cite`, inside ``with Citer() as citer:``."""
        result: Citations = self.explainer._call(self.cite, answer, sources, query=query, seed=seed)
        return result


def _sentence_index(features: Sequence[Feature]) -> list[int]:
    """Each feature's position among the features of its source."""
    counts: dict[int, int] = {}
    out: list[int] = []
    for f in features:
        out.append(counts.get(f.source, 0))
        counts[f.source] = out[-1] + 1
    return out


# -- module-level convenience ----------------------------------------------------------------------

_store_lock = threading.Lock()
_store: ModelStore | None = None


def default_store() -> ModelStore:
    """The process-wide model store :func:`cite` loads the surrogate into (created on first use;
    the model stays loaded until :func:`close_default_store` or the end of the process)."""
    global _store
    with _store_lock:
        if _store is None:
            from .scoring.models import ModelStore

            _store = ModelStore()
        return _store


def close_default_store() -> None:
    """Unload the models :func:`cite` loaded (the next call loads them again)."""
    global _store
    with _store_lock:
        store, _store = _store, None
    if store is not None:
        store.close()


async def cite(
    answer: str | None,
    sources: str | Iterable[Any],
    *,
    query: str | None = None,
    citer: Citer | None = None,
    **options: Any,
) -> Citations:
    """Citations of ``answer`` among ``sources`` in one call (see :meth:`Citer.cite`).

    With ``citer=`` the call goes to that citer. Otherwise a one-shot :class:`Citer` built from
    ``options`` runs on the process-wide :func:`default_store`, so the surrogate is loaded once
    per process, not once per call; :func:`close_default_store` releases it.
    """
    if citer is not None:
        if options:
            raise ConfigError("pass either citer= or options to build one, not both")
        return await citer.cite(answer, sources, query=query)
    if "explainer" not in options:
        options.setdefault("store", default_store())
    async with Citer(**options) as one_shot:
        return await one_shot.cite(answer, sources, query=query)


def cite_sync(
    answer: str | None, sources: str | Iterable[Any], *, query: str | None = None, **options: Any
) -> Citations:
    """Blocking :func:`cite` for synchronous code (also where an event loop already runs, e.g. a
    notebook)."""
    return run_sync(functools.partial(cite, answer, sources, query=query, **options))


# -- integration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CitedAnswer(Generic[R]):
    """What a :func:`with_citations` function returns: the wrapped function's own ``output``, the
    answer text cited and its :class:`Citations`."""

    output: R
    answer: str
    citations: Citations


#: Where a decorated step's sources/query come from: a parameter name, or
#: ``(arguments, output) -> value``.
ArgPicker: TypeAlias = str | Callable[[Mapping[str, Any], Any], Any]


def _answer_text(output: Any, answer: str | Callable[[Any], str] | None) -> str:
    if callable(answer):
        return answer(output)
    if isinstance(answer, str):
        value = _get(output, answer)
        if not isinstance(value, str):
            raise InputError(f"the RAG step's return value has no string {answer!r}")
        return value
    if isinstance(output, str):
        return output
    for name in ("answer", "text", "content"):
        value = _get(output, name)
        if isinstance(value, str):
            return value
    raise InputError(
        f"cannot find the answer in a {type(output).__name__} (no answer/text/content string); "
        "pass with_citations(..., answer=...)"
    )


def _pick(picker: ArgPicker | None, arguments: Mapping[str, Any], output: Any) -> Any:
    if picker is None:
        return None
    if isinstance(picker, str):
        return arguments[picker]
    return picker(arguments, output)


def with_citations(
    citer: Citer,
    *,
    sources: ArgPicker = "sources",
    query: ArgPicker | None = "query",
    answer: str | Callable[[Any], str] | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[CitedAnswer[R]]]]:
    """Decorate an async RAG step so that its answer comes back with citations.

    ``sources`` and ``query`` name the step's parameters holding the retrieved documents and the
    question, or are callables ``(arguments, output) -> value`` (e.g. when the step retrieves the
    documents itself and returns them: ``sources=lambda args, out: out.documents``);
    ``query=None``: no query. ``answer`` finds the answer in the step's return value: by default
    the value itself when it is a string, else its ``answer``/``text``/``content``; or an
    attribute/key name, or a callable. The decorated step returns a :class:`CitedAnswer`::

        @with_citations(citer, sources="docs", query="question")
        async def rag(question: str, docs: list[str]) -> str: ...

        result = await rag("Who...?", docs)      # result.output, result.citations
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[CitedAnswer[R]]]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"with_citations wraps async functions; {fn!r} is not one")
        sig = inspect.signature(fn)
        for what, picker in (("sources", sources), ("query", query)):
            if isinstance(picker, str) and picker not in sig.parameters:
                raise ConfigError(f"{fn.__name__}() has no parameter {picker!r} for the {what}")

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> CitedAnswer[R]:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            output = await fn(*args, **kwargs)
            try:
                text = _answer_text(output, answer)
                cits = await citer.cite(
                    text,
                    _pick(sources, bound.arguments, output),
                    query=_pick(query, bound.arguments, output),
                )
            except AttribError as exc:  # the function's output (a paid answer) is kept
                exc.partial.setdefault("output", output)
                raise
            return CitedAnswer(output=output, answer=text, citations=cits)

        return wrapper

    return decorate
