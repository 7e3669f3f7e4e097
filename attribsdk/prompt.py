"""The explained input: documents made of feature and fixed parts, placed into a prompt template.

``Prompt.render(keep)`` builds the chat messages for one perturbation: masked features are deleted
(with the whitespace that separated them) and the character span of every kept feature inside the
rendered user message is reported, so later stages can find the feature's tokens.
"""

from __future__ import annotations

import numbers
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .adapters.base import Message
from .errors import FeatureError, InputError
from .features import Feature, Part, Span, parts_from_spans, segment_text

__all__ = ["DEFAULT_TEMPLATE", "Document", "Example", "Prompt", "RenderedPrompt", "build_prompt"]

#: Default user-message template when a question is asked about a context.
DEFAULT_TEMPLATE = (
    "Answer the question using the context. Answer in one short sentence.\n\n"
    "Context:\n{context}\n\nQuestion: {question}"
)
#: Template when the explained input is the whole prompt.
PLAIN_TEMPLATE = "{question}"


class Document(BaseModel):
    """One source document: a sequence of parts that fills a template slot."""

    model_config = ConfigDict(frozen=True)

    parts: tuple[Part, ...]
    slot: str = "context"

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts)


@dataclass(frozen=True)
class RenderedPrompt:
    """Messages for one perturbation plus where each feature sits in them.

    ``spans[i]`` is ``(message_index, start, end)`` — character offsets of feature ``i`` inside
    ``messages[message_index].content`` — or ``None`` when feature ``i`` is masked.
    """

    messages: tuple[Message, ...]
    spans: tuple[tuple[int, int, int] | None, ...]
    keep: tuple[bool, ...]


def _template_fields(template: str) -> list[tuple[str, str | None]]:
    """Split a ``str.format`` template into (literal, field) pairs; braces escape as usual."""
    out: list[tuple[str, str | None]] = []
    try:
        for literal, field, spec, conv in string.Formatter().parse(template):
            if field is not None and (spec or conv or not re.fullmatch(r"[A-Za-z_]\w*", field)):
                raise InputError(f"template field {{{field}}} must be a plain name")
            out.append((literal, field))
    except ValueError as exc:
        raise InputError(f"invalid prompt template: {exc}") from exc
    return out


class Prompt(BaseModel):
    """The full explained input: optional system prompt, a user template and its documents.

    ``template`` is a ``str.format`` string whose fields name slots (``{context}``,
    ``{question}``...). Documents of the same slot are joined with ``separator``. Every slot used by
    a document must appear in the template, and every template field must be filled.
    """

    model_config = ConfigDict(frozen=True)

    template: str = DEFAULT_TEMPLATE
    documents: tuple[Document, ...]
    system: str | None = None
    separator: str = "\n\n"
    #: Fixed slot values (not features), e.g. ``{"question": "..."}``.
    fixed: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Prompt:
        fields = {f for _, f in _template_fields(self.template) if f is not None}
        doc_slots = {d.slot for d in self.documents}
        missing = fields - doc_slots - set(self.fixed)
        if missing:
            raise InputError(f"template fields {sorted(missing)} have no document or fixed value")
        both = doc_slots & set(self.fixed)
        if both:
            raise InputError(f"slots {sorted(both)} have both a document and a fixed value; give one")
        unused = (doc_slots | set(self.fixed)) - fields
        if unused:
            raise InputError(f"slots {sorted(unused)} do not appear in the template {self.template!r}")
        if not self.features:
            raise FeatureError("the explained input has no features (empty text or no spans)")
        return self

    # -- features ---------------------------------------------------------------------------
    @property
    def features(self) -> list[Feature]:
        feats: list[Feature] = []
        for d_idx, doc in enumerate(self.documents):
            pos = 0
            for part in doc.parts:
                if part.feature:
                    feats.append(
                        Feature(
                            index=len(feats),
                            text=part.text,
                            start=pos,
                            end=pos + len(part.text),
                            source=d_idx,
                            slot=doc.slot,
                        )
                    )
                pos += len(part.text)
        return feats

    @property
    def n_features(self) -> int:
        return sum(p.feature for d in self.documents for p in d.parts)

    # -- rendering --------------------------------------------------------------------------
    def render(self, keep: Sequence[bool] | Sequence[int] | np.ndarray | None = None) -> RenderedPrompt:
        """Messages with the features where ``keep[i]`` is false (or 0) deleted (``None``: keep all)."""
        m = self.n_features
        keep_t = (True,) * m if keep is None else _keep_flags(keep)
        if len(keep_t) != m:
            raise InputError(f"mask has {len(keep_t)} entries, the prompt has {m} features")

        # Render each document, recording feature spans relative to the document's rendering.
        slot_texts: dict[str, list[str]] = {}
        slot_spans: dict[str, list[tuple[int, int, int]]] = {}  # (feature, start, end) in slot text
        f_idx = 0
        for doc in self.documents:
            text, spans, f_idx = _render_document(doc.parts, keep_t, f_idx)
            if not text.strip():
                continue
            chunks = slot_texts.setdefault(doc.slot, [])
            base = sum(len(c) for c in chunks) + len(self.separator) * len(chunks)
            chunks.append(text)
            slot_spans.setdefault(doc.slot, []).extend((i, base + s, base + e) for i, s, e in spans)

        # Fill the template, tracking where each slot lands.
        content: list[str] = []
        pos = 0
        spans_out: list[tuple[int, int, int] | None] = [None] * m
        msg_index = 1 if self.system is not None else 0
        for literal, field in _template_fields(self.template):
            content.append(literal)
            pos += len(literal)
            if field is None:
                continue
            if field in self.fixed:
                value = self.fixed[field]
            else:
                value = self.separator.join(slot_texts.get(field, []))
                for i, s, e in slot_spans.get(field, []):
                    spans_out[i] = (msg_index, pos + s, pos + e)
            content.append(value)
            pos += len(value)
        user = "".join(content)
        messages: list[Message] = []
        if self.system is not None:
            messages.append(Message(role="system", content=self.system))
        messages.append(Message(role="user", content=user))
        return RenderedPrompt(messages=tuple(messages), spans=tuple(spans_out), keep=keep_t)


