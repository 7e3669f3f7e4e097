"""Labelled datasets. Each loader yields :class:`LabeledExample` objects: a ready
:class:`~attribsdk.prompt.Prompt`, the indices of its gold features and metadata.

* :func:`load_hotpotqa` -- HotpotQA distractor, paper protocol (sentences of the two gold
  paragraphs) or full-context protocol (all ten paragraphs); gold = supporting facts.
* :func:`load_mmlu_words` -- MMLU questions, features = question words, gold = labelled words.
* :func:`load_eraser_movies` -- ERASER movie reviews, token or word features, gold = rationales.
* :func:`load_jsonl` -- your own labelled examples (schema in its docstring).
* :func:`load_dataset` -- any of them by name (:data:`DATASETS`).

Loaders take any path in the published format; the default paths point at the project's
``shared/data`` folder (override with the ``ATTRIBSDK_DATA_DIR`` environment variable). Every loader
accepts ``split="tune" | "report" | "all"`` (see :func:`split_of`): configurations are chosen on
``tune`` and reported on ``report``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import InputError
from ..features import Part, parts_from_spans, segment_text
from ..prompt import DEFAULT_TEMPLATE, Document, Prompt, build_prompt

__all__ = [
    "BUCKETS",
    "DATASETS",
    "ERASER_MAX_TOKENS",
    "ERASER_TEMPLATE",
    "MMLU_TEMPLATE",
    "LabeledExample",
    "bucket_of",
    "data_dir",
    "load_dataset",
    "load_eraser_movies",
    "load_hotpotqa",
    "load_jsonl",
    "load_mmlu_words",
    "split_of",
]

#: The RoPE-LIME paper's buckets of M (number of features).
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("2-3", 2, 3),
    ("4-5", 4, 5),
    ("6-8", 6, 8),
    ("9-11", 9, 11),
    ("12+", 12, 10**9),
)


def bucket_of(m: int) -> str:
    """The paper's bucket label for ``m`` features (``"1"`` for a single feature)."""
    for label, lo, hi in BUCKETS:
        if lo <= m <= hi:
            return label
    return str(m)


def split_of(example_id: str, tune_fraction: float = 0.25) -> Literal["tune", "report"]:
    """Deterministic split of dev examples: configurations are chosen on ``tune`` and reported
    on ``report`` (SHA-256 of the id, so it never depends on file order)."""
    h = int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "tune" if h < tune_fraction else "report"


