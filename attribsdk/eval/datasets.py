"""Labelled datasets. Each loader yields :class:`LabeledExample` objects: a ready
:class:`~attribsdk.prompt.Prompt`, the indices of its gold features and metadata.

Loaders take any path in the published format; the default paths point at the project's
``shared/data`` folder (override with the ``ATTRIBSDK_DATA_DIR`` environment variable).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import InputError
from ..features import Part
from ..prompt import DEFAULT_TEMPLATE, Document, Prompt

__all__ = ["LabeledExample", "bucket_of", "data_dir", "load_hotpotqa", "split_of"]

#: The RoPE-LIME paper's buckets of M (number of features).
BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("2-3", 2, 3), ("4-5", 4, 5), ("6-8", 6, 8), ("9-11", 9, 11), ("12+", 12, 10**9),
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


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"dataset file not found: {path} (set ATTRIBSDK_DATA_DIR or pass a path)")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{n}: invalid JSON ({exc.msg})") from exc


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
    for row in _read_jsonl(p):
        if len(row["context"]) != 10:
            continue
        ex_id = str(row["_id"])
        if split != "all" and split_of(ex_id) != split:
            continue
        facts = {(t, int(i)) for t, i in row["supporting_facts"]}
        gold_titles = {t for t, _ in facts}
        paragraphs = [(t, s) for t, s in row["context"] if protocol == "full" or t in gold_titles]
        docs: list[Document] = []
        gold: list[int] = []
        idx = 0
        for title, sentences in paragraphs:
            parts: list[Part] = [Part(text=f"{title}: ", feature=False)]
            for j, sent in enumerate(sentences):
                stripped = sent.strip()
                lead = sent[: len(sent) - len(sent.lstrip())]
                if j > 0 and not lead:
                    lead = " "
                if not stripped:
                    continue
                if lead and j > 0:
                    parts.append(Part(text=lead, feature=False))
                parts.append(Part(text=stripped, feature=True))
                if (title, j) in facts:
                    gold.append(idx)
                idx += 1
            docs.append(Document(parts=tuple(parts), slot="context"))
        prompt = Prompt(template=template, documents=tuple(docs), fixed={"question": row["question"]})
        yield LabeledExample(
            id=ex_id, prompt=prompt, gold=tuple(gold), reference_answer=row.get("answer"),
            dataset=f"hotpotqa-{protocol}",
            meta={"type": row.get("type"), "level": row.get("level"), "question": row["question"]},
        )