def _keep_flags(keep: Sequence[bool] | Sequence[int] | np.ndarray) -> tuple[bool, ...]:
    """``keep`` as booleans: each entry a bool or a number equal to 0 or 1 (a string such as
    ``"0"`` would otherwise count as kept)."""
    if isinstance(keep, np.ndarray):
        if keep.ndim != 1:
            raise InputError(f"a mask must be 1-D, got shape {keep.shape}")
        if keep.dtype != np.bool_ and (
            not np.issubdtype(keep.dtype, np.number) or not np.isin(keep, (0, 1)).all()
        ):
            raise InputError("mask entries must be booleans or 0/1")
        return tuple(bool(k) for k in keep)
    if isinstance(keep, (str, bytes)):
        raise InputError(f"a mask must be a sequence of booleans or 0/1, got {type(keep).__name__}")
    flags: list[bool] = []
    for i, k in enumerate(keep):
        if isinstance(k, (bool, np.bool_)) or (isinstance(k, numbers.Real) and k in (0, 1)):
            flags.append(bool(k))
        else:
            raise InputError(f"mask entry {i} must be a boolean or 0/1, got {k!r}")
    return tuple(flags)


def _render_document(
    parts: Sequence[Part], keep: Sequence[bool], f_idx: int
) -> tuple[str, list[tuple[int, int, int]], int]:
    """Render one document with masked features deleted.

    Whitespace-only fixed parts act as separators: between two surviving units exactly the separator
    that stood directly before the later one is kept, so deleting a word or a paragraph leaves no
    double spaces or blank lines. Leading/trailing whitespace survives only when the first/last unit
    does. Fixed text that is not whitespace always stays.
    """
    out: list[str] = []
    spans: list[tuple[int, int, int]] = []
    pos = 0
    sep = ""  # the most recent whitespace separator since the last surviving unit
    emitted = False  # has any unit survived yet?
    removed = False  # has any feature been deleted so far?
    last_survived = True
    for part in parts:
        if not part.feature and not part.text.strip():
            sep = part.text
            continue
        survives = (not part.feature) or keep[f_idx]
        if survives:
            lead = sep if (emitted or not removed) else ""
            out.append(lead)
            pos += len(lead)
            if part.feature:
                spans.append((f_idx, pos, pos + len(part.text)))
            out.append(part.text)
            pos += len(part.text)
            sep = ""
            emitted = True
        else:
            removed = True
        last_survived = survives
        if part.feature:
            f_idx += 1
    if last_survived and sep:
        out.append(sep)
    return "".join(out), spans, f_idx


def _doc_from_spec(text: str, granularity: str | Sequence[Span], slot: str, language: str) -> Document:
    if not isinstance(text, str):
        raise InputError(f"documents must be strings, got {type(text).__name__}")
    spans: Sequence[Span]
    if isinstance(granularity, str):
        spans = segment_text(text, granularity, language=language)
    else:
        spans = list(granularity)
    return Document(parts=tuple(parts_from_spans(text, spans)), slot=slot)


