"""Published reference points to draw beside benchmark results (tables and plots).

A :class:`ReferencePoint` is one published number: a metric's value for a method on a dataset and a
bucket of M, with the citation it comes from. :func:`load_reference` reads your own points from
JSON; :data:`BUILTIN_REFERENCE` holds the points shipped with attribsdk.

**The built-in table is empty, on purpose.** The RoPE-LIME paper's Table 2 (HotpotQA) and Table 3
(MMLU) values could not be retrieved while this harness was written (only the abstract was
available), and numbers are never reconstructed from memory or guessed. When the values are
available, add them as data (a JSON file in the format below, or entries of
:data:`BUILTIN_REFERENCE` citing :data:`ROPE_LIME_CITATION`), not as code changes elsewhere.

JSON format (a list, or ``{"points": [...]}``)::

    [{"dataset": "hotpotqa-paper", "bucket": "4-5", "method": "rope-lime", "metric": "auroc",
      "value": 0.0, "std": null, "citation": "Author (year), Table N", "note": ""}]

``dataset``, ``method`` and ``metric`` use the benchmark's names (dataset names of
:data:`attribsdk.eval.datasets.DATASETS`, method labels as in the results, metric names as in the
rows: ``iou``, ``f1``, ``auroc``...); ``bucket`` is a bucket label (``"2-3"`` … ``"12+"``) or
``"all"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import InputError

__all__ = [
    "BUILTIN_REFERENCE",
    "ROPE_LIME_CITATION",
    "ReferencePoint",
    "ReferenceTable",
    "load_reference",
]

#: Citation of the RoPE-LIME paper, for reference points taken from its tables.
ROPE_LIME_CITATION = "Picov & Goru (2026), RoPE-LIME, arXiv:2602.06275"


class ReferencePoint(BaseModel):
    """One published value of ``metric`` for ``method`` on ``dataset`` (bucket of M or ``"all"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    bucket: str
    method: str
    metric: str
    value: float
    std: float | None = None
    citation: str
    note: str = ""

    @field_validator("dataset", "bucket", "method", "metric", "citation")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty string")
        return value


class ReferenceTable:
    """A collection of :class:`ReferencePoint` with lookups used by the report."""

    def __init__(self, points: Iterable[ReferencePoint] = ()) -> None:
        self.points: tuple[ReferencePoint, ...] = tuple(points)

    def __len__(self) -> int:
        return len(self.points)

    def __bool__(self) -> bool:
        return bool(self.points)

    def __repr__(self) -> str:
        return f"ReferenceTable({len(self.points)} points)"

    def __add__(self, other: ReferenceTable) -> ReferenceTable:
        return ReferenceTable((*self.points, *other.points))

    def select(
        self,
        *,
        dataset: str | None = None,
        metric: str | None = None,
        method: str | None = None,
        bucket: str | None = None,
    ) -> list[ReferencePoint]:
        """Points matching every given field."""
        return [
            p
            for p in self.points
            if (dataset is None or p.dataset == dataset)
            and (metric is None or p.metric == metric)
            and (method is None or p.method == method)
            and (bucket is None or p.bucket == bucket)
        ]

    def to_json(self) -> list[dict[str, Any]]:
        return [p.model_dump() for p in self.points]


#: Reference points shipped with attribsdk. Empty: the RoPE-LIME paper's Table 2/3 values are
#: pending (see the module docstring); pass your own with ``load_reference(path)``.
BUILTIN_REFERENCE: tuple[ReferencePoint, ...] = ()


def load_reference(path: str | os.PathLike[str] | None = None, *, builtin: bool = True) -> ReferenceTable:
    """Reference points from a JSON file (format in the module docstring), plus the built-in ones
    unless ``builtin=False``. ``path=None`` gives the built-in points only. Raises
    :class:`~attribsdk.errors.InputError` for a missing or malformed file."""
    points: list[ReferencePoint] = list(BUILTIN_REFERENCE) if builtin else []
    if path is None:
        return ReferenceTable(points)
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read reference file {p}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    items = data.get("points") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InputError(f'{p}: expected a list of reference points or {{"points": [...]}}')
    for i, item in enumerate(items):
        try:
            points.append(ReferencePoint.model_validate(item))
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InputError(f"{p}: reference point {i}: {detail}") from exc
    return ReferenceTable(points)
