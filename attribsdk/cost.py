"""Dollars and budgets for closed-model calls.

* :class:`Pricing`: per-call prices from ``genai-prices`` (cached-input aware), overridable per model
  with :class:`Price`. A model with no known price costs ``None`` plus an :class:`UnknownPriceWarning`,
  never a silent $0. Local models (``local:``) and the ``test:`` double cost $0.
* :class:`Budget`: ``max_usd`` / ``max_calls``, checked before each call against a worst-case
  estimate (input tokens bounded by the prompt's UTF-8 bytes, output = ``max_tokens``), with
  in-flight calls reserved, so concurrent calls cannot overshoot it together.
* :class:`CallLedger`: records every call (upstream, cache hit, failure) and summarises them in a
  :class:`CostReport` (JSON round trip). :meth:`CallLedger.track` collects the calls made inside a
  block (per explanation, even when many run concurrently).
* :class:`MeteredModel`: the ClosedModel wrapper that checks the budget and records calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import genai_prices
from pydantic import BaseModel, Field, ValidationError

from ._strategy import ConfigModel, describe_invalid
from .adapters.base import ClosedModel, Completion, GenerationParams, Message, Usage
from .adapters.wrappers import ModelWrapper, worst_case_input_tokens
from .errors import AttribError, BudgetExceeded, ConfigError, InputError, LogprobsUnavailableError

__all__ = [
    "PRICE_SOURCE",
    "Budget",
    "CallLedger",
    "CallRecord",
    "CostReport",
    "MeteredModel",
    "Price",
    "Pricing",
    "UnknownPriceWarning",
]

logger = logging.getLogger("attribsdk.cost")

#: Where prices come from, with the version of the bundled price data.
PRICE_SOURCE = f"genai-prices {genai_prices.__version__}"

#: Providers whose calls cost nothing: ``local:`` models run on the user's machine, ``test:`` is
#: :class:`~attribsdk.adapters.wrappers.TestModel`'s canned answer.
FREE_PROVIDERS = frozenset({"local", "test"})

_MTOK = 1_000_000


class UnknownPriceWarning(UserWarning):
    """A model has no known price; its calls are reported with cost ``None``."""


class Price(ConfigModel):
    """A user-supplied price in USD per million tokens.

    ``cache_read_mtok`` / ``cache_write_mtok`` default to ``input_mtok`` when not given.
    """

    input_mtok: float = Field(ge=0)
    output_mtok: float = Field(ge=0)
    cache_read_mtok: float | None = Field(default=None, ge=0)
    cache_write_mtok: float | None = Field(default=None, ge=0)

    def cost(self, usage: Usage) -> float:
        """USD for ``usage`` (``usage.input_tokens`` includes cached reads and writes)."""
        read = usage.cache_read_tokens
        write = usage.cache_write_tokens
        plain = max(0, usage.input_tokens - read - write)
        read_rate = self.input_mtok if self.cache_read_mtok is None else self.cache_read_mtok
        write_rate = self.input_mtok if self.cache_write_mtok is None else self.cache_write_mtok
        total = (
            plain * self.input_mtok
            + read * read_rate
            + write * write_rate
            + usage.output_tokens * self.output_mtok
        )
        return total / _MTOK


class Pricing:
    """Prices calls by model name (``"openai:gpt-4o-mini"``) and normalised :class:`Usage`.

    Args:
        overrides: model name → :class:`Price` (or a dict of its fields). A key may be the full
            name (``"openai-compatible:llama3@http://host/v1"``), the name without the base URL
            (``"openai-compatible:llama3"``) or the bare model (``"llama3"``); overrides win over
            ``genai-prices``.
        aliases: model name → another model string whose ``genai-prices`` price is applied to its
            calls (``{"local:smollm2": "openai:gpt-4o-mini"}``: what the calls would have cost
            there). Each call is priced with its real usage, so context-length price tiers apply.

    ``openai:`` and ``anthropic:`` models are looked up under those providers; OpenAI-compatible
    models by their base URL (hosted providers such as Groq or Together are recognised).
    """

    def __init__(
        self,
        overrides: Mapping[str, Price | Mapping[str, float]] | None = None,
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.aliases: dict[str, str] = dict(aliases or {})
        for name, target in self.aliases.items():
            if target in self.aliases:
                raise ConfigError(f"price alias {name!r} -> {target!r}: the target is an alias itself")
        self.overrides: dict[str, Price] = {}
        for key, value in (overrides or {}).items():
            try:
                self.overrides[key] = value if isinstance(value, Price) else Price.model_validate(value)
            except (ValidationError, ConfigError) as exc:
                raise ConfigError(f"invalid price override for {key!r}: {exc}") from None
        self._warned: set[str] = set()

    @property
    def source(self) -> str:
        """E.g. ``"genai-prices 0.2.3"``, plus the overridden models when there are any."""
        parts = [PRICE_SOURCE]
        if self.overrides:
            parts.append(f"user prices for {', '.join(sorted(self.overrides))}")
        if self.aliases:
            parts.append(", ".join(f"{a} priced as {b}" for a, b in sorted(self.aliases.items())))
        return "; ".join(parts)

    def cost(self, model_name: str, usage: Usage, *, response_model: str | None = None) -> float | None:
        """USD for one call, or ``None`` (with an :class:`UnknownPriceWarning`, once per model).

        ``response_model`` is the versioned name the provider answered with; it is tried first.
        ``model_name`` is a :attr:`ClosedModel.name <attribsdk.adapters.base.ClosedModel.name>`:
        ``local:`` and ``test:`` models are free; a name without a ``provider:`` prefix (a custom model's) has
        no known price unless it is overridden.
        """
        if model_name in self.aliases:
            return self.cost(self.aliases[model_name], usage)
        provider, model = _split_name(model_name)
        override = self._override(model_name, provider, model)
        if override is not None:
            return override.cost(usage)
        if provider in FREE_PROVIDERS:
            return 0.0
        quote = self._genai_prices(provider, model, usage, response_model)
        if quote is None:
            self._warn_unknown(model_name)
        return quote

    def is_known(self, model_name: str) -> bool:
        """True when :meth:`cost` gives a number for ``model_name`` (no warning is emitted)."""
        if model_name in self.aliases:
            return self.is_known(self.aliases[model_name])
        provider, model = _split_name(model_name)
        if self._override(model_name, provider, model) is not None or provider in FREE_PROVIDERS:
            return True
        return self._genai_prices(provider, model, Usage(input_tokens=1), None) is not None

    def _override(self, model_name: str, provider: str, model: str) -> Price | None:
        if model_name in self.overrides:
            return self.overrides[model_name]
        if provider == "openai-compatible":
            model = model.rpartition("@")[0] or model
        return self.overrides.get(f"{provider}:{model}") or self.overrides.get(model)

    def _genai_prices(
        self, provider: str, model: str, usage: Usage, response_model: str | None
    ) -> float | None:
        lookup: dict[str, Any]
        if provider in ("openai", "anthropic"):
            lookup = {"provider_id": provider}
        elif provider == "openai-compatible":
            model, _, base_url = model.rpartition("@")
            lookup = {"provider_api_url": base_url}
        else:
            return None
        g_usage = genai_prices.Usage(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            output_tokens=usage.output_tokens,
        )
        for ref in dict.fromkeys(r for r in (response_model, model) if r):
            try:
                calc = genai_prices.calc_price(g_usage, ref, **lookup)
            except (LookupError, ValueError):
                continue
            return float(Decimal(calc.total_price))
        return None

    def _warn_unknown(self, model_name: str) -> None:
        if model_name in self._warned:
            return
        self._warned.add(model_name)
        message = (
            f"no price known for {model_name!r} in {PRICE_SOURCE}; its cost is reported as None. "
            "Pass Pricing(overrides={name: Price(input_mtok=..., output_mtok=...)}) to set one."
        )
        warnings.warn(message, UnknownPriceWarning, stacklevel=3)
        logger.warning(message)


def _plus(a: float | None, b: float | None) -> float | None:
    """A sum of dollars where ``None`` (unknown) wins."""
    return None if a is None or b is None else a + b


def _split_name(model_name: str) -> tuple[str, str]:
    """``(provider, model)`` of a model's name; ``("", name)`` without a ``provider:`` prefix.

    Unlike a model string a user types (where a bare name means a local model), a model's
    *name* always carries its provider when it has one, so a bare name is not assumed free.
    """
    provider, sep, model = model_name.partition(":")
    return (provider, model) if sep and model else ("", model_name)


class Budget(ConfigModel):
    """Spending limits for closed calls: at most ``max_usd`` dollars and ``max_calls`` upstream calls.

    Checked before every upstream call (cache hits are free and never refused) with the call's
    worst-case cost; a call that could exceed a limit is not sent and raises
    :class:`~attribsdk.errors.BudgetExceeded`.
    """

    max_usd: float | None = Field(default=None, ge=0)
    max_calls: int | None = Field(default=None, ge=0)


#: ``CallRecord.error`` of a call cancelled before its answer came back.
CANCELLED = "Cancelled"


class CallRecord(BaseModel):
    """One closed call as the ledger saw it."""

    model: str
    #: The provider's versioned model name, when it answered.
    response_model: str | None = None
    cached: bool = False
    attempts: int = 0
    usage: Usage = Usage()
    #: Tokens of answers the provider sent but the adapter discarded and retried (unreadable
    #: bodies that still reported their usage); priced into ``cost_usd``.
    discarded_usage: Usage = Usage()
    #: Dollars paid (0 for cache hits; ``None`` when the model's price is unknown).
    cost_usd: float | None = 0.0
    #: Dollars a cache hit saved (``None`` when unknown; 0 for upstream calls).
    avoided_usd: float | None = 0.0
    finish_reason: str | None = None
    #: Error class name when the call failed.
    error: str | None = None


class CostReport(BaseModel):
    """What a run of closed calls cost. Round-trips through JSON.

    ``closed_calls`` counts calls that reached the provider (cache hits excluded, failures
    included); ``cancelled_calls`` those cancelled before an answer came back (they may or may not
    have reached it, and are not counted against ``Budget.max_calls``); ``http_attempts`` counts
    every HTTP attempt, retries included. ``tokens`` are the
    tokens of upstream calls, ``discarded_tokens`` included: the part of them that answers
    discarded and retried (a 200 response whose body did not fit the API's schema) reported;
    ``avoided_tokens`` those that cache hits did not spend again.
    ``cost_usd`` is ``None`` when some upstream call has no known price (see ``unpriced_calls``).
    """

    closed_calls: int = 0
    failed_calls: int = 0
    cancelled_calls: int = 0
    http_attempts: int = 0
    cache_hits: int = 0
    tokens: Usage = Usage()
    discarded_tokens: Usage = Usage()
    avoided_tokens: Usage = Usage()
    cost_usd: float | None = 0.0
    avoided_usd: float | None = 0.0
    unpriced_calls: int = 0
    price_source: str = PRICE_SOURCE
    budget: Budget | None = None

    @classmethod
    def from_records(
        cls, records: list[CallRecord], *, price_source: str = PRICE_SOURCE, budget: Budget | None = None
    ) -> CostReport:
        """Aggregate ``records``."""
        report = cls(price_source=price_source, budget=budget)
        # Sums with math.fsum: ten $0.10 calls cost $1.00, not $0.9999999999999999.
        costs: list[float] | None = []
        avoided: list[float] | None = []
        for r in records:
            report.http_attempts += r.attempts
            if r.cached:
                report.cache_hits += 1
                report.avoided_tokens += r.usage
                if avoided is not None and r.avoided_usd is not None:
                    avoided.append(r.avoided_usd)
                else:
                    avoided = None
                continue
            if r.error == CANCELLED:
                report.cancelled_calls += 1
                continue
            report.closed_calls += 1
            report.failed_calls += r.error is not None
            report.tokens += r.usage + r.discarded_usage
            report.discarded_tokens += r.discarded_usage
            if r.cost_usd is None:
                report.unpriced_calls += 1
                costs = None
            elif costs is not None:
                costs.append(r.cost_usd)
        report.cost_usd = None if costs is None else math.fsum(costs)
        report.avoided_usd = None if avoided is None else math.fsum(avoided)
        return report

    def __add__(self, other: CostReport) -> CostReport:
        """Sum two reports (e.g. over the examples of a run)."""
        if not isinstance(other, CostReport):
            return NotImplemented

        sources = (
            self.price_source
            if self.price_source == other.price_source
            else (f"{self.price_source} | {other.price_source}")
        )
        return CostReport(
            closed_calls=self.closed_calls + other.closed_calls,
            failed_calls=self.failed_calls + other.failed_calls,
            cancelled_calls=self.cancelled_calls + other.cancelled_calls,
            http_attempts=self.http_attempts + other.http_attempts,
            cache_hits=self.cache_hits + other.cache_hits,
            tokens=self.tokens + other.tokens,
            discarded_tokens=self.discarded_tokens + other.discarded_tokens,
            avoided_tokens=self.avoided_tokens + other.avoided_tokens,
            cost_usd=_plus(self.cost_usd, other.cost_usd),
            avoided_usd=_plus(self.avoided_usd, other.avoided_usd),
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
            price_source=sources,
            budget=self.budget if self.budget == other.budget else None,
        )

    def summary(self) -> str:
        """One line for humans, e.g. ``"3 closed calls (4 HTTP attempts), 2 cache hits, $0.0012 ..."``."""
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.6f}"
        avoided = "unknown" if self.avoided_usd is None else f"${self.avoided_usd:.6f}"
        t = self.tokens
        return (
            f"{self.closed_calls} closed calls ({self.http_attempts} HTTP attempts, "
            f"{self.failed_calls} failed"
            + (f", {self.cancelled_calls} cancelled" if self.cancelled_calls else "")
            + "), "
            f"{self.cache_hits} cache hits; tokens in {t.input_tokens} (cached {t.cache_read_tokens}) "
            f"out {t.output_tokens} (reasoning {t.reasoning_tokens})"
            + (
                f" incl. {d.input_tokens} in / {d.output_tokens} out of discarded answers"
                if (d := self.discarded_tokens) != Usage()
                else ""
            )
            + f"; cost {cost}, avoided {avoided} "
            f"[{self.price_source}]"
        )


@dataclass(slots=True)
class _Reservation:
    estimate_usd: float


#: Active :meth:`CallLedger.track` blocks as (ledger tracked, tracker) pairs.
_TRACKERS: contextvars.ContextVar[tuple[tuple[CallLedger, CallLedger], ...]] = contextvars.ContextVar(
    "attribsdk_cost_trackers", default=()
)


class CallLedger:
    """Records closed calls, enforces an optional :class:`Budget`, and reports costs.

    One ledger is usually shared by every model of a run, so its budget covers the whole run. Use
    inside one event loop (its bookkeeping relies on there being no thread switches).
    """

    def __init__(self, *, pricing: Pricing | None = None, budget: Budget | None = None) -> None:
        self.pricing = pricing or Pricing()
        self.budget = budget
        self.records: list[CallRecord] = []
        self._reserved_usd = 0.0
        self._in_flight = 0
        self._spent_usd = 0.0
        self._upstream = 0

    # ------------------------------------------------------------------ reports
    @property
    def spent_usd(self) -> float:
        """Dollars spent on calls with a known price."""
        return self._spent_usd

    def report(self) -> CostReport:
        """A :class:`CostReport` of every call recorded so far."""
        return CostReport.from_records(self.records, price_source=self.pricing.source, budget=self.budget)

    @contextlib.contextmanager
    def track(self) -> Iterator[CallLedger]:
        """Collect the calls recorded inside this block (in this task and tasks it starts).

        Yields a ledger holding only those calls; concurrent blocks (e.g. one per explanation of
        ``explain_many``) do not see each other's calls. The budget stays this ledger's. Only calls
        recorded in *this* ledger are collected: a model metered by another ledger and wrapped again
        (``Explainer(closed=build_closed_model(...))``) is counted once, by the outer meter.
        """
        tracker = CallLedger(pricing=self.pricing)
        token = _TRACKERS.set((*_TRACKERS.get(), (self, tracker)))
        try:
            yield tracker
        finally:
            _TRACKERS.reset(token)

    def to_json(self) -> str:
        """The recorded calls and the price source as JSON (see :meth:`from_json`)."""
        return _LedgerDump(
            price_source=self.pricing.source, budget=self.budget, records=self.records
        ).model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, pricing: Pricing | None = None) -> CallLedger:
        """A ledger holding the calls of :meth:`to_json`'s output (prices are not recomputed)."""
        try:
            dump = _LedgerDump.model_validate_json(text)
        except ValidationError as exc:
            problem = describe_invalid("ledger", exc)
            raise InputError(f"not a ledger written by CallLedger.to_json: {problem}") from None
        ledger = cls(pricing=pricing, budget=dump.budget)
        for record in dump.records:
            ledger._append(record)
        return ledger

    # ------------------------------------------------------------------ recording
    def _append(self, record: CallRecord) -> None:
        self.records.append(record)
        if not record.cached and record.error != CANCELLED:
            self._upstream += 1
            if record.cost_usd is not None:
                self._spent_usd += record.cost_usd

    def _record(self, record: CallRecord) -> None:
        self._append(record)
        for parent, tracker in _TRACKERS.get():
            if parent is self:
                tracker._append(record)

    def record_completion(self, model_name: str, completion: Completion) -> CallRecord:
        """Record a completion: a paid upstream call, or a cache hit when ``completion.cached``."""
        record = self._answered(model_name, completion, attempts=completion.attempts)
        self._record(record)
        return record

    def _answered(
        self, model_name: str, completion: Completion, *, attempts: int, error: str | None = None
    ) -> CallRecord:
        """The record of a call that got ``completion``: paid, or a cache hit (its price avoided).

        A paid call also pays for the answers its adapter discarded (``completion.discarded``)."""
        cost = self.pricing.cost(model_name, completion.usage, response_model=completion.model)
        discarded = [] if completion.cached else completion.discarded
        paid = _plus(cost, self._discarded_cost(model_name, discarded, completion.model))
        return CallRecord(
            model=model_name,
            response_model=completion.model,
            cached=completion.cached,
            attempts=attempts,
            usage=completion.usage,
            discarded_usage=sum(discarded, Usage()),
            cost_usd=0.0 if completion.cached else paid,
            avoided_usd=cost if completion.cached else 0.0,
            finish_reason=completion.finish_reason,
            error=error,
        )

    def _discarded_cost(
        self, model_name: str, discarded: list[Usage], response_model: str | None
    ) -> float | None:
        """USD for discarded answers, each priced as the request it was (long-context tiers
        apply per request); ``None`` when the model's price is unknown."""
        costs = [self.pricing.cost(model_name, u, response_model=response_model) for u in discarded]
        known = [c for c in costs if c is not None]
        return math.fsum(known) if len(known) == len(costs) else None

    def record_failure(self, model_name: str, error: BaseException) -> CallRecord:
        """Record an upstream call that failed; an answer the error carries is still priced."""
        attempts = int(getattr(error, "attempts", 0) or 0)
        partial = error.partial if isinstance(error, AttribError) else {}
        answered = partial.get("completion")
        discarded = partial.get("discarded")
        if isinstance(answered, Completion):
            # e.g. a truncated answer: the provider billed it; a cached one (refused to this
            # caller) was not called for, and counts as a hit
            record = self._answered(model_name, answered, attempts=attempts, error=type(error).__name__)
        elif discarded:  # every answer was unreadable, but reported its tokens
            record = CallRecord(
                model=model_name,
                attempts=attempts,
                discarded_usage=sum(discarded, Usage()),
                cost_usd=self._discarded_cost(model_name, discarded, None),
                error=type(error).__name__,
            )
        else:  # no answer came back: nothing is billed
            record = CallRecord(model=model_name, attempts=attempts, cost_usd=0.0, error=type(error).__name__)
        self._record(record)
        return record

    def record_cancelled(self, model_name: str) -> CallRecord:
        """Record a call cancelled before its answer came back (no cost known; see
        :class:`MeteredModel`)."""
        record = CallRecord(model=model_name, cost_usd=0.0, error=CANCELLED)
        self._record(record)
        return record

    # ------------------------------------------------------------------ budget
    def reserve(self, model_name: str, messages: list[Message], params: GenerationParams) -> _Reservation:
        """Check the budget for one more upstream call and hold its worst-case cost until settled.

        Raises :class:`BudgetExceeded` (nothing is sent) or :class:`ConfigError` when a dollar limit
        is set but the model's price is unknown.
        """
        budget = self.budget
        if budget is None:
            self._in_flight += 1
            return _Reservation(0.0)
        if budget.max_calls is not None and self._upstream + self._in_flight + 1 > budget.max_calls:
            self._refuse(f"max_calls={budget.max_calls} reached", None)
        estimate = 0.0
        if budget.max_usd is not None:
            worst = Usage(input_tokens=worst_case_input_tokens(messages), output_tokens=params.max_tokens)
            if not self.pricing.is_known(model_name):
                raise ConfigError(
                    f"cannot enforce max_usd={budget.max_usd} for {model_name!r}: its price is unknown in "
                    f"{PRICE_SOURCE}; pass Pricing(overrides={{{model_name!r}: Price(...)}})"
                )
            estimate = self.pricing.cost(model_name, worst) or 0.0
            if self._spent_usd + self._reserved_usd + estimate > budget.max_usd + 1e-12:
                self._refuse(f"max_usd={budget.max_usd} could be exceeded", estimate)
        self._reserved_usd += estimate
        self._in_flight += 1
        return _Reservation(estimate)

    def release(self, reservation: _Reservation) -> None:
        """Return a reservation (after the call was recorded, or abandoned)."""
        self._reserved_usd = max(0.0, self._reserved_usd - reservation.estimate_usd)
        self._in_flight = max(0, self._in_flight - 1)

    def _refuse(self, why: str, estimate: float | None) -> None:
        budget = self.budget
        assert budget is not None
        report = self.report()
        worst = "" if estimate is None else f"; the next call could cost up to ${estimate:.6f}"
        raise BudgetExceeded(
            f"budget: {why}: spent ${self._spent_usd:.6f} in {self._upstream} calls "
            f"({self._in_flight} in flight){worst}. The call was not made; completed results stay available.",
            spent_usd=self._spent_usd,
            calls=self._upstream,
            estimate_usd=estimate,
            max_usd=budget.max_usd,
            max_calls=budget.max_calls,
            partial={"report": report},
        )

    def __repr__(self) -> str:
        return (
            f"CallLedger(calls={len(self.records)}, spent_usd={self._spent_usd:.6f}, budget={self.budget!r})"
        )


class _LedgerDump(BaseModel):
    price_source: str
    budget: Budget | None = None
    records: list[CallRecord]


class MeteredModel(ModelWrapper):
    """Checks the ledger's budget before each call and records every call (answer or failure).

    A call cancelled before its answer came back (another call of a batch failed, a timeout
    around it) is recorded with ``error="Cancelled"`` and no cost, and reported apart
    (``CostReport.cancelled_calls``): if it had already reached the provider it may have been
    billed, which no response can tell. A request the adapter refuses before sending anything
    (:class:`InputError`, :class:`ConfigError`, or :class:`LogprobsUnavailableError` with no
    attempt made, as Anthropic's adapter refuses ``logprobs=True``) is not a call and is not
    recorded."""

    def __init__(self, inner: ClosedModel, ledger: CallLedger) -> None:
        super().__init__(inner)
        if not isinstance(ledger, CallLedger):
            raise ConfigError(f"ledger must be a CallLedger, got {type(ledger).__name__}")
        self.ledger = ledger

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        """Reserve budget, call, record, release."""
        reservation = self.ledger.reserve(self.name, messages, params)
        try:
            try:
                completion = await self.inner.generate(messages, params)
            except (InputError, ConfigError):
                raise  # refused before anything was sent
            except LogprobsUnavailableError as exc:
                if exc.attempts or "completion" in exc.partial:
                    self.ledger.record_failure(self.name, exc)
                raise  # with no attempt and no answer, the adapter refused it before sending
            except Exception as exc:
                self.ledger.record_failure(self.name, exc)
                raise
            except BaseException:  # cancellation (asyncio and trio alike)
                self.ledger.record_cancelled(self.name)
                raise
            self.ledger.record_completion(self.name, completion)
            return completion
        finally:
            self.ledger.release(reservation)

    def __repr__(self) -> str:
        return f"MeteredModel({self.inner!r}, {self.ledger!r})"
