"""A secure-aggregation demonstration: what ``secfed simulate`` runs until the gRPC federation lands.

Five institutions with certificates from a throwaway consortium CA mask a vector each; one drops out
after sharing its keys; the server recovers exactly the sum of the four survivors and nothing else.
Everything runs in this process (the protocol state machines are transport-agnostic).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from secfed import logs
from secfed.crypto.identity import TrustAnchor
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import Phase
from secfed.secagg.local import LocalRouter
from secfed.secagg.server import ServerSession
from secfed.secagg.spec import Segment, VectorSpec

log = logging.getLogger("secfed.demo")


def run_secagg_demo(n_clients: int = 5, dim: int = 10_000, seed: int = 0) -> bool:
    """Run one session with one dropout; return whether the decoded sum matched the plaintext sum."""
    ca = create_ca("demo consortium CA")
    roster = tuple(f"institution-{i}" for i in range(n_clients))
    trust = TrustAnchor(ca.certificate)
    spec = VectorSpec((Segment("update", dim, clip=1.0, frac_bits=20),))
    config = SessionConfig(
        round=1,
        roster=roster,
        threshold=n_clients - 1,
        n_colluding=1,
        min_cohort=3,
        spec=spec,
        model_hash=hashlib.sha256(b"demo model").digest(),
    )
    rng = np.random.default_rng(seed)
    inputs = {c: np.round(rng.uniform(-1, 1, dim) * 2**20) / 2**20 for c in roster}
    clients = {
        c: ClientSession(
            identity=issue_client(ca, c),
            trust=trust,
            config=config,
            model_hash=config.model_hash,
            inputs={"update": inputs[c]},
        )
        for c in roster
    }
    dropped = roster[-1]
    run = LocalRouter(ServerSession(config, trust=trust), clients).run(drop={dropped: Phase.MASKED_INPUT})
    if run.result is None:
        logs.event(log, "demo-failed", logging.ERROR, error=str(run.error))
        return False
    expected = sum(inputs[c] for c in run.result.contributors)
    exact = bool(np.array_equal(run.result.values["update"], expected))
    logs.event(
        log,
        "secagg-demo",
        clients=n_clients,
        dim=dim,
        dropped=dropped,
        contributors=len(run.result.contributors),
        exact_sum=exact,
        upload_bytes=max(run.upload_bytes.values()),
        plaintext_bytes=4 * dim,
    )
    print(f"secure aggregation demo: {n_clients} institutions, {dropped} dropped after sharing keys")
    print(f"  server learned only the sum of {len(run.result.contributors)} masked vectors of {dim} values")
    print(f"  decoded sum equals the plaintext sum: {exact}")
    return exact
