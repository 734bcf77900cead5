"""LoRA adapters as the federation's model: injection, flattening to a vector, saving and loading.

Only the adapter travels: the base stays frozen and identical everywhere (checked by its hash), so
secure aggregation works on a flat float32 vector of a few hundred thousand values instead of the
whole network. The vector's layout is the adapter state dict in sorted key order, which depends only
on the model architecture and the LoRA settings, so every institution flattens identically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from secfed.model.loading import base_hash_of, register_base_hash
from secfed.model.settings import LoraSettings as LoraSettings

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from secfed.model.loading import LoadedModel

#: Written next to peft's files by :func:`save_adapter`; ties the adapter to its base weights.
ADAPTER_META = "secfed_adapter.json"
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_META_FORMAT = 1

# peft 0.21 probes a deprecated transformers 5 attribute every time it wraps a model. Filtered once,
# narrowly, at import: a catch_warnings() around each call would race with the client threads.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)


class AdapterError(ValueError):
    """An adapter does not fit the model it is being loaded into, or its files are inconsistent."""


def _has_lora_layers(model: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter; only the adapter's parameters are trainable.

    peft injects the LoRA layers into ``model`` in place, so a model can carry one secfed adapter at
    most: applying twice would silently nest adapters and change the vector layout, hence the refusal.
    The train/eval mode of ``model`` is kept (new dropout layers would otherwise start in train mode
    and make "eval" logits random).

    A quantized base (QLoRA) is first prepared the way peft recommends (its remaining float weights such
    as norms in float32, input gradients enabled), without gradient checkpointing: recomputing the
    forward pass would run Opacus' per-sample hooks twice under DP-SGD, and the 4-bit weights are where
    the memory goes.
    """
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

    from secfed.model.quantization import is_quantized

    candidate: object = model
    if isinstance(candidate, PeftModel) or _has_lora_layers(model):
        raise ValueError("apply_lora: the model already carries LoRA layers; load a fresh base model")
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    was_training = model.training
    if is_quantized(model):
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False
        )
    peft_model = get_peft_model(model, config)
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"apply_lora: peft returned {type(peft_model).__name__}, expected a PeftModel")
    peft_model.train(was_training)
    trainable = [name for name, param in peft_model.named_parameters() if param.requires_grad]
    frozen_lora = [
        name for name, param in peft_model.named_parameters() if "lora_" in name and not param.requires_grad
    ]
    if not trainable or any("lora_" not in name for name in trainable) or frozen_lora:
        raise AssertionError(
            "apply_lora: expected exactly the LoRA parameters to be trainable; "
            f"trainable non-LoRA: {[n for n in trainable if 'lora_' not in n][:5]}, frozen LoRA: {frozen_lora[:5]}"
        )
    return peft_model


def adapter_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors keyed as in peft's saved files, in sorted key order (the vector layout)."""
    from peft import get_peft_model_state_dict

    state: dict[str, torch.Tensor] = get_peft_model_state_dict(peft_model)
    return {key: state[key] for key in sorted(state)}


def adapter_size(peft_model: PeftModel) -> int:
    """Number of values in the adapter vector."""
    return sum(tensor.numel() for tensor in adapter_state(peft_model).values())


def _flatten(state: dict[str, torch.Tensor]) -> NDArray[np.float32]:
    if not state:
        return np.zeros(0, dtype=np.float32)
    parts = [tensor.detach().to(device="cpu", dtype=torch.float32).reshape(-1) for tensor in state.values()]
    flat: NDArray[np.float32] = torch.cat(parts).numpy().astype(np.float32, copy=True)
    return flat


def adapter_to_vector(peft_model: PeftModel) -> NDArray[np.float32]:
    """The adapter as one float32 vector (a copy), concatenated in :func:`adapter_state` order."""
    return _flatten(adapter_state(peft_model))


