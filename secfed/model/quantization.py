"""QLoRA: a 4-bit or 8-bit base model (bitsandbytes) for institutions whose GPUs are small.

The quantization scheme is a federation setting, not an institution's: FedAvg over LoRA adapters only
makes sense when every adapter was trained against the same frozen weights, and a 4-bit base is not the
same function as its 16-bit original. So the scheme travels in the round instruction (hashed into every
session), and the base identity the institutions compare (``base_hash`` of the instruction) becomes
:func:`base_identity` of the weights' hash and the scheme's canonical description. Quantization by
bitsandbytes is a deterministic function of the stored weights and these parameters, so the identity
names the quantized weights without the coordinator (often a CPU host) having to quantize anything;
an institution loading the same files with another scheme gets another identity and is refused.

Only CUDA: on CPU, bitsandbytes falls back to dequantising every weight at every matmul (no memory
saved at training time, several times slower) and first tries to download kernels from the Hugging Face
Hub, which secfed never allows at run time. An institution without a GPU therefore gets a clear refusal
instead of a silently slow (or network-touching) run.

Free of torch at import time: the round instruction and config validation use the scheme names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # torch stays out of the import path of configs and instructions
    import torch

#: The schemes a federation may choose (``quantization`` of the fedit/fedhds task options).
Quantization = Literal["nf4", "int8"]
SCHEMES: tuple[str, ...] = get_args(Quantization)

_IDENTITY_DOMAIN = b"secfed-quantized-base-v1\x00"


@dataclass(frozen=True)
class Scheme:
    """The parameters that decide the quantized weights (all of them go into the base identity)."""

    name: str
    bits: int
    quant_type: str | None
    double_quant: bool
    blocksize: int | None
    outlier_threshold: float | None

    def describe(self) -> dict[str, Any]:
        return {
            "library": "bitsandbytes",
            "name": self.name,
            "bits": self.bits,
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "blocksize": self.blocksize,
            "outlier_threshold": self.outlier_threshold,
        }


# NF4 with double quantization is QLoRA's recipe (Dettmers et al. 2023); blocksize 64 is bitsandbytes'
# fixed 4-bit block. int8 is LLM.int8() with its default outlier threshold of 6.0.
_SCHEMES = {
    "nf4": Scheme("nf4", 4, "nf4", True, 64, None),
    "int8": Scheme("int8", 8, None, False, None, 6.0),
}


class QuantizationError(ValueError):
    """The scheme is unknown, or this institution cannot load a quantized base (no CUDA, no bitsandbytes)."""


def check_scheme(value: object, *, where: str = "quantization") -> Quantization | None:
    """``value`` as a scheme name (``None`` = full-precision base); a clear error for anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in _SCHEMES:
        raise QuantizationError(
            f"{where}: unknown quantization {value!r}; use one of {list(SCHEMES)} or leave it out "
            "for a full-precision base"
        )
    name: Quantization = value  # type: ignore[assignment]  # narrowed by the membership test above
    return name


def scheme(name: Quantization) -> Scheme:
    return _SCHEMES[name]


def base_identity(base_hash: str, quantization: Quantization | None) -> str:
    """The identity institutions compare: the weights' hash itself without quantization (unchanged from
    a full-precision federation), else SHA-256 over a domain tag, that hash and the scheme's canonical
    description."""
    if quantization is None:
        return base_hash
    described = json.dumps(scheme(quantization).describe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(_IDENTITY_DOMAIN + base_hash.encode() + b"\x00" + described.encode()).hexdigest()


def require_cuda(device: torch.device, quantization: Quantization) -> None:
    """Refuse a quantized base on anything but CUDA (why: see the module docstring)."""
    if device.type != "cuda":
        raise QuantizationError(
            f"the federation trains on a {quantization} quantized base model (QLoRA), which secfed runs only "
            f"on a CUDA GPU; this institution's device is {device.type!r}. Run it on a GPU host, or ask the "
            "consortium for a full-precision federation (no quantization option)"
        )


def bitsandbytes_config(quantization: Quantization, compute_dtype: torch.dtype) -> Any:
    """The transformers ``BitsAndBytesConfig`` for the scheme (``compute_dtype``: the matmul precision)."""
    # A presence check without importing it (transformers imports it while loading): its own error
    # would not say which extra installs it.
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(
            f"the federation trains on a {quantization} quantized base model, which needs bitsandbytes: "
            "pip install 'secfed[qlora]'"
        )
    from transformers import BitsAndBytesConfig

    s = scheme(quantization)
    if s.bits == 4:
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=s.quant_type,
            bnb_4bit_use_double_quant=s.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_8bit=True, llm_int8_threshold=s.outlier_threshold
    )


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` was loaded with a bitsandbytes quantization config."""
    return scheme_of(model) is not None


def scheme_of(model: torch.nn.Module) -> Quantization | None:
    """The scheme ``model`` was loaded with (``None``: full precision), read from the flags transformers
    sets on a bitsandbytes model; every 4-bit load of secfed is NF4 and every 8-bit one LLM.int8()."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "nf4"
    if getattr(model, "is_loaded_in_8bit", False):
        return "int8"
    return None
