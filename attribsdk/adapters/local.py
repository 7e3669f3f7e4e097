"""``local:<name>``: an open model run in-process, used as the "closed" model.

This makes the whole pipeline work offline. The adapter knows no torch: it drives a model handle
from the scoring layer (anything with a blocking ``generate(messages, params) -> Completion``) in a
worker thread, so the event loop stays responsive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ..errors import ConfigError
from .base import Completion, GenerationParams, Message
from .wrappers import generic_request

if TYPE_CHECKING:
    from ..scoring.models import ModelStore

__all__ = ["LocalClosedModel", "TextGenerator"]


class TextGenerator(Protocol):
    @property
    def name(self) -> str: ...

    def generate(self, messages: list[Message], params: GenerationParams) -> Completion: ...


class LocalClosedModel:
    """A :class:`~attribsdk.adapters.base.ClosedModel` backed by a local model handle.

    The handle is loaded lazily (on the first call, in a worker thread) from ``store`` so that the
    same weights can serve as closed model and surrogate. When no store is given the adapter owns a
    private one and closes it in :meth:`aclose`.
    """

    def __init__(
        self,
        model: str | TextGenerator,
        *,
        store: ModelStore | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self._spec = model
        self._handle: TextGenerator | None = None if isinstance(model, str) else model
        self._store = store
        self._owns_store = False
        self._device = device
        self._dtype = dtype
        self._lock = anyio.Lock()
        self._identity: dict[str, Any] | None = None

    @classmethod
    def from_name(cls, name: str, **options: Any) -> LocalClosedModel:
        if not name:
            raise ConfigError("local model name is empty")
        return cls(name, **options)

    @property
    def name(self) -> str:
        spec = self._spec if isinstance(self._spec, str) else self._spec.name
        return f"local:{spec}"

    def __repr__(self) -> str:
        return f"LocalClosedModel({self.name!r})"

    def describe_request(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The request as a cache keys it: the model's name, the messages and every output-changing
        parameter, plus what makes one load's answers differ from another's: the weights the name
        resolves to and the device type and dtype they run in (a bfloat16 GPU answer is not served
        to a float32 CPU caller). Nothing is loaded and CUDA is not started to find them
        (:func:`~attribsdk.scoring.models.load_identity`)."""
        described = generic_request(self.name, messages, params)
        described["provider"] = "local"
        described["load"] = self._load_identity()
        return described

    def _load_identity(self) -> dict[str, Any]:
        if self._identity is None:
            if isinstance(self._spec, str):
                from ..scoring.models import load_identity

                self._identity = dict(load_identity(self._spec, device=self._device, dtype=self._dtype))
            else:  # the caller's handle: as loaded (a GGUF's stem is no identity: add its path)
                handle = self._spec
                path = getattr(getattr(handle, "load_info", None), "path", None)
                self._identity = {
                    "weights": handle.name if path is None else f"{handle.name}|{path}",
                    "device": str(getattr(handle, "device", None)),
                    "dtype": str(getattr(handle, "dtype", None)),
                }
        return self._identity

    async def _get_handle(self) -> TextGenerator:
        async with self._lock:
            if self._handle is None:
                assert isinstance(self._spec, str)
                if self._store is None:
                    from ..scoring.models import ModelStore

                    self._store = ModelStore()
                    self._owns_store = True
                store, spec = self._store, self._spec
                self._handle = await anyio.to_thread.run_sync(
                    lambda: store.get(spec, device=self._device, dtype=self._dtype)
                )
            return self._handle

    async def load(self) -> None:
        """Load the model now rather than on the first call (e.g. before timing the calls)."""
        await self._get_handle()

    async def generate(self, messages: list[Message], params: GenerationParams) -> Completion:
        handle = await self._get_handle()
        completion = await anyio.to_thread.run_sync(handle.generate, list(messages), params)
        return completion.model_copy(update={"model": self.name})

    async def aclose(self) -> None:
        """Close the private model store, if this adapter made one. A handle given to the
        constructor stays (it belongs to the caller), so the adapter can still be used."""
        if self._owns_store and self._store is not None:
            store = self._store
            await anyio.to_thread.run_sync(store.close)
            self._store = None
            self._owns_store = False
        if isinstance(self._spec, str):
            self._handle = None  # loaded from a store: loaded again on the next call
