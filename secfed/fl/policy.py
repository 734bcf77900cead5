"""An institution's own policy over what a server may ask of it, and how it says no.

Every value in a round instruction is chosen by the server, and a lying server chooses them to make
one institution's contribution stand out (a huge learning rate, a rank that memorises, a coreset space
in which every record is its own centroid, a colluder bound of zero). Each institution therefore
checks every server-chosen value against bounds of its *own* (``[policy]`` in its client TOML) before
it does any work, and refuses the round otherwise. The defaults are safe and generous enough for the
shipped examples; ``client/client.example.toml`` documents each one.

A refusal reaches the server as a category only (:class:`RefusalCategory`): the reason with its
numbers stays in the institution's log, because a number derived from private data (an epsilon, a
record count) would itself be a release.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from fractions import Fraction
from typing import Any

from secfed.secagg.config import ClientPolicy


class RefusalCategory(StrEnum):
    """What kind of no: the only part of a refusal the server is told."""

    POLICY = "policy"  # the institution's rules forbid it (insecure mode, DP required, unknown task)
    BOUNDS = "bounds"  # a server-chosen value lies outside the institution's bounds
    BUDGET = "budget"  # the privacy budget does not allow it
    INCONSISTENCY = "inconsistency"  # the instruction contradicts itself, its hash or what was seen before
    RELEASED = "released"  # the input was already released to another session (no differencing)
    DATA = "data"  # the local data cannot serve the instruction


@dataclass(frozen=True)
class Refusal:
    """A client declines a round or stage, so the server counts it out now instead of at a deadline.

    ``reason`` is a :class:`RefusalCategory` value; the full reason stays in the institution's log.
    """

    round: int
    reason: str


class Refused(ValueError):  # noqa: N818 - a decision, reported to the server by category
    """The institution declines a round or stage; ``field`` names the instruction field to blame."""

    def __init__(self, category: RefusalCategory, message: str, *, field: str | None = None) -> None:
        self.category = category
        self.field = field
        super().__init__(f"{category.value}: " + (f"{field}: {message}" if field else message))


def within(value: float, low: float, high: float, field: str) -> None:
    """Refuse ``value`` outside ``[low, high]``, naming the field and the institution's bound."""
    if not low <= value <= high:
        raise Refused(
            RefusalCategory.BOUNDS,
            f"{value} is outside this institution's bounds [{low}, {high}]",
            field=field,
        )


@dataclass(frozen=True)
class InstitutionPolicy:
    """An institution's bounds on server-chosen values (``[policy]`` of its client configuration).

    Trust floor: ``colluding_fraction`` of any roster is assumed to collude with the server and every
    released sum must hold at least ``c + 2`` institutions (c the larger of this and the server's
    bound); ``min_cohort`` is the fewest contributors this institution accepts, whatever the server says.
    """

    min_cohort: int = 3
    colluding_fraction: Fraction = Fraction(1, 3)
    allow_insecure_baselines: bool = False
    # Whether this institution sends its training loss (first and last step of a round) when the
    # federation asks for a learning curve: a release computed from its records, summed with the
    # cohort's (the server sees only the cohort mean) and ledgered. Never under DP-SGD.
    share_loss: bool = False
    # The fraction of this institution's records it holds out of training, to evaluate each global
    # adapter it receives when the federation asks for an eval curve (``report_eval``, which also needs
    # share_loss). Its own choice, never the server's: which records, and how many, are decided here
    # (by a hash of each record's content), and they are never trained on while this is above zero,
    # whether or not a round asks for an evaluation. At most half: the rest must still train.
    eval_holdout: float = 0.0
    # FedAvg weight cap and per-coordinate clip of an update.
    max_weight: int = 64
    max_clip: float = 10.0
    # LoRA and local training.
    max_lora_rank: int = 64
    min_lr: float = 1e-7
    max_lr: float = 1e-2
    max_local_steps: int = 2000
    max_epochs: float = 20.0
    max_batch_size: int = 128
    max_length: int = 4096
    # Coreset selection (FedHDS).
    max_k0: int = 256
    max_dims: int = 8
    max_bins: int = 32
    max_local_min_cluster_size: int = 16
    max_global_min_cluster_size: int = 64
    max_selected_fraction: float = 0.5
    max_slot_buckets: int = 16
    max_slots_per_bucket: int = 64
    max_election_attempts: int = 16
    max_feature_length: int = 1024
    # The highest round number this institution accepts: a server claiming that many rounds passed
    # would otherwise widen the per-round bound on how far a global adapter may move.
    max_rounds: int = 10_000
    # Round 0's adapter must be the public-seed initialisation, or this one (hex SHA-256 of its vector).
    initial_adapter_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.min_cohort < 3:
            raise ValueError(f"policy: min_cohort must be >= 3, got {self.min_cohort}")
        if not 0 <= self.colluding_fraction < 1:
            raise ValueError(f"policy: colluding_fraction must be in [0, 1), got {self.colluding_fraction}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_") and not value > 0:
                raise ValueError(f"policy: {f.name} must be > 0, got {value}")
        if not 0 < self.min_lr <= self.max_lr:
            raise ValueError("policy: need 0 < min_lr <= max_lr")
        holdout = self.eval_holdout
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout <= 0.5:
            raise ValueError(f"policy: eval_holdout must be a fraction in [0, 0.5], got {holdout!r}")
        if self.max_selected_fraction > 1:
            raise ValueError("policy: max_selected_fraction must be <= 1")
        digest = self.initial_adapter_sha256
        if digest is not None and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
            raise ValueError("policy: initial_adapter_sha256 must be 64 lowercase hex digits")

    def secagg(self) -> ClientPolicy:
        """The floor this institution puts under every SecAgg session (threshold, cohort, colluders)."""
        return ClientPolicy(min_cohort=self.min_cohort, colluding_fraction=self.colluding_fraction)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> InstitutionPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"policy: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(raw)
        flags = [f.name for f in fields(cls) if isinstance(f.default, bool)]
        wrong = [name for name in flags if name in values and not isinstance(values[name], bool)]
        if wrong:  # "false" as a string is truthy: it would switch on what it names
            raise ValueError(f"policy: {', '.join(wrong)} must be true or false (a TOML boolean, unquoted)")
        if "colluding_fraction" in values:
            values["colluding_fraction"] = Fraction(values["colluding_fraction"]).limit_denominator(1000)
        return cls(**values)
