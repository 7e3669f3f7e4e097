"""Closed models: one adapter per API shape, and the wrappers every call goes through.

* :mod:`~attribsdk.adapters.base` -- the :class:`~attribsdk.adapters.base.ClosedModel` protocol and the
  normalised ``Message``, ``GenerationParams``, ``Completion`` and ``Usage`` types.
* :mod:`~attribsdk.adapters.openai`, :mod:`~attribsdk.adapters.anthropic` -- the HTTP APIs (any
  OpenAI-compatible server included); :mod:`~attribsdk.adapters.local` -- a local model as a closed one.
* :mod:`~attribsdk.adapters.registry` -- model strings (``"openai:gpt-4o-mini"``) to adapters.
* :mod:`~attribsdk.adapters.wrappers` -- concurrency, rate limits, budgets, test doubles;
  :mod:`~attribsdk.adapters.stack` -- how they are stacked (cache, single-flight, cost ledger).

Nothing is imported here: using one provider never imports another provider's SDK.
"""
