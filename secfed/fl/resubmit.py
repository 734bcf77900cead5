"""The last DP-SGD update an institution released, kept so that a retry re-submits it.

A DP update is covered by its own (ledgered) guarantee: sending the same update again in a retried
session reveals nothing new, while training a second one would spend the budget twice. The update is
kept in memory and in a file beside the institution's privacy ledger, written (atomically) before the
update leaves, so a client restarted between an attempt and its retry re-submits it too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from secfed.pki.files import write_secret

__all__ = ["RoundKey", "UpdateStore"]

#: What makes two attempts at a round the same computation: round, global model hash, instruction.
RoundKey = tuple[int, bytes, bytes]
_KEY_FIELDS = ("__round", "__model", "__instruction")


class UpdateStore:
    """One kept update (the last one); ``path`` None keeps it in memory only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._kept: tuple[RoundKey, dict[str, NDArray[np.float64]]] | None = None

    def get(self, key: RoundKey) -> dict[str, NDArray[np.float64]] | None:
        """The update kept for ``key`` (a copy), or None."""
        if self._kept is None:
            self._kept = self._load()
        if self._kept is None or self._kept[0] != key:
            return None
        return {name: value.copy() for name, value in self._kept[1].items()}

    def put(self, key: RoundKey, inputs: dict[str, NDArray[np.float64]]) -> None:
        """Keep ``inputs`` as the update released for ``key`` (durably, before it leaves)."""
        self._kept = (key, {name: np.array(value, dtype=np.float64) for name, value in inputs.items()})
        if self.path is None:
            return
        buffer = io.BytesIO()
        round_, model, instruction = key
        arrays: dict[str, Any] = {
            "__round": np.array([round_], dtype=np.int64),
            "__model": np.frombuffer(model, dtype=np.uint8),
            "__instruction": np.frombuffer(instruction, dtype=np.uint8),
            **self._kept[1],
        }
        np.savez(buffer, **arrays)
        write_secret(self.path, buffer.getvalue())  # atomic, 0600 from creation on

    def _load(self) -> tuple[RoundKey, dict[str, NDArray[np.float64]]] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                key = (int(data["__round"][0]), data["__model"].tobytes(), data["__instruction"].tobytes())
                inputs = {
                    name: np.array(data[name], dtype=np.float64)
                    for name in data.files
                    if name not in _KEY_FIELDS
                }
        except (OSError, ValueError, KeyError):
            return None  # unreadable: the retry trains (and is charged) again, never worse than that
        return key, inputs
