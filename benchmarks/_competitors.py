"""The systems measured by bench_engine.py besides attribsdk (not part of the package).

Every runner scores the same fixed answer under perturbations of the same
:class:`~attribsdk.prompt.Prompt`, on the same transformers model object (``LocalModel.model``), and
renders each perturbed prompt exactly as attribsdk does (``Prompt.render(keep)`` then the
surrogate's chat template), so the token sequences are identical and only the machinery differs:

* :func:`run_naive` -- one perturbation per forward pass, full logits over the whole sequence
  (``model(input_ids).logits``), log-softmax over all positions, then the answer log-probs and
  attribsdk's KL target. Runs attribsdk's own masks (Sparse-K or LOO), so its targets must match
  attribsdk's to float32 noise -- checked and reported.
* :func:`run_captum` -- Captum ``LLMAttribution`` around ``Lime`` (``n_samples`` = attribsdk's row
  count) or ``FeatureAblation`` (the LOO counterpart: M + 1 forwards), a ``TextTemplateInput`` with
  one value per feature (the HotpotQA sentences; a masked sentence becomes Captum's default
  baseline ``""``) and the fixed answer as ``target``. Captum draws its own masks (Lime: each
  feature kept with probability 1/2), so the sequence count matches attribsdk's but not the masks.
* :func:`run_contextcite` -- ContextCite ``ContextCiter`` with ``num_ablations`` = attribsdk's row
  count, the question as ``query`` and the fixed answer instead of a generated one.

Patches (each applied only around the competitor's own call, and documented where it is made):

1. Captum 0.9 + transformers 5.23, ``forward_in_tokens=True, use_cached_outputs=True`` (Captum's
   default): Captum steers incremental decoding with ``cache_position``, which transformers 5 no
   longer reads (``prepare_inputs_for_generation`` slices by ``next_sequence_length`` instead).
   Unpatched, every answer token re-feeds the whole sequence on top of a KV cache that already
   holds it: ~T times the work and wrong log-probabilities (every key attended twice, positions
   shifted; SmolLM2 on a HotpotQA prompt: answer log-probs up to 19.9 nats off).
   :func:`captum_kv_cache_fix` wraps ``model.prepare_inputs_for_generation`` to pass
   ``next_sequence_length = len(ids) - cached`` and drop the stale ``cache_position``; patched
   log-probs equal the uncached path (1.2e-7 nats). :func:`captum_parity` re-checks both on every
   run. ``captum-*-seq`` runs Captum's other mode (``forward_in_tokens=False``: prompt + answer in
   one forward), which needs no patch.
2. ContextCite 0.0.4: ``context_cite.utils`` calls ``nltk.download("punkt_tab")`` at import (a
   network fetch; no network here). The punkt data only serves its own sentence partitioner, which
   is replaced (below), so ``nltk.download`` is a no-op during that import. Its per-run ``tqdm``
   progress bar is switched off (``context_cite.utils.tqdm``), and its ``torch.cuda.amp.autocast()``
   (a no-op on CPU) warnings are silenced.
3. ContextCite has no argument for a given response: the fixed answer is placed in
   ``ContextCiter._cache["output"]`` (prompt text + answer), exactly where its ``_output`` property
   caches the generated text, so ``generate`` is never called.

Partition: ContextCite's own ``SimpleContextPartitioner`` splits the context with
``nltk.sent_tokenize`` line by line; on HotpotQA that glues each paragraph title ("Title: ") to its
first sentence and may split or merge sentences differently from HotpotQA's sentence list. To
measure the same work, :class:`PromptPartitioner` (a ``BaseContextPartitioner``) uses attribsdk's
features as sources and attribsdk's renderer for ablated contexts; ContextCite's prompt template is
attribsdk's with ``{question}`` renamed ``{query}``. The rendered prompts are checked equal.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from attribsdk.prompt import Prompt
from attribsdk.scoring.models import LocalModel

__all__ = [
    "CompetitorResult",
    "PromptPartitioner",
    "Workload",
    "captum_kv_cache_fix",
    "captum_parity",
    "chat_text",
    "prompt_ids",
    "run_captum",
    "run_contextcite",
    "run_naive",
]

Family = Literal["sparse-k", "loo"]


@dataclass(frozen=True)
class Workload:
    """One example's fixed work: the prompt, the fixed answer, attribsdk's masks for each family.

    ``masks[family]`` is attribsdk's boolean ``[N, M]`` mask matrix (row 0 unmasked) for that
    sampler and seed; ``answer_ids`` the answer as the surrogate's tokens (length T).
    """

    example_id: str
    protocol: str
    prompt: Prompt
    answer: str
    answer_ids: tuple[int, ...]
    gold: tuple[int, ...]
    masks: dict[str, np.ndarray]

    @property
    def n_features(self) -> int:
        return self.prompt.n_features

    def n_rows(self, family: str) -> int:
        return int(self.masks[family].shape[0])


@dataclass
class CompetitorResult:
    """What one explanation by a system produced.

    ``sequences``: perturbed inputs scored; ``masks``: the keep-mask of each (``[sequences, M]``), from
    which the benchmark counts the tokens of the scored sequences the same way for every system.
    """

    sequences: int
    masks: list[list[bool]] | None = None
    attributions: list[float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def chat_text(lm: LocalModel, prompt: Prompt, keep: Sequence[bool] | np.ndarray | None = None) -> str:
    """The surrogate's prompt text for ``prompt`` with the features where ``keep`` is false deleted."""
    return lm.render_chat(prompt.render(keep).messages, add_generation_prompt=True).text


