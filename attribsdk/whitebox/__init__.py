"""White-box attribution on an open local model (gradients, attention, re-scoring).

The methods in :mod:`attribsdk.methods.whitebox` are thin :class:`~attribsdk.methods.base.Method`
classes; the torch work lives here, next to :mod:`attribsdk.scoring` (the two places torch runs).
Every algorithm works on a :class:`WhiteboxInput` -- the prompt rendered with the model's chat
template, the fixed answer's tokens after it, and each feature's token indices -- and returns one
score per prompt token; :func:`aggregate` sums token scores into feature scores so white-box methods
are compared with RoPE-LIME on exactly the same features.
"""

from __future__ import annotations

from ._core import WhiteboxInput, aggregate, answer_logits, embed, prepare_input

__all__ = ["WhiteboxInput", "aggregate", "answer_logits", "embed", "prepare_input"]