class LabeledExample(BaseModel):
    """One evaluation example: the prompt, its gold feature indices and the reference answer."""

    model_config = ConfigDict(frozen=True)

    id: str
    prompt: Prompt
    gold: tuple[int, ...]
    reference_answer: str | None = None
    dataset: str
    meta: dict[str, Any] = {}

    @property
    def n_features(self) -> int:
        return self.prompt.n_features

    @property
    def bucket(self) -> str:
        return bucket_of(self.n_features)

    @property
    def fingerprint(self) -> str:
        """A hash of what an explanation of this example depends on (the prompt's parts, template,
        fixed fields and system message, and the gold indices): it changes when a loader or the
        data renders the example differently, so results computed before are not mixed in. It
        hashes every field of the prompt model, so a version that adds one changes it too: a
        resume is then refused that could have gone on (never the other way round)."""
        payload = json.dumps(
            {"prompt": self.prompt.model_dump(mode="json"), "gold": list(self.gold)},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def data_dir() -> Path:
    """Folder holding the shared evaluation data."""
    env = os.environ.get("ATTRIBSDK_DATA_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path("shared/data")


def _rows(
    path: Path, split: str, *, id_key: str = "id", unique: bool = False
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(where, id, row)`` for each JSON object of ``path`` in ``split``; ``where`` is
    ``"<path>:<line>"`` for error messages. Every row needs ``id_key``; ``unique`` also rejects
    duplicate ids (checked over the whole file, before the split filter)."""
    if not path.is_file():
        raise InputError(f"dataset file not found: {path} (set ATTRIBSDK_DATA_DIR or pass a path)")
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{where}: each line must be a JSON object")
            ex_id = str(_field(row, id_key, where))
            if unique:
                if ex_id in seen:
                    raise InputError(f"{where}: duplicate id {ex_id!r}")
                seen.add(ex_id)
            if split != "all" and split_of(ex_id) != split:
                continue
            yield where, ex_id, row


def load_hotpotqa(
    path: str | os.PathLike[str] | None = None,
    *,
    protocol: Literal["paper", "full"] = "paper",
    split: Literal["tune", "report", "all"] = "all",
    template: str = DEFAULT_TEMPLATE,
) -> Iterator[LabeledExample]:
    """HotpotQA (distractor) examples.

    ``protocol="paper"`` (as in the RoPE-LIME paper): examples with exactly 10 paragraphs; the
    context is the two gold paragraphs (those named in ``supporting_facts``), their sentences are
    the features (M = 2..20), gold = the supporting-fact sentences. ``protocol="full"``: all 10
    paragraphs' sentences are features. Each paragraph is one document ``"<title>: <sentences>"``
    whose title is fixed text.
    """
    p = Path(path) if path is not None else data_dir() / "hotpotqa_dev_distractor.dev.jsonl"
    for _, ex_id, row in _rows(p, split, id_key="_id"):
        if len(row["context"]) != 10:
            continue
        facts = {(t, int(i)) for t, i in row["supporting_facts"]}
        gold_titles = {t for t, _ in facts}
        paragraphs = [(t, s) for t, s in row["context"] if protocol == "full" or t in gold_titles]
        docs: list[Document] = []
        gold: list[int] = []
        idx = 0
        for title, sentences in paragraphs:
            # The space after the title is a separator part like those between sentences, so a
            # deleted first sentence leaves "Title: Second…", not "Title:  Second…".
            parts: list[Part] = [Part(text=f"{title}:", feature=False)]
            for j, sent in enumerate(sentences):
                stripped = sent.strip()
                if not stripped:
                    continue
                lead = sent[: len(sent) - len(sent.lstrip())] if len(parts) > 1 else ""
                parts.append(Part(text=lead or " ", feature=False))
                parts.append(Part(text=stripped, feature=True))
                if (title, j) in facts:
                    gold.append(idx)
                idx += 1
            docs.append(Document(parts=tuple(parts), slot="context"))
        prompt = Prompt(template=template, documents=tuple(docs), fixed={"question": row["question"]})
        yield LabeledExample(
            id=ex_id,
            prompt=prompt,
            gold=tuple(gold),
            reference_answer=row.get("answer"),
            dataset=f"hotpotqa-{protocol}",
            meta={"type": row.get("type"), "level": row.get("level"), "question": row["question"]},
        )


# -- MMLU word labels ------------------------------------------------------------------------------

#: User-message template of the MMLU word-label prompts: the question's words are the features,
#: the lettered choices are fixed text.
MMLU_TEMPLATE = "{question}\n\n{choices}\n\nAnswer with the letter and the text of the correct choice."
_LETTERS = "ABCDEFGHIJ"


def load_mmlu_words(
    path: str | os.PathLike[str] | None = None,
    *,
    split: Literal["tune", "report", "all"] = "all",
    template: str = MMLU_TEMPLATE,
) -> Iterator[LabeledExample]:
    """MMLU questions with word-attribution labels (``mmlu_misc_word_labels.dev.jsonl`` format).

    The prompt is the question followed by its lettered choices (``"A. ..."``, one per line); the
    features are exactly the question's whitespace-separated words (the row's ``words``); the
    choices are fixed text. Gold = ``gold_indices``. The reference answer is the correct letter
    and choice, e.g. ``"C. Uranium"``. ``template`` must contain ``{question}`` and ``{choices}``.
    """
    p = Path(path) if path is not None else data_dir() / "mmlu_misc_word_labels.dev.jsonl"
    for where, ex_id, row in _rows(p, split):
        question = _field(row, "question", where)
        choices = _field(row, "choices", where)
        if not isinstance(question, str) or not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: 'question' must be a string and 'choices' a non-empty list")
        if len(choices) > len(_LETTERS):
            raise InputError(f"{where}: at most {len(_LETTERS)} choices are supported")
        spans = segment_text(question, "words")
        words = [question[s:e] for s, e in spans]
        if "words" in row and list(row["words"]) != words:
            raise InputError(f"{where}: 'words' does not equal question.split()")
        gold = _gold(row.get("gold_indices"), len(words), where)
        doc = Document(parts=tuple(parts_from_spans(question, spans)), slot="question")
        lettered = "\n".join(f"{_LETTERS[i]}. {c}" for i, c in enumerate(choices))
        prompt = Prompt(template=template, documents=(doc,), fixed={"choices": lettered})
        answer_idx = row.get("answer")
        reference = (
            f"{_LETTERS[answer_idx]}. {choices[answer_idx]}"
            if isinstance(answer_idx, int) and 0 <= answer_idx < len(choices)
            else None
        )
        yield LabeledExample(
            id=ex_id,
            prompt=prompt,
            gold=gold,
            reference_answer=reference,
            dataset="mmlu-words",
            meta={"question": question, "gold_words": [words[i] for i in gold]},
        )


# -- ERASER movie reviews --------------------------------------------------------------------------

#: User-message template of the ERASER movie-review prompts (the review fills ``{review}``).
ERASER_TEMPLATE = (
    "Review:\n{review}\n\nIs the sentiment of this review positive or negative? Answer with one word."
)
#: Default cap on the review length, in ERASER tokens (see :func:`load_eraser_movies`).
ERASER_MAX_TOKENS = 200
_PUNCT_ONLY = re.compile(r"^[^\w\s]+$")


def load_eraser_movies(
    path: str | os.PathLike[str] | None = None,
    *,
    granularity: Literal["tokens", "words"] = "tokens",
    max_tokens: int | None = ERASER_MAX_TOKENS,
    split: Literal["tune", "report", "all"] = "all",
    template: str = ERASER_TEMPLATE,
    system: str | None = None,
) -> Iterator[LabeledExample]:
    """ERASER movie reviews with human rationales (``eraser_movies_rationales.dev.jsonl`` format).

    The review text is the row's whitespace ``tokens`` joined by single spaces; it fills the
    ``{review}`` slot of a sentiment-classification prompt (``template``). Features:

    * ``granularity="tokens"``: every token is a feature; gold = the tokens with
      ``rationale_mask == 1``.
    * ``granularity="words"``: a token made only of punctuation is merged into the preceding
      token (``"bond" ","`` → one feature ``"bond ,"``); a merged feature is gold when any of its
      tokens is.

    Reviews are long (median ~700 tokens). ``max_tokens`` (default :data:`ERASER_MAX_TOKENS` =
    200) keeps only the first ``max_tokens`` tokens, before merging; ``None`` keeps the whole
    review. An example whose kept part contains no rationale token is skipped (IoU/F1 are
    undefined without gold). The reference answer is ``"positive"`` or ``"negative"``.
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 1):
        raise InputError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    if granularity not in ("tokens", "words"):
        raise InputError(f"granularity must be 'tokens' or 'words', got {granularity!r}")
    p = Path(path) if path is not None else data_dir() / "eraser_movies_rationales.dev.jsonl"
    for where, ex_id, row in _rows(p, split):
        tokens = _field(row, "tokens", where)
        mask = _field(row, "rationale_mask", where)
        if not isinstance(tokens, list) or not isinstance(mask, list) or len(tokens) != len(mask):
            raise InputError(f"{where}: 'tokens' and 'rationale_mask' must be lists of equal length")
        n_total = len(tokens)
        if max_tokens is not None:
            tokens, mask = tokens[:max_tokens], mask[:max_tokens]
        groups: list[list[int]] = []
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str) or not tok or any(c.isspace() for c in tok):
                raise InputError(f"{where}: token {i} must be a non-empty string without whitespace")
            if granularity == "words" and groups and _PUNCT_ONLY.match(tok):
                groups[-1].append(i)
            else:
                groups.append([i])
        gold = tuple(g for g, members in enumerate(groups) if any(mask[i] for i in members))
        if not gold:
            continue
        parts: list[Part] = []
        for g, members in enumerate(groups):
            if g:
                parts.append(Part(text=" ", feature=False))
            parts.append(Part(text=" ".join(tokens[i] for i in members), feature=True))
        prompt = Prompt(
            template=template, documents=(Document(parts=tuple(parts), slot="review"),), system=system
        )
        label = str(row.get("label", "")).upper()
        reference = {"POS": "positive", "NEG": "negative"}.get(label)
        yield LabeledExample(
            id=ex_id,
            prompt=prompt,
            gold=gold,
            reference_answer=reference,
            dataset="eraser-movies",
            meta={
                "label": label,
                "n_tokens": n_total,
                "truncated": len(tokens) < n_total,
                "granularity": granularity,
            },
        )