def vector_to_adapter(peft_model: PeftModel, vector: NDArray[Any]) -> None:
    """Overwrite the adapter's values in place from ``vector`` (the inverse of :func:`adapter_to_vector`).

    Values are copied into the existing parameters rather than replacing them, so an optimizer that
    holds them keeps working. The vector comes from the network (the aggregate), hence the checks.
    """
    from peft import set_peft_model_state_dict

    values = np.asarray(vector)
    if values.ndim != 1:
        raise ValueError(f"adapter vector must be 1-D, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"adapter vector must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float32, copy=False)
    state = adapter_state(peft_model)
    expected = sum(tensor.numel() for tensor in state.values())
    if values.shape[0] != expected:
        raise ValueError(f"adapter vector has {values.shape[0]} values but this adapter has {expected}")
    if not np.all(np.isfinite(values)):
        raise ValueError("adapter vector contains NaN or infinite values")
    new_state: dict[str, torch.Tensor] = {}
    offset = 0
    for key, tensor in state.items():
        count = tensor.numel()
        chunk = torch.from_numpy(values[offset : offset + count].copy()).reshape(tensor.shape)
        new_state[key] = chunk.to(dtype=tensor.dtype)
        offset += count
    with torch.no_grad():
        result = set_peft_model_state_dict(peft_model, new_state)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise AdapterError(
            f"vector_to_adapter: peft did not place {len(unexpected)} tensors, e.g. {unexpected[:3]}"
        )
    if all(tensor.dtype == torch.float32 for tensor in state.values()) and not np.array_equal(
        adapter_to_vector(peft_model), values
    ):
        raise AdapterError("vector_to_adapter: the adapter does not hold the vector after loading it")


def seeded_initial_vector(peft_model: PeftModel, seed: int) -> NDArray[np.float32]:
    """The federation's round-0 adapter, a pure function of the adapter's shape and the public seed.

    peft draws LoRA A from torch's global generator on the model's device, so the same seed gives
    different adapters on CPU and CUDA; an institution could then not check that round 0's global
    adapter is the honest initialisation rather than one crafted to make its update reveal its data.
    Here every ``lora_A`` is drawn from a CPU generator seeded by ``seed``, uniform in
    ``±1/sqrt(fan_in)`` (peft's kaiming-uniform bound), and every ``lora_B`` is zero, so the adapted
    model starts equal to the base model.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % 2**63)
    parts: list[torch.Tensor] = []
    for key, tensor in adapter_state(peft_model).items():
        if "lora_A" in key:
            bound = 1.0 / math.sqrt(tensor.shape[1])
            parts.append(
                (torch.rand(tensor.numel(), generator=generator, dtype=torch.float64) * 2 - 1) * bound
            )
        elif "lora_B" in key:
            parts.append(torch.zeros(tensor.numel(), dtype=torch.float64))
        else:
            raise AdapterError(f"seeded_initial_vector: unexpected adapter tensor {key!r}")
    if not parts:
        return np.zeros(0, dtype=np.float32)
    out: NDArray[np.float32] = torch.cat(parts).to(torch.float32).numpy().copy()
    return out


def settings_of(peft_model: PeftModel) -> LoraSettings:
    """The LoRA settings of ``peft_model``'s active adapter, as recorded in its peft config."""
    from peft import LoraConfig

    config = peft_model.peft_config[peft_model.active_adapter]
    if not isinstance(config, LoraConfig):
        raise AdapterError(f"the active adapter is {type(config).__name__}, not LoRA")
    targets = config.target_modules
    modules = (targets,) if isinstance(targets, str) else tuple(sorted(targets or ()))
    return LoraSettings(
        r=int(config.r),
        alpha=int(config.lora_alpha),
        dropout=float(config.lora_dropout),
        target_modules=modules,
    )


def _vector_digest(vector: NDArray[np.float32]) -> str:
    return hashlib.sha256(vector.astype("<f4", copy=False).tobytes()).hexdigest()


def portable_base_reference(source: str) -> str:
    """How an adapter names its base model so that the name means something on another machine.

    A registry name (``smollm2-135m-instruct``) stays as it is; a local directory is named by its last
    component only: the absolute path of the machine that saved the adapter is meaningless (and
    revealing) anywhere else. The base model's hash in ``secfed_adapter.json`` is what identifies it.
    """
    path = Path(source)
    return path.name if ("/" in source or source.startswith(".")) else source


