"""The round instruction: one typed, canonically encoded, hashed message per task and stage.

A server that hands different institutions different task settings gets a session whose sum is one
institution's value (every other member's setting makes its contribution zero). So every setting a
client acts on travels in one typed instruction whose hash is part of the SecAgg session
configuration, which every advert signs and every peer cross-checks: a split view aborts the session
before anything private is computed.

The types are pydantic v2 models (chosen over msgspec because its validators run the existing
dataclasses' ``__post_init__`` checks, so a bound is written once). Both halves of a task use the
same type: the server builds the instruction through it, the client parses what it received with it
and refuses unknown, missing, mistyped or defaulted fields, so no ``.get`` default on the client can
drift from the server's.

Canonical form: JSON with sorted keys, no whitespace, no NaN; the hash covers a version tag, the task
name and those bytes (:func:`instruction_hash`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from secfed.crypto.kdf import encode_fields

INSTRUCTION_VERSION = 1
_CONTEXT = b"secfed/round-instruction/v1"


class InstructionError(ValueError):
    """The server's round instruction is malformed, not canonical, or not the one the cohort signed.

    ``field`` names the offending field (dotted path) when one is to blame."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message if field is None else f"{field}: {message}")


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of a JSON value that every party hashes (sorted keys, no whitespace)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InstructionError(f"not encodable as canonical JSON: {exc}") from exc


def instruction_hash(task: str, instruction: Mapping[str, Any]) -> bytes:
    """SHA-256 over the version tag, the task's name and the instruction's canonical JSON."""
    return hashlib.sha256(
        encode_fields(_CONTEXT, INSTRUCTION_VERSION, task, canonical_json(instruction))
    ).digest()


class FrozenModel(BaseModel):
    """A part of an instruction: frozen, no unknown fields; declare fields without defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        """The JSON object sent to clients (and hashed)."""
        out: dict[str, Any] = self.model_dump(mode="json")
        return out


class RoundInstruction(FrozenModel):
    """Base of every task's instruction: frozen, no unknown fields, every field required.

    ``stage`` names the SecAgg stage of the round the instruction is for (``"update"`` for one-stage
    tasks). Subclasses declare every setting their client half acts on, without defaults: an
    instruction that omits a field is refused, never completed by a client-side default.
    """

    stage: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Self:
        """Validate ``raw`` strictly and require it to be exactly this type's canonical form."""
        encoded = canonical_json(dict(raw))
        try:
            parsed = cls.model_validate_json(encoded, strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            raise InstructionError(f"{first['msg']} ({len(exc.errors())} problem(s))", field=where) from exc
        if canonical_json(parsed.wire()) != encoded:
            missing = sorted(set(parsed.wire()) - set(raw))
            raise InstructionError(
                "not in canonical form (a field is missing, defaulted or re-encoded)"
                + (f": missing {missing}" if missing else "")
            )
        return parsed


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field of ``model`` as a dotted path (nested models and dataclasses expanded).

    The adversarial tests enumerate these, so a field added later is covered without editing them.
    """
    import dataclasses

    out: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(field_paths(ann, path + "."))
        elif isinstance(ann, type) and dataclasses.is_dataclass(ann):
            out.extend(f"{path}.{f.name}" for f in dataclasses.fields(ann))
        else:
            out.append(path)
    return out
