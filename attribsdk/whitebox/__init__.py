"""White-box attribution on an open local model (gradients, attention, re-scoring).

Each algorithm is a :class:`~attribsdk.methods.base.Method` built on ``WhiteboxMethod``
(``_method``), in ``baselines``, ``heat``, ``grad_ellm`` and ``gilot``, and is registered by name in
:mod:`attribsdk.methods`; the torch work lives in this package and :mod:`attribsdk.scoring` (the two
places torch runs). Every algorithm works on a :class:`WhiteboxInput` -- the prompt rendered with
the model's chat template, the fixed answer's tokens after it, and each feature's token indices --
and returns either one score per prompt token, which :func:`aggregate` sums into feature scores, or
one score per feature directly (Occlusion, RandomAttribution, GiLOT with
``granularity="feature"``), so white-box methods are compared with RoPE-LIME on exactly the same
features.
"""

from __future__ import annotations

from ._core import WhiteboxInput, aggregate, answer_logits, embed, prepare_input

__all__ = ["WhiteboxInput", "aggregate", "answer_logits", "embed", "prepare_input"]
