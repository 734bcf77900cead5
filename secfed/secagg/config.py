"""Session configuration and the safety rules every participant enforces on it.

The server proposes a configuration; each client checks it against its *own* policy before taking part
(the server could otherwise lower the threshold or claim there are no colluders). The configuration's
digest is signed in every key advertisement, so two clients handed different configurations notice.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from secfed.crypto.kdf import encode_fields
from secfed.secagg.errors import ConfigError, Phase
from secfed.secagg.spec import VectorSpec

PROTOCOL_VERSION = 1
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def required_threshold(n: int, n_colluding: int) -> int:
    """Smallest ``t`` with ``t > (n + n_colluding) / 2``.

    With that many shares needed, the colluding clients plus the server can never gather enough
    shares of one secret *and* of the other for the same peer, whatever split they claim.
    """
    return (n + n_colluding) // 2 + 1


def default_colluding(n: int) -> int:
    """The design's default bound on clients colluding with the server: ``floor(n / 3)``."""
    return n // 3


@dataclass(frozen=True)
class SessionConfig:
    """Everything that fixes one secure-aggregation session before any key is made.

    ``label`` tells apart several sessions in one round (the FedAvg upload, a coreset histogram, an
    election), so their session ids, masks and signatures can never be confused.
    """

    round: int
    roster: tuple[str, ...]
    threshold: int
    n_colluding: int
    min_cohort: int
    spec: VectorSpec
    model_hash: bytes
    label: str = "fedavg"
    #: Hash of the round instruction the clients act on (``secfed.fl.instruction``): inside the
    #: digest every advert signs, so a server that hands one member different settings gets an abort.
    instruction_hash: bytes = bytes(32)
    #: The consortium (SHA-256 of its CA certificate, ``TrustAnchor.consortium_id``): inside the digest,
    #: so an advert (and through the session id every later signature) made in one consortium never
    #: verifies in another, even for a member holding certificates of both CAs over one key.
    consortium: bytes = bytes(32)

    def validate(self) -> None:
        """Raise :class:`ConfigError` if the configuration is unsafe or malformed."""

        def fail(msg: str) -> ConfigError:
            return ConfigError(Phase.CONFIGURE, msg)

        if self.round < 0:
            raise fail(f"round must be >= 0, got {self.round}")
        if len(set(self.roster)) != len(self.roster):
            raise fail("roster has duplicate client ids")
        bad = [c for c in self.roster if not _ID.match(c)]
        if bad:
            raise fail(f"invalid client id(s) in roster: {bad}")
        if not _ID.match(self.label):
            raise fail(f"invalid session label {self.label!r}")
        n = len(self.roster)
        if self.min_cohort < 3:
            raise fail(f"min_cohort must be >= 3, got {self.min_cohort}")
        if n < self.min_cohort:
            raise fail(f"roster of {n} is smaller than min_cohort {self.min_cohort}")
        if not 0 <= self.n_colluding < n:
            raise fail(f"n_colluding must be in [0, {n}), got {self.n_colluding}")
        need = required_threshold(n, self.n_colluding)
        if not need <= self.threshold <= n:
            raise fail(
                f"threshold {self.threshold} must satisfy (n + n_colluding)/2 < t <= n, i.e. {need} <= t <= {n}"
            )
        if self.threshold < self.min_cohort:
            raise fail(f"threshold {self.threshold} is below min_cohort {self.min_cohort}")
        if len(self.model_hash) != 32:
            raise fail("model_hash must be 32 bytes (SHA-256)")
        if len(self.instruction_hash) != 32:
            raise fail("instruction_hash must be 32 bytes (SHA-256)")
        if len(self.consortium) != 32:
            raise fail("consortium must be 32 bytes (SHA-256 of the consortium CA certificate)")
        try:
            self.spec.check_overflow(n)
        except ValueError as exc:
            raise fail(str(exc)) from exc

    def position(self, client_id: str) -> int:
        """0-based roster position; orders mask signs and indexes Shamir shares (x = position + 1)."""
        return self.roster.index(client_id)

    def digest(self) -> bytes:
        """SHA-256 over every field, length-prefixed; signed inside each key advertisement."""
        return hashlib.sha256(
            encode_fields(
                b"secfed/secagg/config/v3",
                PROTOCOL_VERSION,
                self.round,
                self.label,
                len(self.roster),
                *self.roster,
                self.threshold,
                self.n_colluding,
                self.min_cohort,
                self.spec.spec_hash(),
                self.model_hash,
                self.instruction_hash,
                self.consortium,
            )
        ).digest()


@dataclass(frozen=True)
class ClientPolicy:
    """A client's own floor on what it accepts, independent of what the server proposes.

    ``colluding_fraction`` is the share of the roster this institution assumes may collude with the
    server; the threshold it demands uses the larger of that and the server's stated bound.
    """

    min_cohort: int = 3
    colluding_fraction: Fraction = Fraction(1, 3)

    def assumed_colluders(self, config: SessionConfig) -> int:
        """c: the larger of the server's stated colluder bound and this institution's own."""
        return max(config.n_colluding, math.floor(len(config.roster) * self.colluding_fraction))

    def release_floor(self, config: SessionConfig) -> int:
        """The fewest contributors a released sum may have: ``max(t, min_cohort, c + 2)``.

        With c + 2, any sum holds at least two honest institutions whatever c the server controls, so
        colluders subtracting their own inputs never isolate one honest institution's value.
        """
        return max(config.threshold, config.min_cohort, self.min_cohort, self.assumed_colluders(config) + 2)

    def check(self, config: SessionConfig) -> None:
        config.validate()
        n = len(config.roster)
        assumed = self.assumed_colluders(config)
        if n < assumed + 2:
            raise ConfigError(
                Phase.CONFIGURE,
                f"a roster of {n} cannot hold {assumed} colluders and two honest institutions",
            )
        need = required_threshold(n, assumed)
        if config.threshold < need:
            raise ConfigError(
                Phase.CONFIGURE,
                f"threshold {config.threshold} is below this client's floor {need} "
                f"(n={n}, assumed colluders={assumed})",
            )
        if config.min_cohort < self.min_cohort:
            raise ConfigError(
                Phase.CONFIGURE,
                f"min_cohort {config.min_cohort} is below this client's floor {self.min_cohort}",
            )