# -- the user's own JSONL ------------------------------------------------------------------------


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    split: Literal["tune", "report", "all"] = "all",
    dataset: str | None = None,
    language: str = "en",
) -> Iterator[LabeledExample]:
    """Labelled examples from a JSONL file of your own, one JSON object per line::

        {"id": "q1",                       # required, unique
         "question": "Who wrote it?",      # required
         "context": "..." | ["doc", ...],  # optional; without it the question is the explained input
         "features": "sentences",          # optional: a granularity (words | sentences | paragraphs |
                                           #   documents, default "sentences") or explicit character
                                           #   spans [[start, end], ...] (one list per document when
                                           #   "context" is a list)
         "gold": [0, 2],                   # required: indices of the gold features
         "answer": "...",                  # optional reference answer
         "system": "...", "template": "...", "explain_question": false}   # optional prompt options

    Features are numbered in document order, exactly as :func:`attribsdk.prompt.build_prompt`
    (and therefore ``Explainer.explain``) numbers them. Errors name the file and line.
    """
    p = Path(path)
    name = dataset or p.stem
    for where, ex_id, row in _rows(p, split, unique=True):
        features = row.get("features", "sentences")
        if not isinstance(features, str):
            features = _spans_json(features, where)
        try:
            prompt = build_prompt(
                _field(row, "question", where),
                row.get("context"),
                features=features,
                system=row.get("system"),
                template=row.get("template"),
                explain_question=bool(row.get("explain_question", False)),
                language=language,
            )
        except InputError as exc:
            raise type(exc)(f"{where}: {exc.message}") from exc
        gold = _gold(_field(row, "gold", where), prompt.n_features, where)
        answer = row.get("answer")
        yield LabeledExample(
            id=ex_id,
            prompt=prompt,
            gold=gold,
            reference_answer=answer if isinstance(answer, str) else None,
            dataset=name,
            meta={"question": row["question"]},
        )