def save_adapter(
    peft_model: PeftModel,
    path: Path,
    *,
    base_hash: str | None = None,
    base_model: str | None = None,
    quantization: str | None = None,
) -> None:
    """Write ``peft_model``'s adapter as a peft directory plus ``secfed_adapter.json``.

    The directory loads with plain ``PeftModel.from_pretrained(base, path)``; the JSON adds what peft
    does not record: which base weights the adapter belongs to (``base_hash``, taken from the model
    loaded by secfed unless given) and a digest of the adapter vector, so a mismatched or altered
    adapter is refused by :func:`load_adapter` instead of producing plausible nonsense. With
    ``base_model`` (the source the base was loaded from), ``adapter_config.json`` names the base by
    :func:`portable_base_reference` instead of this machine's path. ``quantization`` records the scheme
    of a QLoRA federation's base (then ``base_hash`` is the identity of weights and scheme), so a refusal
    can say how to load the base it belongs to.
    """
    resolved = base_hash if base_hash is not None else base_hash_of(peft_model.get_base_model())
    if resolved is None:
        raise ValueError(
            "save_adapter: the base model's hash is unknown (the model was not loaded through secfed); "
            "pass base_hash= explicitly"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta_path = path / ADAPTER_META
    # A crash during the save must not leave an old marker vouching for new (partial) weights.
    meta_path.unlink(missing_ok=True)
    peft_model.save_pretrained(str(path))
    if base_model is not None:
        config_path = path / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = portable_base_reference(base_model)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    vector = adapter_to_vector(peft_model)
    meta = {
        "format": _META_FORMAT,
        "base_hash": resolved,
        "base_model": portable_base_reference(base_model) if base_model is not None else None,
        "quantization": quantization,
        "settings": asdict(settings_of(peft_model)),
        "size": int(vector.shape[0]),
        "vector_sha256": _vector_digest(vector),
    }
    tmp = path / f".{ADAPTER_META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)


def read_adapter_meta(path: Path) -> dict[str, Any]:
    """The contents of ``secfed_adapter.json`` in an adapter directory written by :func:`save_adapter`."""
    meta_path = Path(path) / ADAPTER_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            f"{path} has no {ADAPTER_META}: not an adapter saved by secfed (its base model cannot be checked)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"unreadable {meta_path}: {exc}") from exc
    if (
        not isinstance(meta, dict)
        or meta.get("format") != _META_FORMAT
        or not isinstance(meta.get("base_hash"), str)
    ):
        raise AdapterError(f"{meta_path} is malformed or from an unsupported secfed version")
    return meta


def load_adapter(base: LoadedModel, path: Path, *, trainable: bool = False) -> PeftModel:
    """Load an adapter saved by :func:`save_adapter` onto ``base``, after checking it belongs to it.

    The base-hash check and the file digest run before peft touches ``base.model`` (which it modifies
    in place), so a refused adapter leaves the base usable. ``trainable=False`` gives an inference
    model in eval mode, as peft does.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    meta = read_adapter_meta(path)
    if meta["base_hash"] != base.base_hash:
        scheme = meta.get("quantization")
        how = f" with quantization {scheme!r} (QLoRA, on a GPU)" if isinstance(scheme, str) else ""
        raise AdapterError(
            f"adapter {path} was trained on base model {meta['base_hash'][:16]}..., but the loaded base "
            f"{base.source!r} is {base.base_hash[:16]}...; load the base model the federation used{how}"
        )
    weights = Path(path) / _ADAPTER_WEIGHTS
    try:
        stored = load_file(str(weights))
    except (OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"cannot read the adapter weights {weights}: {exc}") from exc
    vector = _flatten({key: stored[key] for key in sorted(stored)})
    if int(vector.shape[0]) != meta.get("size") or _vector_digest(vector) != meta.get("vector_sha256"):
        raise AdapterError(f"{weights} does not match the digest in {ADAPTER_META}: altered or corrupted")
    if _has_lora_layers(base.model):
        raise AdapterError(
            "load_adapter: the base model already carries LoRA layers; load a fresh base model"
        )
    peft_model = PeftModel.from_pretrained(base.model, str(path), is_trainable=trainable)
    register_base_hash(base.model, base.base_hash)
    return peft_model
