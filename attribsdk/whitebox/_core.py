"""Inputs and shared helpers of the white-box algorithms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError, FeatureError, InputError
from ..prompt import Prompt
from ..scoring.base import ScoreResult, ScoringRequest
from ..scoring.engine import score_request, tokenize_prompt
from ..scoring.models import LocalModel

__all__ = ["WhiteboxInput", "aggregate", "answer_logits", "embed", "leave_one_out", "prepare_input"]


@dataclass
class WhiteboxInput:
    """One (prompt, fixed answer) pair as the model sees it.

    ``ids`` is ``[S]`` int64 on the model's device: the chat-rendered prompt (``n_prompt`` tokens,
    generation prompt included) followed by the answer's ``T`` tokens. Position ``n_prompt - 1 + t``
    predicts answer token ``t``. ``feature_tokens[m]`` are the indices (into the prompt part) of
    feature ``m``'s tokens, ``None`` when it maps to no token.
    """

    lm: LocalModel
    ids: torch.Tensor
    n_prompt: int
    answer_ids: list[int]
    feature_tokens: list[np.ndarray | None]
    #: The prompt and answer text (for algorithms that re-render the prompt without features).
    prompt: Prompt | None = None
    answer: str = ""

    @property
    def n_answer(self) -> int:
        return len(self.answer_ids)

    @property
    def answer_positions(self) -> torch.Tensor:
        """``[T]`` positions whose next-token logits predict the answer tokens."""
        return torch.arange(self.n_prompt - 1, self.n_prompt - 1 + self.n_answer, device=self.ids.device)

    @property
    def answer_tensor(self) -> torch.Tensor:
        return torch.tensor(self.answer_ids, dtype=torch.long, device=self.ids.device)

    @property
    def feature_mask(self) -> np.ndarray:
        """``[n_prompt]`` bool: tokens that belong to some feature."""
        mask = np.zeros(self.n_prompt, dtype=bool)
        for idx in self.feature_tokens:
            if idx is not None:
                mask[idx] = True
        return mask


def prepare_input(lm: LocalModel, prompt: Prompt, answer: str) -> WhiteboxInput:
    """Render ``prompt`` (all features kept) with ``lm``'s chat template and append ``answer``'s
    tokens. Raises :class:`InputError` for an empty answer, :class:`FeatureError` when no feature
    maps to a token, :class:`ContextWindowError` when it does not fit."""
    if not isinstance(answer, str) or not answer:
        raise InputError("the answer to explain must be a non-empty string")
    tokenized = tokenize_prompt(lm, prompt.render())
    answer_ids = [int(i) for i in lm.tokenizer(answer, add_special_tokens=False)["input_ids"]]
    if not answer_ids:
        raise InputError("the answer tokenises to zero tokens")
    if all(f is None for f in tokenized.features):
        raise FeatureError("no feature of the prompt maps to a token of the model")
    lm.check_fits(len(tokenized.ids) + len(answer_ids), "the prompt plus the answer")
    ids = torch.tensor(tokenized.ids + answer_ids, dtype=torch.long, device=lm.torch_device)
    return WhiteboxInput(
        lm=lm,
        ids=ids,
        n_prompt=len(tokenized.ids),
        answer_ids=answer_ids,
        feature_tokens=tokenized.features,
        prompt=prompt,
        answer=answer,
    )


def aggregate(
    token_scores: np.ndarray | Sequence[float], feature_tokens: Sequence[np.ndarray | None]
) -> np.ndarray:
    """Feature scores ``[M]`` float64: the sum of each feature's token scores (0 for a feature with
    no token). ``token_scores`` covers the prompt tokens (``[n_prompt]``)."""
    scores = np.asarray(token_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise InputError(f"token scores must be 1-D, got shape {scores.shape}")
    out = np.zeros(len(feature_tokens), dtype=np.float64)
    for m, idx in enumerate(feature_tokens):
        if idx is not None and len(idx):
            out[m] = float(scores[idx].sum())
    return out


def embed(wi: WhiteboxInput) -> torch.Tensor:
    """Input embeddings ``[1, S, hidden]`` of ``wi.ids`` (what gradient methods differentiate)."""
    layer = wi.lm.model.get_input_embeddings()
    out: torch.Tensor = layer(wi.ids.unsqueeze(0))
    return out


def answer_logits(
    wi: WhiteboxInput, inputs_embeds: torch.Tensor, **forward: object
) -> tuple[torch.Tensor, object]:
    """Run the decoder on ``inputs_embeds`` (``[B, S, hidden]``) and the LM head on the answer
    positions only: returns (``[B, T, V]`` float32 logits, the decoder output). Extra keyword
    arguments go to the decoder (``output_attentions=True``...)."""
    lm = wi.lm
    out = lm.decoder(inputs_embeds=inputs_embeds, use_cache=False, **forward)
    hidden = out[0][:, wi.answer_positions]  # [B, T, hidden]
    logits: torch.Tensor = lm.head_logits(hidden)
    return logits, out


def leave_one_out(wi: WhiteboxInput, target: str) -> ScoreResult:
    """Score the answer under the full prompt and under the prompt without each feature in turn
    (``M + 1`` rows, re-rendered with :meth:`Prompt.render`, batched by the scoring engine with its
    shared-prefix reuse); ``targets[1:]`` are the per-feature effects under ``target``. Call with the
    model's forward lock held."""
    prompt, answer = wi.prompt, wi.answer
    if prompt is None or not answer:
        raise ConfigError("re-rendering the prompt needs the input built by prepare_input()")
    m = prompt.n_features
    keeps = np.ones((m + 1, m), dtype=bool)
    keeps[np.arange(1, m + 1), np.arange(m)] = False
    request = ScoringRequest(prompts=[prompt.render(keep) for keep in keeps], answer=answer, target=target)
    return score_request(wi.lm, request, reuse_prefix=wi.lm.reuse_prefix)