# -- registry --------------------------------------------------------------------------------------

#: Dataset names accepted by :func:`load_dataset` (and ``attribsdk bench run --dataset``).
DATASETS: tuple[str, ...] = ("hotpotqa-paper", "hotpotqa-full", "mmlu-words", "eraser-movies", "jsonl")


def load_dataset(
    name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    split: Literal["tune", "report", "all"] = "all",
    **options: Any,
) -> Iterator[LabeledExample]:
    """Examples of a named dataset (see :data:`DATASETS`); ``path`` overrides the default file
    (required for ``"jsonl"``). ``options`` go to the loader (e.g. ``max_tokens`` for ERASER)."""
    if split not in ("tune", "report", "all"):
        raise InputError(f"split must be 'tune', 'report' or 'all', got {split!r}")
    if name in ("hotpotqa-paper", "hotpotqa-full"):
        protocol: Literal["paper", "full"] = "paper" if name == "hotpotqa-paper" else "full"
        return load_hotpotqa(path, protocol=protocol, split=split, **options)
    if name == "mmlu-words":
        return load_mmlu_words(path, split=split, **options)
    if name == "eraser-movies":
        return load_eraser_movies(path, split=split, **options)
    if name == "jsonl":
        if path is None:
            raise InputError("the 'jsonl' dataset needs a path to your file")
        return load_jsonl(path, split=split, **options)
    raise InputError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


# -- helpers ---------------------------------------------------------------------------------------


def _field(row: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(row, dict) or key not in row:
        raise InputError(f"{where}: missing field {key!r}")
    return row[key]


def _gold(value: Any, m: int, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise InputError(f"{where}: gold indices must be a list of integers, got {value!r}")
    bad = [i for i in value if not 0 <= i < m]
    if bad:
        raise InputError(f"{where}: gold indices {bad} out of range for {m} features")
    return tuple(sorted(set(value)))


def _spans_json(value: Any, where: str) -> list[tuple[int, int]] | list[list[tuple[int, int]]]:
    def pair(x: Any) -> tuple[int, int]:
        if not (isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x)):
            raise InputError(f"{where}: a span must be [start, end] integers, got {x!r}")
        return (x[0], x[1])

    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'features' must be a granularity name or a list of spans")
    if all(isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x) for x in value):
        return [pair(x) for x in value]
    if all(isinstance(x, list) for x in value):
        return [[pair(y) for y in x] for x in value]
    raise InputError(f"{where}: 'features' must be a list of [start, end] spans (or one list per document)")
