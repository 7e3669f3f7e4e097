"""Word Mover's Distance (Kusner et al., 2015) between two texts, over any :class:`WordVectors`.

Follows gensim's ``KeyedVectors.wmdistance`` (gensim 4, POT backend), which the gSMILE authors
called through their ``safe_wmdistance`` helper:

1. Text is cleaned as the authors did: lower-cased, characters other than word characters and
   whitespace removed (``re.sub(r"[^\\w\\s]", "", text.lower())``), split on whitespace.
2. Words without a vector are dropped (gensim). If either side is then empty the distance is
   ``empty`` (1.0, the authors' ``safe_wmdistance``; gensim itself returns ``inf``).
3. If both texts consist of the same single unique word the distance is 0 (gensim).
4. Each text is a normalised bag of words over its unique words: ``weight = count / n_words``.
5. Word vectors are scaled to unit length (gensim's ``norm=True`` default); the ground cost is the
   Euclidean distance between them (gensim), or ``1 − cosine`` with ``metric="cosine"``. On unit
   vectors Euclidean = ``sqrt(2 · (1 − cosine))``, so both lie in ``[0, 2]``.
6. The distance is the exact optimal-transport cost ``ot.emd2(a, b, C)``.

Two deviations: gensim returns ``inf`` when every ground cost is 0 (its old solver could hang);
here that case is exactly distance 0, which is what the transport problem gives. And two texts
whose cleaned words are the same are at distance 0 even when none of their words has a vector
(punctuation or numbers only): an answer that did not change is not a maximal change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
import ot
from scipy.spatial.distance import cdist

from .errors import ConfigError
from .wordvec import WordVectors

__all__ = ["WMD", "clean_words"]

_NON_WORD = re.compile(r"[^\w\s]")


def clean_words(text: str) -> list[str]:
    """The words of ``text`` as the gSMILE authors cleaned them: lower-cased, punctuation removed."""
    return _NON_WORD.sub("", text.lower()).split()


class WMD:
    """Word Mover's Distance over ``vectors`` (see the module docstring for the exact definition).

    Args:
        vectors: where word vectors come from.
        metric: ground cost between unit word vectors, ``"euclidean"`` (gensim) or ``"cosine"``.
        normalize: scale word vectors to unit length first (gensim's ``norm=True``).
        empty: the distance when either text has no word with a vector.
    """

    def __init__(
        self,
        vectors: WordVectors,
        *,
        metric: Literal["euclidean", "cosine"] = "euclidean",
        normalize: bool = True,
        empty: float = 1.0,
    ) -> None:
        if metric not in ("euclidean", "cosine"):
            raise ConfigError(f"WMD metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.vectors = vectors
        self.metric = metric
        self.normalize = normalize
        self.empty = float(empty)

    def _bag(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(weights [U], unit vectors [U, D])`` over the text's unique in-vocabulary words."""
        words = clean_words(text)
        found = self.vectors.lookup(words)
        kept = [(w, v) for w, v in zip(words, found, strict=True) if v is not None]
        if not kept:
            return None
        counts = Counter(w for w, _ in kept)
        first: dict[str, np.ndarray] = {}
        for w, v in kept:
            first.setdefault(w, v)
        uniq = list(counts)
        weights = np.array([counts[w] for w in uniq], dtype=np.float64) / len(kept)
        vecs = np.stack([first[w] for w in uniq]).astype(np.float64)
        if self.normalize:
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.where(norms > 0, norms, 1.0)
        return weights, vecs

    def __call__(self, text1: str, text2: str) -> float:
        """The distance between two texts (``>= 0``; ``empty`` when a side has no known word)."""
        return self.many(text1, [text2])[0]

    def many(self, reference: str, others: Sequence[str]) -> list[float]:
        """Distances from ``reference`` to each of ``others`` (the reference is prepared once)."""
        ref = self._bag(reference)
        ref_words = clean_words(reference)
        out: list[float] = []
        for text in others:
            if clean_words(text) == ref_words:
                out.append(0.0)  # the same words: no change, whatever the vectors know
                continue
            bag = self._bag(text)
            if ref is None or bag is None:
                out.append(self.empty)
                continue
            (a, va), (b, vb) = ref, bag
            if self.metric == "euclidean":
                cost = cdist(va, vb, metric="euclidean")
            else:
                cost = np.clip(1.0 - va @ vb.T, 0.0, 2.0) if self.normalize else cdist(va, vb, "cosine")
            out.append(max(0.0, float(ot.emd2(a, b, np.ascontiguousarray(cost)))))
        return out
