"""What a perturbed prompt is scored by: a scalar per prompt relative to the unmasked reference.

A target function receives log-probabilities over the whole vocabulary at each answer position and
returns one number per prompt; larger means "further from the reference answer". Built in:

* ``"kl"`` -- KL(p_ref || p_row) in nats, averaged over answer tokens (0 for the reference;
  >= 0 up to float32 rounding, about -1e-7 at worst).
* ``"delta_nll"`` -- mean over answer tokens of NLL_row - NLL_ref in nats/token (0 for the reference;
  positive when the prompt makes the fixed answer less likely).

Register more with :func:`register_target`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["TargetFn", "available_targets", "delta_nll", "get_target", "kl", "register_target"]

#: ``fn(ref, rows, answer_ids) -> [B]``: ``ref`` is ``[T, V]`` float32 log-probabilities of the
#: reference prompt at the T answer positions, ``rows`` is ``[B, T, V]`` the same for B prompts,
#: ``answer_ids`` is ``[T]`` int64 answer token ids. Returns a ``[B]`` float tensor.
TargetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kl(ref: torch.Tensor, rows: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_row) in nats, averaged over the T answer positions. Shape ``[B]``."""
    per_token = F.kl_div(rows, ref.unsqueeze(0).expand_as(rows), reduction="none", log_target=True).sum(-1)
    return per_token.mean(-1)


def delta_nll(ref: torch.Tensor, rows: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of ``-log p_row(a_t) - (-log p_ref(a_t))`` in nats. Shape ``[B]``."""
    idx = answer_ids.to(rows.device)
    row_lp = rows.gather(-1, idx.view(1, -1, 1).expand(rows.shape[0], -1, 1)).squeeze(-1)  # [B, T]
    ref_lp = ref.gather(-1, idx.view(-1, 1)).squeeze(-1)  # [T]
    return (ref_lp.unsqueeze(0) - row_lp).mean(-1)


_lock = threading.Lock()
_TARGETS: dict[str, TargetFn] = {"kl": kl, "delta_nll": delta_nll}


def register_target(name: str, fn: TargetFn, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``ScoringRequest(target=name)``.

    Raises :class:`ConfigError` if ``name`` is taken (pass ``replace=True`` to override it) or is not
    a non-empty string, or if ``fn`` is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("a target name must be a non-empty string")
    if not callable(fn):
        raise ConfigError(f"target {name!r}: expected a callable, got {type(fn).__name__}")
    with _lock:
        if name in _TARGETS and not replace:
            raise ConfigError(f"target {name!r} is already registered (pass replace=True to override it)")
        _TARGETS[name] = fn


def get_target(name: str) -> TargetFn:
    """The target function registered as ``name``; :class:`ConfigError` listing known ones if none."""
    with _lock:
        fn = _TARGETS.get(name)
        known = sorted(_TARGETS)
    if fn is None:
        raise ConfigError(f"unknown scoring target {name!r}; known targets: {', '.join(known)}")
    return fn


def available_targets() -> list[str]:
    """Names of the registered targets, sorted."""
    with _lock:
        return sorted(_TARGETS)
