"""The one serialised form of a global model vector, and its hash.

The server stores it, serves it, and signs nothing else; every client hashes the model it downloaded
the same way and binds that hash into its secure-aggregation advert. Keeping the definition in one
place keeps the three in agreement.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt


def as_model(vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The vector as contiguous little-endian float32, refusing anything that would need rounding.

    Silently casting a float64 model would store (and hash) a different model from the caller's.
    """
    arr = np.asarray(vector)
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise ValueError(f"a model vector must be float32, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"a model vector must be 1-D and non-empty, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype="<f4")


def model_bytes(vector: npt.ArrayLike) -> bytes:
    """The stored and transported form of a model: raw little-endian float32, host-independent."""
    return as_model(vector).tobytes()


def model_hash(vector: npt.ArrayLike) -> bytes:
    """SHA-256 of :func:`model_bytes`."""
    return hashlib.sha256(model_bytes(vector)).digest()
