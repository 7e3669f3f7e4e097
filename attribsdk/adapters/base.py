"""The seam between attribsdk and closed models.

Adapters know transport (HTTP, or a local model handle) and nothing about attribution.
Everything here is plain data: pydantic models that round-trip through JSON.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .._strategy import ConfigModel

__all__ = [
    "ClosedModel",
    "Completion",
    "GenerationParams",
    "Message",
    "MissingUsageWarning",
    "TokenLogprob",
    "Usage",
]

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class MissingUsageWarning(UserWarning):
    """A provider answered without token usage: the call's tokens and cost are counted as 0."""


class GenerationParams(ConfigModel):
    """Parameters that change a closed model's output. Defaults are deterministic (greedy)."""

    max_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    #: Index of the sample when the same request is drawn several times (part of cache keys).
    sample_index: int = Field(default=0, ge=0)


class Usage(BaseModel):
    """Token usage normalised across providers.

    ``input_tokens`` is the total input, cached reads included; ``cache_read_tokens`` and
    ``cache_write_tokens`` are the parts of it read from / written to a provider-side prompt cache.
    ``reasoning_tokens`` is the part of ``output_tokens`` spent on hidden reasoning.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class TokenLogprob(BaseModel):
    """One generated token with its log-probability (natural log) and the most likely alternatives."""

    model_config = ConfigDict(frozen=True)

    token: str
    logprob: float
    #: ``(token, logprob)`` for the ``top_logprobs`` most likely tokens at this position, best first.
    top: tuple[tuple[str, float], ...] = ()


class Completion(BaseModel):
    """A closed model's answer, normalised."""

    text: str
    usage: Usage = Usage()
    model: str
    finish_reason: str | None = None
    #: Provider response as JSON-able data (never contains credentials).
    raw: dict[str, Any] | None = None
    #: True when this completion came from a cache rather than the model.
    cached: bool = False
    #: HTTP attempts made for this completion (0 for local models and cache hits).
    attempts: int = 0
    #: Token usage of each earlier attempt whose response was unreadable and retried: the
    #: provider answered (and probably billed) them, so the ledger prices them, one by one, with
    #: this call. Not part of ``usage`` (the answer's own tokens); always empty for cache hits.
    discarded: list[Usage] = Field(default_factory=list)

    @property
    def discarded_usage(self) -> Usage:
        """The tokens of :attr:`discarded`, summed."""
        return sum(self.discarded, Usage())

    #: Per-token log-probabilities of ``text`` when ``GenerationParams.logprobs`` was set.
    logprobs: list[TokenLogprob] | None = None


@runtime_checkable
class ClosedModel(Protocol):
    """Anything that turns chat messages into one completion.

    Implementations must be safe to call concurrently from one event loop and must never put
    credentials into ``Completion.raw``, reprs or logs.
    """

    @property
    def name(self) -> str:
        """A stable identifier such as ``"openai:gpt-4o-mini"`` or ``"local:smollm2"``."""
        ...

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Return one completion for ``messages``."""
        ...

    async def aclose(self) -> None:
        """Release resources (HTTP clients, model handles the adapter owns)."""
        ...
