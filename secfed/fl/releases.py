"""An institution's durable record of what it released, so no input is summed twice.

Differencing is the attack: a server that sums the same private input once over a cohort and once
over the cohort without one member learns that member's input exactly (two attempts of a round, or a
dropout followed by a retry; cached features are the same input in every round, so a round or stage
label does not identify an input). An input counts as *released* once it has been sent as a masked
input, because its unmasking then needs only the other institutions' shares.

So each input carries a *release identity*: a hash of what it is computed from (the global model,
the records or features, the public settings that shape the computation), never of a label the
server chooses. Before a masked input leaves, the institution appends its identity here (write-ahead:
a crash after the append counts as released, which errs on the safe side), and it refuses to release
an identity that another session already had...

...unless that earlier session provably can never be unmasked. Unmasking a survivor's input needs
``t`` shares of its self-mask seed, held by the session's U2. Every institution records here, before
the fact, each session it joined and each it unmasked; in a later attempt of the same round its
signed advert lists the sessions it joined and abandoned without unmasking (their secrets are
erased). If at least ``|U2| - t + c + 1`` members of the earlier session's U2 attest so, fewer than
``t`` of its shares can ever be revealed, even with ``c`` colluding liars among the attesters, so the
earlier sum can never exist and the input may be released again (the earlier release is void). This
is what lets a round survive a crashed coordinator or a late dropout without a differencing window.

...or unless the earlier session's unmasking failed on a dealer *proven* to have dealt a wrong sharing
(:mod:`secfed.secagg.faultproof`). Then the earlier sum may exist for a server colluding with that
dealer, over the survivor set U3 this institution signed; the retry may sum the same input again only
over U3 minus the proven dealers (the difference is their inputs, which such a server knows anyway).
So the input is re-released only if the new session's ready set is exactly that cohort, and the
institution unmasks that session only if its survivor set is exactly that cohort too (the input's
*bound*, carried to every later session of the input: a later void or proof can only keep or shrink it
by proven dealers). This is what lets a round survive a malicious dealer without a differencing window.

A DP-SGD update has an identity too. Its own guarantee would cover re-sending it, but not its peers:
a server that completes a round and runs it again without one member would get the others' kept
updates again and difference that member out. So a kept DP update is re-sent only under this same
rule (a retry after an attempt proven never unmasked), which also saves its budget.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

from secfed.crypto.kdf import encode_fields
from secfed.durable import append_line
from secfed.fl.policy import RefusalCategory, Refused


def release_identity(kind: str, *parts: bytes | str | int) -> bytes:
    """A domain-separated hash naming one input by what it is computed from."""
    return hashlib.sha256(encode_fields(b"secfed/release/v1", kind, *parts)).digest()


@dataclass(frozen=True)
class Release:
    """Where an input went: its session, that session's U2 and threshold, the assumed colluders, and the
    input's bound (the only survivor set it may be unmasked with; None: unconstrained)."""

    session: str
    round: int
    u2: frozenset[str]
    threshold: int
    colluders: int
    bound: frozenset[str] | None = None

    def void_quorum(self) -> int:
        """Attestations of U2 members needed to prove this session can never be unmasked."""
        return len(self.u2) - self.threshold + self.colluders + 1