def prompt_ids(lm: LocalModel, prompt: Prompt, keep: Sequence[bool] | np.ndarray) -> list[int]:
    """The prompt's token ids for ``keep``, tokenised exactly as attribsdk's engine does."""
    chat = lm.render_chat(prompt.render(keep).messages, add_generation_prompt=True)
    ids: list[int] = lm.tokenizer(chat.text, add_special_tokens=chat.add_special_tokens)["input_ids"]
    return ids


# -- naive loop -------------------------------------------------------------------------------------


def run_naive(lm: LocalModel, work: Workload, family: Family) -> CompetitorResult:
    """One forward per perturbation with full-sequence logits; returns KL targets like attribsdk's.

    ``extras["targets"]`` holds KL(p_ref || p_row) per row averaged over answer tokens (nats) and
    ``extras["answer_logprob"]`` the summed answer log-probability of each row.
    """
    model = lm.model
    masks = work.masks[family]
    answer = list(work.answer_ids)
    n_answer = len(answer)
    answer_t = torch.tensor(answer, dtype=torch.long)
    ref: torch.Tensor | None = None
    targets: list[float] = []
    answer_lp: list[float] = []
    with torch.inference_mode():
        for row in masks:
            ids = prompt_ids(lm, work.prompt, row)
            p = len(ids)
            input_ids = torch.tensor([ids + answer], dtype=torch.long, device=lm.torch_device)
            logits = model(input_ids).logits.float()  # [1, S, V]: the whole sequence
            logprobs = torch.log_softmax(logits, dim=-1)[0, p - 1 : p - 1 + n_answer]  # [T, V]
            if ref is None:
                ref = logprobs
            kl = torch.sum(ref.exp() * (ref - logprobs), dim=-1).mean()
            targets.append(float(kl))
            answer_lp.append(float(logprobs.gather(-1, answer_t.view(-1, 1)).sum()))
    return CompetitorResult(
        sequences=len(masks),
        masks=masks.tolist(),
        extras={"targets": targets, "answer_logprob": answer_lp},
    )


# -- Captum -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def captum_kv_cache_fix(model: Any) -> Iterator[None]:
    """Patch 1 (module docs): make Captum 0.9's cached token-by-token decoding feed only new tokens.

    Shadows ``model.prepare_inputs_for_generation`` with an instance attribute for the duration of
    the block; the class method is untouched and the attribute is removed afterwards.
    """
    original = model.prepare_inputs_for_generation

    def prepare(
        input_ids: torch.Tensor, past_key_values: Any = None, cache_position: Any = None, **kwargs: Any
    ) -> Any:
        del cache_position  # Captum's stale arange(prompt length); transformers 5 derives positions itself
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            kwargs["next_sequence_length"] = int(input_ids.shape[1]) - int(past_key_values.get_seq_length())
        return original(input_ids, past_key_values=past_key_values, **kwargs)

    model.prepare_inputs_for_generation = prepare
    try:
        yield
    finally:
        del model.prepare_inputs_for_generation


