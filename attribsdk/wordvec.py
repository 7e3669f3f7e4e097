"""Word vectors for distances between texts (used by gSMILE's Word Mover's Distance).

A :class:`WordVectors` maps words to vectors (``None`` for a word it does not know). Three are
shipped, chosen by :func:`make_word_vectors`:

* :class:`KeyedWordVectors` -- your own table, ``{word: vector}`` (e.g. exported from gensim's
  ``KeyedVectors``: ``{w: kv[w] for w in kv.index_to_key}``).
* :class:`CallableWordVectors` -- your own function ``word -> vector | None``.
* :class:`EmbeddingWordVectors` -- the default: the input embedding matrix of a local model
  (the surrogate :class:`~attribsdk.scoring.models.LocalModel`). A word is tokenised as it would
  appear inside a sentence (with a leading space) and its vector is the mean of its tokens'
  embedding rows, so every word has a vector (no out-of-vocabulary words).

The gSMILE authors used the 300-d ``word2vec-google-news-300`` vectors, which cannot be
downloaded here (no model hub, and the file does not ship in a package); the surrogate's input
embeddings are the packaged default. Pass the GoogleNews table as a ``{word: vector}`` mapping to
reproduce the authors' setting exactly.

Vectors are returned as float64 ``[D]`` numpy arrays; every vector of one source has the same ``D``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import ConfigError, InputError

__all__ = [
    "CallableWordVectors",
    "EmbeddingWordVectors",
    "KeyedWordVectors",
    "WordVectors",
    "make_word_vectors",
]


@runtime_checkable
class WordVectors(Protocol):
    """Looks up word vectors. ``lookup`` returns one float64 ``[D]`` array per word, or ``None``
    for a word without a vector (it is then left out of the distance, as gensim does)."""

    @property
    def name(self) -> str: ...

    def lookup(self, words: Sequence[str]) -> list[np.ndarray | None]: ...


def _as_vector(value: Any, word: str, dim: int | None) -> np.ndarray:
    vec = np.asarray(value, dtype=np.float64)
    if vec.ndim != 1 or vec.size == 0:
        raise InputError(f"the vector of {word!r} must be 1-D and non-empty, got shape {vec.shape}")
    if dim is not None and vec.size != dim:
        raise InputError(f"the vector of {word!r} has {vec.size} dimensions, expected {dim}")
    if not np.isfinite(vec).all():
        raise InputError(f"the vector of {word!r} contains NaN or infinite values")
    return vec


class KeyedWordVectors:
    """A fixed ``{word: vector}`` table. Words are looked up as given, then lower-cased.

    All vectors must have the same dimension (checked on construction).
    """

    def __init__(self, table: Mapping[str, Any], *, name: str = "user-table") -> None:
        if not isinstance(table, Mapping) or not table:
            raise ConfigError("word vectors: expected a non-empty {word: vector} mapping")
        dim: int | None = None
        self._table: dict[str, np.ndarray] = {}
        for word, value in table.items():
            if not isinstance(word, str):
                raise ConfigError(f"word vectors: keys must be strings, got {type(word).__name__}")
            vec = _as_vector(value, word, dim)
            dim = vec.size
            self._table[word] = vec
        self.dim: int = int(dim or 0)
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, words: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for w in words:
            vec = self._table.get(w)
            out.append(vec if vec is not None else self._table.get(w.lower()))
        return out


class CallableWordVectors:
    """Vectors from a function ``word -> vector | None``; results are memoised per word."""

    def __init__(self, function: Callable[[str], Any], *, name: str = "user-function") -> None:
        if not callable(function):
            raise ConfigError(f"word vectors: expected a callable, got {type(function).__name__}")
        self.function = function
        self._name = name
        self._memo: dict[str, np.ndarray | None] = {}
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def lookup(self, words: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for w in words:
            with self._lock:
                if w not in self._memo:
                    value = self.function(w)
                    vec = None if value is None else _as_vector(value, w, self._dim)
                    if vec is not None:
                        self._dim = vec.size
                    self._memo[w] = vec
                out.append(self._memo[w])
        return out


class EmbeddingWordVectors:
    """Word vectors from a local causal LM's input embedding matrix (the default for gSMILE).

    ``model`` is a :class:`~attribsdk.scoring.models.LocalModel` (anything with ``.model`` -- a
    transformers model with ``get_input_embeddings()`` -- and a ``.tokenizer``). A word's vector is
    the mean of the embedding rows of the tokens of ``" " + word`` (``[hidden]`` float64). Vectors
    are memoised per word on this object; the embedding matrix is read, never copied whole.
    """

    def __init__(self, model: Any) -> None:
        if not (hasattr(model, "model") and hasattr(model, "tokenizer")):
            raise ConfigError(
                "default word vectors need a local surrogate model (a LocalModel with .model and "
                f".tokenizer), got {type(model).__name__}; pass word_vectors={{word: vector}} or a callable"
            )
        self._handle = model
        self._name = f"input-embeddings:{getattr(model, 'name', 'local')}"
        self._memo: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def lookup(self, words: Sequence[str]) -> list[np.ndarray | None]:
        with self._lock:
            missing = [w for w in dict.fromkeys(words) if w not in self._memo]
            if missing:
                self._fill(missing)
            return [self._memo[w] for w in words]

    def _fill(self, words: list[str]) -> None:
        tokenizer = self._handle.tokenizer
        weight = self._handle.model.get_input_embeddings().weight.detach()
        encoded = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
        for word, ids in zip(words, encoded, strict=True):
            if not ids:  # a tokenizer that drops the text entirely: fall back to the bare word
                ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise InputError(f"the surrogate's tokenizer produced no token for the word {word!r}")
            rows = weight[list(ids)].float().mean(dim=0)
            self._memo[word] = np.asarray(rows.cpu().numpy(), dtype=np.float64)


def make_word_vectors(spec: Any, *, surrogate: Any = None) -> WordVectors:
    """Word vectors from ``spec``: ``None`` (the surrogate's input embeddings), a ``{word: vector}``
    mapping, a callable ``word -> vector | None``, or a :class:`WordVectors` (returned unchanged).

    Raises :class:`~attribsdk.errors.ConfigError` when ``spec`` is ``None`` and ``surrogate`` is not
    a local model, or when ``spec`` is of another type.
    """
    if spec is None:
        if surrogate is None:
            raise ConfigError("default word vectors need the surrogate model; none was given")
        return EmbeddingWordVectors(surrogate)
    if isinstance(spec, WordVectors):
        return spec
    if isinstance(spec, Mapping):
        return KeyedWordVectors(spec)
    if callable(spec):
        return CallableWordVectors(spec)
    raise ConfigError(
        f"word_vectors must be None, a {{word: vector}} mapping, a callable or a WordVectors, "
        f"got {type(spec).__name__}"
    )