class ReleaseLog:
    """Released identities, joined and unmasked sessions, in a JSON-lines file (or in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._released: dict[bytes, Release] = {}
        self._joined: dict[str, int] = {}  # session id (hex) -> round
        self._unmasked: dict[str, frozenset[str]] = {}  # session id (hex) -> the U3 this client signed
        if path is not None and path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self._load(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{path}:{number}: not a release record ({exc})") from exc

    def _load(self, entry: object) -> None:
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
        kind = entry.get("kind", "released")
        if kind == "joined":
            self._joined[str(entry["session"])] = int(str(entry["round"]))
        elif kind == "unmasked":
            self._unmasked[str(entry["session"])] = _members(entry.get("u3")) or frozenset()
        else:
            self._released[bytes.fromhex(str(entry["identity"]))] = Release(
                session=str(entry["session"]),
                round=int(str(entry["round"])),
                u2=_members(entry.get("u2")) or frozenset(),
                threshold=int(str(entry.get("threshold", 0))),
                colluders=int(str(entry.get("colluders", 0))),
                bound=_members(entry.get("bound")),
            )

    def _append(self, entry: dict[str, object]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_line(self.path, json.dumps({**entry, "at": time.time()}, sort_keys=True))

    # -- sessions ------------------------------------------------------------------------------
    def joined(self, session_id: bytes, round_: int) -> None:
        """This institution dealt its shares in ``session_id`` (recorded before they leave)."""
        sid = session_id.hex()
        with self._lock:
            if sid not in self._joined:
                self._append({"kind": "joined", "session": sid, "round": round_})
                self._joined[sid] = round_

    def unmasked(self, session_id: bytes, u3: Set[str]) -> None:
        """This institution answers the unmask request of ``session_id`` for survivors ``u3`` (recorded
        before it does)."""
        sid = session_id.hex()
        with self._lock:
            if sid not in self._unmasked:
                self._append({"kind": "unmasked", "session": sid, "u3": sorted(u3)})
                self._unmasked[sid] = frozenset(u3)

    def abandoned(self, round_: int) -> tuple[bytes, ...]:
        """Sessions of ``round_`` this institution joined and never unmasked (their secrets are gone):
        what its next advert in the round attests."""
        return tuple(
            bytes.fromhex(sid)
            for sid, r in sorted(self._joined.items())
            if r == round_ and sid not in self._unmasked
        )

    # -- releases ------------------------------------------------------------------------------
    def session_of(self, identity: bytes) -> str | None:
        """The session an identity was last released to, or None if it never was."""
        found = self._released.get(identity)
        return found.session if found is not None else None

    def last_release(self, identity: bytes) -> Release | None:
        """Where an identity was last released (its session, threshold and bound), or None."""
        return self._released.get(identity)

    def bound(self, identity: bytes, session_id: bytes) -> frozenset[str] | None:
        """The only survivor set ``session_id`` may unmask ``identity`` with (None: unconstrained)."""
        found = self._released.get(identity)
        return found.bound if found is not None and found.session == session_id.hex() else None

    def release(
        self,
        identity: bytes,
        session_id: bytes,
        *,
        round_: int,
        u2: Set[str],
        threshold: int,
        colluders: int,
        attested: Mapping[bytes, Set[str]] | None = None,
        ready: Set[str] = frozenset(),
        proven: Set[str] = frozenset(),
    ) -> None:
        """Record ``identity`` as released to ``session_id``, whose ready set is ``ready``.

        Refused if another session had it, unless ``attested`` (session id -> members whose signed
        advert says they abandoned it without unmasking) proves that session can never be unmasked, or
        ``proven`` names dealers proven (by checked fault proofs) to have broken that session's
        unmasking, and ``ready`` is exactly the survivors this institution signed there minus them.
        An input's bound, once set, holds for every later session (see the module docstring)."""
        sid = session_id.hex()
        with self._lock:
            earlier = self._released.get(identity)
            bound = earlier.bound if earlier is not None else None
            if earlier is not None and earlier.session != sid:
                bound = self._retry_bound(earlier, attested or {}, frozenset(ready), frozenset(proven))
            if earlier is None or earlier.session != sid:
                record = Release(sid, round_, frozenset(u2), threshold, colluders, bound)
                self._append(
                    {
                        "kind": "released",
                        "identity": identity.hex(),
                        "session": sid,
                        "round": round_,
                        "u2": sorted(u2),
                        "threshold": threshold,
                        "colluders": colluders,
                        "voids": earlier.session if earlier is not None else None,
                        "bound": sorted(bound) if bound is not None else None,
                    }
                )
                self._released[identity] = record

    def _retry_bound(
        self,
        earlier: Release,
        attested: Mapping[bytes, Set[str]],
        ready: frozenset[str],
        proven: frozenset[str],
    ) -> frozenset[str] | None:
        """The bound of an input released again after ``earlier``, or :class:`Refused`."""
        attesters = set(attested.get(bytes.fromhex(earlier.session), set())) & earlier.u2
        if len(attesters) >= earlier.void_quorum():  # the earlier sum can never exist
            if earlier.bound is not None and ready != earlier.bound:
                raise Refused(
                    RefusalCategory.RELEASED,
                    f"this input may only be summed over its bound of {len(earlier.bound)} members (an "
                    f"earlier sum of it may exist), and this session is ready with {len(ready)} others",
                )
            return earlier.bound
        signed = self._unmasked.get(earlier.session)
        if proven and signed is not None and ready == signed - proven:
            return ready
        raise Refused(
            RefusalCategory.RELEASED,
            f"this input was already released to session {earlier.session[:16]}, and only "
            f"{len(attesters)} of its members attest it was abandoned without unmasking "
            f"(at least {earlier.void_quorum()} needed), nor is this the retry of that session over its "
            "survivors minus dealers proven wrong; summing it again over another cohort would let the "
            "server difference it out",
        )

    def __len__(self) -> int:
        return len(self._released)


def _members(value: object) -> frozenset[str] | None:
    """A JSON list of client ids as a set (None when absent)."""
    return frozenset(str(c) for c in value) if isinstance(value, list) else None
