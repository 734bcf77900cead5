"""Builders shared by the secure-aggregation tests: a consortium, sessions, exactly representable inputs."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from secfed.crypto import shamir
from secfed.crypto.identity import Identity, TrustAnchor
from secfed.pki.issue import CertificateAuthority, create_ca, issue_client
from secfed.secagg import client as client_module
from secfed.secagg import derive
from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig, default_colluding, required_threshold
from secfed.secagg.messages import MaskedInputUpload, ShareKeysRelay
from secfed.secagg.server import ServerSession
from secfed.secagg.spec import Segment, VectorSpec

MODEL_HASH = hashlib.sha256(b"global model, round 0").digest()


@dataclass
class Consortium:
    ca: CertificateAuthority
    trust: TrustAnchor
    identities: dict[str, Identity]

    def ids(self, n: int) -> tuple[str, ...]:
        return tuple(sorted(self.identities))[:n]


def make_consortium(n: int = 30) -> Consortium:
    ca = create_ca("test consortium CA")
    identities = {f"c{i:02d}": issue_client(ca, f"c{i:02d}") for i in range(n)}
    return Consortium(ca=ca, trust=TrustAnchor(ca.certificate), identities=identities)


def small_spec(delta_len: int = 16, ring_bits: int = 32) -> VectorSpec:
    return VectorSpec(
        (Segment("delta", delta_len, clip=1.0, frac_bits=16), Segment("weight", 1, clip=8.0, frac_bits=8)),
        ring_bits=ring_bits,  # type: ignore[arg-type]
    )


def make_config(
    roster: tuple[str, ...],
    spec: VectorSpec,
    *,
    round_: int = 1,
    threshold: int | None = None,
    model_hash: bytes = MODEL_HASH,
    label: str = "fedavg",
    consortium: bytes = bytes(32),
) -> SessionConfig:
    n = len(roster)
    colluding = default_colluding(n)
    return SessionConfig(
        round=round_,
        roster=roster,
        threshold=threshold if threshold is not None else required_threshold(n, colluding),
        n_colluding=colluding,
        min_cohort=3,
        spec=spec,
        model_hash=model_hash,
        label=label,
        consortium=consortium,
    )


def representable_inputs(spec: VectorSpec, rng: np.random.Generator) -> dict[str, NDArray[np.float64]]:
    """Inputs that are exact multiples of 2^-f inside the clip bound, so encoding is deterministic."""
    out = {}
    for seg in spec.segments:
        bound = int(seg.clip * 2**seg.frac_bits)
        out[seg.name] = rng.integers(-bound, bound + 1, seg.length).astype(np.float64) / 2**seg.frac_bits
    return out


@dataclass
class Session:
    config: SessionConfig
    server: ServerSession
    clients: dict[str, ClientSession]
    inputs: dict[str, dict[str, NDArray[np.float64]]]

    def expected_sum(self, contributors: tuple[str, ...]) -> dict[str, NDArray[np.float64]]:
        names = [s.name for s in self.config.spec.segments]
        return {n: np.sum([self.inputs[c][n] for c in contributors], axis=0) for n in names}


def make_session(
    consortium: Consortium,
    n: int,
    spec: VectorSpec | None = None,
    *,
    seed: int = 0,
    threshold: int | None = None,
    round_: int = 1,
) -> Session:
    spec = spec or small_spec()
    roster = consortium.ids(n)
    config = make_config(
        roster, spec, threshold=threshold, round_=round_, consortium=consortium.trust.consortium_id
    )
    rng = np.random.default_rng(seed)
    inputs = {c: representable_inputs(spec, rng) for c in roster}
    clients = {
        c: ClientSession(
            identity=consortium.identities[c],
            trust=consortium.trust,
            config=config,
            model_hash=config.model_hash,
            inputs=inputs[c],
        )
        for c in roster
    }
    return Session(config, ServerSession(config, trust=consortium.trust), clients, inputs)


def masked_inputs(s: Session, relays: dict[str, ShareKeysRelay]) -> dict[str, MaskedInputUpload]:
    """Honest compute phase: every relay opened, every client ready, then each client's masked input."""
    for cid, relay in relays.items():
        s.clients[cid].on_share_relay(relay)
        s.server.receive_ready(s.clients[cid].ready())
    go = s.server.close_compute()
    return {cid: s.clients[cid].on_masked_input_request(go) for cid in go.ready}


@contextlib.contextmanager
def corrupt_dealing(
    monkeypatch: pytest.MonkeyPatch,
    config: SessionConfig | None,
    dealer: str,
    *,
    kind: str,
    victims: int | None,
    signed: bool,
) -> Iterator[None]:
    """A test double of a malicious member: ``dealer`` deals ``kind`` ("s", "b" or "both") shares off by one to ``victims`` holders (None:
    all). ``signed``: it signs commitments to the bad shares (an inconsistent dealing, caught at
    reconstruction); otherwise it commits to the good shares and encrypts bad ones (caught by the
    holders, who complain)."""
    real_split, real_plaintext = shamir.split, derive.share_plaintext
    bad_positions: set[int] = set()
    own_position: dict[str, int] = {}

    def off_by_one(raw: bytes) -> bytes:
        share = shamir.Share.from_bytes(raw)
        return shamir.Share(share.x, (share.value + 1) % shamir.PRIME).to_bytes()

    calls = {"n": 0}

    # The replacements stay installed for the whole context and act only inside the dealer's own call
    # (a thread-local flag), so clients running in other threads (a loopback federation) deal honestly.
    active = threading.local()

    def split(secret: bytes, t: int, positions: Any) -> dict[int, shamir.Share]:
        shares = real_split(secret, t, positions)
        if not getattr(active, "on", False):
            return shares
        which = "s" if calls["n"] == 0 else "b"
        calls["n"] += 1
        targets = [p for p in sorted(shares) if p != own_position["p"]]
        chosen = set(targets if victims is None else targets[-victims:])
        bad_positions.update(chosen)
        if not signed or kind not in (which, "both"):
            return shares
        return {
            p: shamir.Share.from_bytes(off_by_one(s.to_bytes())) if p in chosen else s
            for p, s in shares.items()
        }

    def plaintext(sender: str, recipient: str, s_share: bytes, b_share: bytes) -> bytes:
        if getattr(active, "on", False) and not signed and sender == dealer:
            x = shamir.Share.from_bytes(s_share).x
            if x - 1 in bad_positions:
                s_share = off_by_one(s_share) if kind in ("s", "both") else s_share
                b_share = off_by_one(b_share) if kind in ("b", "both") else b_share
        return real_plaintext(sender, recipient, s_share, b_share)

    original = client_module.ClientSession.on_advert_broadcast

    def advert_broadcast(self: client_module.ClientSession, msg: Any) -> Any:
        if self.client_id != dealer:
            return original(self, msg)
        calls["n"] = 0
        own_position["p"] = (config or self._config).position(dealer)
        active.on = True
        try:
            return original(self, msg)
        finally:
            active.on = False

    with monkeypatch.context() as m:
        m.setattr(shamir, "split", split)
        m.setattr(derive, "share_plaintext", plaintext)
        m.setattr(client_module.ClientSession, "on_advert_broadcast", advert_broadcast)
        yield