def run_captum(
    lm: LocalModel, work: Workload, family: Family, *, forward_in_tokens: bool = True, seed: int = 0
) -> CompetitorResult:
    """Captum ``LLMAttribution`` with ``Lime`` (Sparse-K family) or ``FeatureAblation`` (LOO family).

    ``forward_in_tokens=True`` is Captum's default (one forward per answer token, KV-cached, with
    patch 1); ``False`` feeds prompt + answer in one forward per perturbation.
    """
    from captum.attr import FeatureAblation, Lime, LLMAttribution, TextTemplateInput

    model = lm.model
    prompt = work.prompt
    values = [f.text for f in prompt.features]

    def template(*vals: str) -> str:
        # Captum puts the baseline "" where a feature is masked; HotpotQA sentences are never empty.
        return chat_text(lm, prompt, [v != "" for v in vals])

    inp = TextTemplateInput(template=template, values=values)
    method: Any = Lime(model) if family == "sparse-k" else FeatureAblation(model)
    llm_attr = LLMAttribution(method, lm.tokenizer)

    scored: list[list[bool]] = []
    inner = llm_attr.attr_method.forward_func
    n_features = len(values)

    def recording(perturbed: torch.Tensor | None, *args: Any, **kwargs: Any) -> Any:
        # One perturbed input per call (LLMAttribution evaluates one at a time); keep its mask.
        keep = [True] * n_features if perturbed is None else [bool(v) for v in perturbed.reshape(-1).tolist()]
        scored.append(keep)
        return inner(perturbed, *args, **kwargs)

    llm_attr.attr_method.forward_func = recording
    answer_t = torch.tensor(work.answer_ids, dtype=torch.long)
    kwargs: dict[str, Any] = {"forward_in_tokens": forward_in_tokens}
    if family == "sparse-k":
        kwargs["n_samples"] = work.n_rows(family)
    patch = captum_kv_cache_fix(model) if forward_in_tokens else contextlib.nullcontext()
    torch.manual_seed(seed)  # Lime's perturbations come from torch's global generator
    with patch, torch.no_grad():
        result = llm_attr.attribute(inp, target=answer_t, **kwargs)
    attributions = [float(v) for v in result.seq_attr.detach().cpu().reshape(-1)]
    return CompetitorResult(sequences=len(scored), masks=scored, attributions=attributions)


def captum_parity(lm: LocalModel, work: Workload) -> dict[str, Any]:
    """Checks run once, outside the timed calls.

    ``prompt_ids_match_attribsdk``: Captum tokenises the template's text itself
    (``add_special_tokens=True``) -- does it get attribsdk's ids? ``*_max_abs_diff``: patch 1 on the
    real model -- per-token answer log-probs (nats) of the unmasked prompt from Captum's cached
    token-by-token path, unpatched and patched, against its uncached path (patched: ~1e-6 in fp32).
    """
    from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput

    prompt = work.prompt
    inp = TextTemplateInput(
        template=lambda *vals: chat_text(lm, prompt, [v != "" for v in vals]),
        values=[f.text for f in prompt.features],
    )
    llm_attr = LLMAttribution(FeatureAblation(lm.model), lm.tokenizer)
    target = torch.tensor(work.answer_ids, dtype=torch.long)
    with torch.no_grad():
        reference = llm_attr._forward_func(None, inp, target, False, None, True)
        unpatched = llm_attr._forward_func(None, inp, target, True, None, True)
        with captum_kv_cache_fix(lm.model):
            patched = llm_attr._forward_func(None, inp, target, True, None, True)
    n = len(prompt.features)
    return {
        "prompt_ids_match_attribsdk": lm.tokenizer.encode(chat_text(lm, prompt))
        == prompt_ids(lm, prompt, [True] * n),
        "unpatched_max_abs_diff": float((unpatched - reference).abs().max()),
        "patched_max_abs_diff": float((patched - reference).abs().max()),
    }


