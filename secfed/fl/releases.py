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
    """Where an input went: its session, that session's U2 and threshold, and the assumed colluders."""

    session: str
    round: int
    u2: frozenset[str]
    threshold: int
    colluders: int

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
        self._unmasked: set[str] = set()
        if path is not None and path.exists():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self._load(json.loads(line))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{path}:{number}: not a release record ({exc})") from exc

    def _load(self, entry: Mapping[str, object]) -> None:
        kind = entry.get("kind", "released")
        if kind == "joined":
            self._joined[str(entry["session"])] = int(str(entry["round"]))
        elif kind == "unmasked":
            self._unmasked.add(str(entry["session"]))
        else:
            u2 = entry.get("u2")
            self._released[bytes.fromhex(str(entry["identity"]))] = Release(
                session=str(entry["session"]),
                round=int(str(entry["round"])),
                u2=frozenset(str(c) for c in u2) if isinstance(u2, list) else frozenset(),
                threshold=int(str(entry.get("threshold", 0))),
                colluders=int(str(entry.get("colluders", 0))),
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

    def unmasked(self, session_id: bytes) -> None:
        """This institution answers the unmask request of ``session_id`` (recorded before it does)."""
        sid = session_id.hex()
        with self._lock:
            if sid not in self._unmasked:
                self._append({"kind": "unmasked", "session": sid})
                self._unmasked.add(sid)

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
    ) -> None:
        """Record ``identity`` as released to ``session_id``; refuse it if another session had it,
        unless ``attested`` (session id -> members whose signed advert says they abandoned it without
        unmasking) proves that session can never be unmasked."""
        sid = session_id.hex()
        with self._lock:
            earlier = self._released.get(identity)
            if earlier is not None and earlier.session != sid:
                attesters = set((attested or {}).get(bytes.fromhex(earlier.session), set())) & earlier.u2
                if len(attesters) < earlier.void_quorum():
                    raise Refused(
                        RefusalCategory.RELEASED,
                        f"this input was already released to session {earlier.session[:16]}, and only "
                        f"{len(attesters)} of its members attest it was abandoned without unmasking "
                        f"(at least {earlier.void_quorum()} needed); summing it again over another cohort "
                        "would let the server difference it out",
                    )
            if earlier is None or earlier.session != sid:
                record = Release(sid, round_, frozenset(u2), threshold, colluders)
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
                    }
                )
                self._released[identity] = record

    def __len__(self) -> int:
        return len(self._released)
