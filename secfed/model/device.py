"""Where the model runs and in which precision.

Institutions differ: some have a GPU, many do not. The choice is made once, from one setting string,
and validated up front so that a config asking for CUDA on a CPU-only host fails at start-up with a
message that says so, rather than deep inside a training round.
"""

from __future__ import annotations

import re

import torch

_CUDA_PATTERN = re.compile(r"cuda(?::(\d+))?")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def select_device(preference: str = "auto") -> torch.device:
    """The device for ``preference``: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking explicitly for CUDA where there is none is an error, not a silent CPU fallback: a run that
    was configured for a GPU and quietly trains 50x slower is worse than one that refuses to start.
    """
    choice = preference.strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    match = _CUDA_PATTERN.fullmatch(choice)
    if match is None:
        raise ValueError(f"unknown device {preference!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {preference!r} was requested but CUDA is not available on this machine "
            "(no GPU, or torch was installed without CUDA support); use device 'cpu' or 'auto'"
        )
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {preference!r} was requested but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def select_dtype(device: torch.device, preference: str = "auto") -> torch.dtype:
    """The weight dtype: ``auto`` is float32 on CPU and bfloat16 (float16 if unsupported) on CUDA.

    CPU half-precision matmuls are slow and lossy, so CPU defaults to float32; on a GPU half precision
    halves memory and bfloat16 keeps float32's range, which matters for training stability.
    Explicit ``float32``/``bfloat16``/``float16`` (or ``fp32``/``bf16``/``fp16``) are honoured as given.
    """
    choice = preference.strip().lower()
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[choice]
    except KeyError:
        raise ValueError(
            f"unknown dtype {preference!r}: use 'auto', 'float32', 'bfloat16' or 'float16'"
        ) from None