# -- ContextCite ------------------------------------------------------------------------------------


_contextcite_ready = False


def _import_contextcite() -> Any:
    """Import context_cite with patch 2 (no network fetch at import, no progress bar)."""
    global _contextcite_ready
    import nltk

    original = nltk.download
    nltk.download = lambda *a, **k: True
    try:
        import context_cite
        import context_cite.utils as cc_utils
    finally:
        nltk.download = original
    if not _contextcite_ready:
        cc_utils.tqdm = lambda it, *a, **k: it
        _contextcite_ready = True
    return context_cite


def _context_prompt(prompt: Prompt) -> Prompt:
    """``prompt`` reduced to its context slot, so rendering it gives the (ablated) context text."""
    return Prompt(template="{context}", documents=prompt.documents, separator=prompt.separator)


class PromptPartitioner:
    """Factory for a ContextCite partitioner whose sources are attribsdk's features (module docs)."""

    @staticmethod
    def build(prompt: Prompt) -> Any:
        from context_cite.context_partitioner import BaseContextPartitioner

        ctx_prompt = _context_prompt(prompt)
        sources = [f.text for f in prompt.features]
        if any(f.slot != "context" for f in prompt.features):
            raise ValueError("ContextCite attributes to the context only; this prompt has other features")

        class _Partitioner(BaseContextPartitioner):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__(ctx_prompt.render().messages[0].content)

            @property
            def num_sources(self) -> int:
                return len(sources)

            def split_context(self) -> None:
                return None

            def get_source(self, index: int) -> str:
                return sources[index]

            def get_context(self, mask: np.ndarray | None = None) -> str:
                content: str = ctx_prompt.render(mask).messages[0].content
                return content

        return _Partitioner()


def run_contextcite(
    lm: LocalModel, work: Workload, family: Family, *, batch_size: int = 1
) -> CompetitorResult:
    """ContextCite with ``num_ablations`` = attribsdk's row count for ``family`` and the fixed answer.

    ``batch_size`` is ContextCite's own (its default 1; > 1 needs left padding, set here for the
    call and restored). ``extras`` reports whether its prompt text and answer tokens equal attribsdk's.
    """
    cc_mod = _import_contextcite()
    prompt = work.prompt
    if prompt.system is not None or "{question}" not in prompt.template:
        raise ValueError("ContextCite builds a single user message from {context} and {query}")
    partitioner = PromptPartitioner.build(prompt)
    tokenizer = lm.tokenizer
    cc = cc_mod.ContextCiter(
        lm.model,
        tokenizer,
        partitioner.context,
        prompt.fixed["question"],
        num_ablations=work.n_rows(family),
        batch_size=batch_size,
        prompt_template=prompt.template.replace("{question}", "{query}"),
        partitioner=partitioner,
    )
    # Patch 3: the fixed answer where ContextCiter caches its generated output.
    _, prompt_text = cc._get_prompt_ids(return_prompt=True)
    cc._cache["output"] = prompt_text + work.answer
    side = tokenizer.padding_side
    if batch_size > 1:
        tokenizer.padding_side = "left"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.cuda.amp.autocast() deprecation / "CUDA not available"
            attributions = cc.get_attributions(verbose=False)
    finally:
        tokenizer.padding_side = side
    masks = np.asarray(cc._cache["reg_masks"], dtype=bool)
    return CompetitorResult(
        sequences=len(masks),
        masks=masks.tolist(),
        attributions=[float(v) for v in np.asarray(attributions).reshape(-1)],
        extras={
            "prompt_matches_attribsdk": prompt_text == chat_text(lm, prompt),
            "answer_tokens_match_attribsdk": list(cc._response_ids) == list(work.answer_ids),
            "n_sources": int(cc.num_sources),
        },
    )