def build_prompt(
    question: str,
    context: str | Sequence[str] | None = None,
    *,
    features: str | Sequence[Span] | Sequence[Sequence[Span]] = "sentences",
    system: str | None = None,
    template: str | None = None,
    explain_question: bool = False,
    language: str = "en",
) -> Prompt:
    """Build a :class:`Prompt` from the common inputs.

    * ``context`` given: its documents are the explained input (features), the question is fixed
      text unless ``explain_question`` is true (then its words are features too).
    * ``context`` is ``None``: the question itself is the explained input.

    ``features`` is a granularity (``"words"``, ``"sentences"``, ``"paragraphs"``, ``"documents"``)
    or explicit character spans: a list of ``(start, end)`` for a single text, or one such list per
    document.
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question/prompt must be a non-empty string")
    for name, value in (("system", system), ("template", template)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"`{name}` must be a string or None, got {type(value).__name__}")
    if context is not None and not isinstance(context, (str, list, tuple)):
        raise InputError(f"`context` must be a string or a list of strings, got {type(context).__name__}")
    if not isinstance(features, (str, list, tuple)):
        raise FeatureError(
            "`features` must be a granularity ('words', 'sentences', 'paragraphs', 'documents') or a "
            f"list of (start, end) spans, got {type(features).__name__}"
        )
    if context is None:
        doc = _doc_from_spec(question, _spans_for(features, 0, 1), "question", language)
        return Prompt(template=template or PLAIN_TEMPLATE, documents=(doc,), system=system)
    docs_in = [context] if isinstance(context, str) else list(context)
    if not docs_in:
        raise InputError("context is an empty list")
    docs = [
        _doc_from_spec(t, _spans_for(features, i, len(docs_in)), "context", language)
        for i, t in enumerate(docs_in)
    ]
    fixed: dict[str, str] = {}
    if explain_question:
        docs.append(_doc_from_spec(question, "words", "question", language))
    else:
        fixed["question"] = question
    return Prompt(template=template or DEFAULT_TEMPLATE, documents=tuple(docs), system=system, fixed=fixed)


def _spans_for(
    features: str | Sequence[Span] | Sequence[Sequence[Span]], i: int, n: int
) -> str | Sequence[Span]:
    if isinstance(features, str):
        return features
    items = list(features)
    if n == 1 and items and not _is_span_list(items[0]):
        return items  # type: ignore[return-value]  # one text's spans (each checked when cut)
    if len(items) != n:
        raise FeatureError(f"explicit spans: expected one span list per document ({n}), got {len(items)}")
    return list(items[i])  # type: ignore[arg-type]


def _is_span_list(x: object) -> bool:
    """Is ``x`` one document's list of spans (rather than one span)?"""
    return isinstance(x, (tuple, list)) and (not x or isinstance(x[0], (tuple, list)))


class Example(BaseModel):
    """The inputs of one explanation, as accepted by ``Explainer.explain_many``.

    Either ``prompt`` (a ready :class:`Prompt`) or ``question`` (+ optional ``context``) is given.
    ``answer``, when set, is used instead of calling the closed model.
    """

    model_config = ConfigDict(frozen=True)

    question: str | None = None
    context: str | list[str] | None = None
    features: str | list[tuple[int, int]] | list[list[tuple[int, int]]] = "sentences"
    system: str | None = None
    template: str | None = None
    explain_question: bool = False
    prompt: Prompt | None = None
    answer: str | None = None
    id: str | None = None

    @field_validator("features", mode="before")
    @classmethod
    def _no_bool_offsets(cls, value: Any) -> Any:
        # pydantic's lax mode would read True as the offset 1
        def has_bool(x: Any) -> bool:
            return isinstance(x, bool) or (isinstance(x, (list, tuple)) and any(has_bool(v) for v in x))

        if not isinstance(value, str) and has_bool(value):
            raise FeatureError("span offsets must be integers, not booleans")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> Example:
        if (self.prompt is None) == (self.question is None):
            raise InputError("an Example needs exactly one of `prompt` or `question`")
        return self

    def to_prompt(self, *, language: str = "en") -> Prompt:
        if self.prompt is not None:
            return self.prompt
        assert self.question is not None
        return build_prompt(
            self.question,
            self.context,
            features=self.features,
            system=self.system,
            template=self.template,
            explain_question=self.explain_question,
            language=language,
        )
