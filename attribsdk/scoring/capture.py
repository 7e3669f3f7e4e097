"""Capture post-rotary query/key vectors during a normal forward pass.

transformers routes every attention call through its public ``AttentionInterface``. This module
registers one more implementation, :data:`ATTENTION_NAME`, that hands ``query``/``key`` -- already
rotated by RoPE, keys still one per KV head (before ``repeat_kv``) -- to the recorder of the current
call and then delegates to the stock SDPA function, so outputs are bit-identical to ``"sdpa"``. The
matching mask function is registered in ``AttentionMaskInterface`` too: without it transformers
builds no causal/padding mask for an unknown implementation name and outputs are silently wrong.

The recorder lives in a :class:`contextvars.ContextVar` set only inside :func:`recording`, so there is
no global state to leak between calls or threads; with no recorder active the function is plain SDPA.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError, ScoringError
from .base import RotaryPairing, SpanPooler

__all__ = ["ATTENTION_NAME", "Recorder", "enable_capture", "recording", "resolve_layer", "span_embeddings"]

#: Name under which the capturing attention is registered with transformers.
ATTENTION_NAME = "attribsdk_capture"


class Recorder:
    """Receives post-rotary tensors during forward passes.

    ``wanted`` holds ``(layer_idx, "key" | "query")`` pairs; ``tensors[(layer, which)]`` is
    ``[batch, heads, seq, head_dim]`` in the model's dtype after a forward pass: keys have one head per
    KV head, queries one per attention head. With a KV cache the keys cover the cached positions too.
    """

    __slots__ = ("tensors", "wanted")

    def __init__(self, wanted: Iterable[tuple[int, Literal["key", "query"]]]) -> None:
        self.wanted: frozenset[tuple[int, Literal["key", "query"]]] = frozenset(wanted)
        self.tensors: dict[tuple[int, str], torch.Tensor] = {}


_ACTIVE: ContextVar[Recorder | None] = ContextVar("attribsdk_capture_recorder", default=None)
_install_lock = threading.Lock()
_installed = False


def _capture_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = _ACTIVE.get()
    if recorder is not None:
        layer = int(getattr(module, "layer_idx", -1))
        if (layer, "key") in recorder.wanted:
            recorder.tensors[(layer, "key")] = key
        if (layer, "query") in recorder.wanted:
            recorder.tensors[(layer, "query")] = query
    out: tuple[torch.Tensor, torch.Tensor | None] = sdpa_attention_forward(
        module, query, key, value, attention_mask, **kwargs
    )
    return out


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, _capture_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _installed = True


def enable_capture(model: Any) -> None:
    """Switch ``model`` (a transformers ``PreTrainedModel``) to the capturing attention.

    Outputs are identical to ``attn_implementation="sdpa"``. Raises :class:`ModelLoadError` for
    models whose attention does not go through ``AttentionInterface``.
    """
    _install()
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot route {type(model).__name__}'s attention through attribsdk: {exc}"
        ) from exc
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_NAME:
        raise ModelLoadError(
            f"{type(model).__name__} does not use transformers' AttentionInterface; "
            "post-rotary vectors cannot be captured from it"
        )


@contextmanager
def recording(wanted: Iterable[tuple[int, Literal["key", "query"]]]) -> Iterator[Recorder]:
    """Record the ``(absolute layer, "key" | "query")`` tensors in ``wanted`` for forward passes run
    inside the block."""
    recorder = Recorder(wanted)
    token = _ACTIVE.set(recorder)
    try:
        yield recorder
    finally:
        _ACTIVE.reset(token)


def resolve_layer(layer: int | float, n_layers: int) -> int:
    """Absolute layer index. An ``int`` is an index (negative counts from the end); a ``float`` in
    [0, 1] is a relative depth (0.0 first layer, 1.0 last), so one default fits models of any depth.
    :class:`ConfigError` when out of range."""
    if isinstance(layer, bool) or not isinstance(layer, int | float):
        raise ConfigError(f"capture layer must be an int or a float in [0, 1], got {type(layer).__name__}")
    if isinstance(layer, float):
        if not 0.0 <= layer <= 1.0:
            raise ConfigError(f"relative capture layer must be in [0, 1], got {layer}")
        return round(layer * (n_layers - 1))
    idx = layer + n_layers if layer < 0 else layer
    if not 0 <= idx < n_layers:
        raise ConfigError(f"capture layer {layer} is out of range for a model with {n_layers} layers")
    return idx


def span_embeddings(
    recorded: np.ndarray,
    feature_tokens: Sequence[np.ndarray | None],
    pool: SpanPooler | None,
    pairing: RotaryPairing,
) -> list[Any | None]:
    """Per-feature vectors of one sequence.

    ``recorded`` is ``[heads, seq, head_dim]`` float32; ``feature_tokens[m]`` holds the token indices
    of feature ``m`` (``None`` or empty: masked / no token). Each feature's slice is
    ``[n_tok, heads, head_dim]`` float32, returned raw or passed through ``pool(vectors, pairing)``.
    """
    out: list[Any | None] = []
    for idx in feature_tokens:
        if idx is None or len(idx) == 0:
            out.append(None)
            continue
        vectors = np.ascontiguousarray(recorded[:, idx, :].transpose(1, 0, 2), dtype=np.float32)
        if pool is None:
            out.append(vectors)
            continue
        try:
            out.append(pool(vectors, pairing))
        except Exception as exc:
            raise ScoringError(
                f"the span pooler failed on a [{', '.join(map(str, vectors.shape))}] span: {exc}"
            ) from exc
    return out
