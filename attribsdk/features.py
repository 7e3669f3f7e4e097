"""Stage 1: segment the explained input into features.

A :class:`Feature` is a span of one source document with its exact character offsets, so
``documents[f.source][f.start:f.end] == f.text`` always holds. Segmentation is offline:
sentences come from `sentencex` (rule based, no downloads, ~300 languages).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Literal, SupportsIndex, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from .errors import FeatureError

__all__ = ["Feature", "Granularity", "Part", "Span", "segment_text"]

#: A ``(start, end)`` character span; any integers (numpy ones too, spans often come from array
#: arithmetic), never booleans.
Span: TypeAlias = tuple[SupportsIndex, SupportsIndex]

Granularity = Literal["words", "sentences", "paragraphs", "documents"]
GRANULARITIES: tuple[str, ...] = ("words", "sentences", "paragraphs", "documents")

_WORD = re.compile(r"\S+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


class Feature(BaseModel):
    """One unit of attribution: a span of a source document.

    ``start``/``end`` are character offsets into the source document ``source`` (0 when the input
    is a single string); ``slot`` names the prompt slot the document fills (``"context"`` or
    ``"question"`` by default).
    """

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    source: int = Field(default=0, ge=0)
    slot: str = "context"


class Part(BaseModel):
    """A piece of a document: a feature (masked as a unit) or fixed text."""

    model_config = ConfigDict(frozen=True)

    text: str
    feature: bool = True


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _sentence_spans(text: str, language: str) -> list[tuple[int, int]]:
    from sentencex import get_sentence_boundaries

    spans: list[tuple[int, int]] = []
    for b in get_sentence_boundaries(language, text):
        s, e = _strip_span(text, int(b["start_index"]), int(b["end_index"]))
        if e > s:
            spans.append((s, e))
    return spans


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_strip_span(text, pos, m.start()))
        pos = m.end()
    spans.append(_strip_span(text, pos, len(text)))
    return [(s, e) for s, e in spans if e > s]


def segment_text(text: str, granularity: str, *, language: str = "en") -> list[tuple[int, int]]:
    """Character spans ``[(start, end), ...]`` of the features of ``text`` at ``granularity``.

    Spans never include surrounding whitespace and never overlap. ``words`` are whitespace-separated
    tokens (punctuation stays attached, as ``str.split()`` does); ``sentences`` come from sentencex;
    ``paragraphs`` are separated by blank lines; ``documents`` is the whole text as one feature.
    """
    if granularity == "words":
        return [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if granularity == "sentences":
        return _sentence_spans(text, language)
    if granularity == "paragraphs":
        return _paragraph_spans(text)
    if granularity == "documents":
        s, e = _strip_span(text, 0, len(text))
        return [(s, e)] if e > s else []
    raise FeatureError(
        f"unknown feature granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}, "
        "a list of (start, end) spans, or pre-split segments"
    )


def parts_from_spans(text: str, spans: Sequence[Span]) -> list[Part]:
    """Cut ``text`` into fixed and feature parts at ``spans`` (validated).

    A fixed gap's leading and trailing whitespace become parts of their own, so that masking
    treats them as separators: in ``"Title:\nA B"`` with features A and B, deleting A renders
    ``"Title: B"``, not ``"Title:\n B"``. The parts' text is ``text`` unchanged."""
    parts: list[Part] = []
    pos = 0
    for i, span in enumerate(spans):
        try:
            first, last = span[0], span[1]
        except (TypeError, IndexError, KeyError) as exc:
            raise FeatureError(f"span {i} must be a (start, end) pair of ints, got {span!r}") from exc
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (first, last)):
            raise FeatureError(f"span {i} must be a (start, end) pair of ints, got {span!r}")
        s, e = int(first), int(last)
        if not (0 <= s < e <= len(text)):
            raise FeatureError(f"span {i} = ({s}, {e}) is empty or outside the text (length {len(text)})")
        if s < pos:
            raise FeatureError(f"span {i} = ({s}, {e}) overlaps the previous span or is out of order")
        if not text[s:e].strip():
            raise FeatureError(f"span {i} = ({s}, {e}) covers only whitespace; a feature needs text")
        parts.extend(_fixed_parts(text[pos:s]))
        parts.append(Part(text=text[s:e], feature=True))
        pos = e
    parts.extend(_fixed_parts(text[pos:]))
    return parts


def _fixed_parts(gap: str) -> list[Part]:
    """``gap`` as fixed parts: leading whitespace, the text between, trailing whitespace (each
    only when non-empty; a whitespace-only gap is one part)."""
    core = gap.strip()
    if not core:
        return [Part(text=gap, feature=False)] if gap else []
    start = gap.index(core)
    pieces = (gap[:start], core, gap[start + len(core) :])
    return [Part(text=p, feature=False) for p in pieces if p]
