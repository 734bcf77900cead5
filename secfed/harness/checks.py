"""What makes a simulation *correct*, checked from the files a run leaves behind.

* **Rounds**: every planned round appears in ``rounds.jsonl`` exactly once, in order, and the state
  database holds the same rounds (same contributors, same model hash): a restarted server must
  neither lose nor repeat one.
* **Integrity**: the state database passes its own audit (hash-chained ledger, tables, model blobs;
  see ``server.state``), run in a child process by :mod:`secfed.harness.statecheck`.
* **Plaintext**: for tasks whose client contributions can be recomputed (the toy task), each round's
  securely aggregated sum equals the plain sum of the contributors' updates, within fixed-point
  rounding. This is the end-to-end proof that masking, dropout recovery and unmasking cancel exactly.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from secfed.fl import toy
from secfed.harness.procs import child_env

__all__ = [
    "PLAINTEXT_CHECKS",
    "check_rounds",
    "plaintext_check",
    "read_rounds_log",
    "state_check",
    "toy_plaintext_check",
]

RoundRecords = Sequence[Mapping[str, Any]]
PlaintextCheck = Callable[[RoundRecords, Mapping[str, Any]], dict[str, Any]]


def read_rounds_log(path: Path) -> list[dict[str, Any]]:
    """The server's ``rounds.jsonl``; a torn last line (the server killed mid-write) is skipped."""
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def check_rounds(
    records: RoundRecords, planned: int, db_rounds: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """Problems with the round sequence: missing, repeated or out-of-order rounds, or log/DB disagreement."""
    problems: list[str] = []
    numbers = [rec.get("round") for rec in records]
    if numbers != list(range(planned)):
        problems.append(f"rounds.jsonl holds rounds {numbers}, expected each of 0..{planned - 1} once")
    if db_rounds is None:
        return problems
    db_numbers = [r.get("round") for r in db_rounds]
    if db_numbers != list(range(planned)):
        problems.append(f"the state database holds rounds {db_numbers}, expected 0..{planned - 1}")
    by_round = {r.get("round"): r for r in db_rounds}
    for rec in records:
        db = by_round.get(rec.get("round"))
        if db is None:
            continue
        for key in ("contributors", "dropped", "model_hash"):
            if rec.get(key) != db.get(key):
                problems.append(
                    f"round {rec.get('round')}: {key} differs between rounds.jsonl and the database"
                )
    return problems


def state_check(db: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run :mod:`secfed.harness.statecheck` on ``db`` in a child process and return its report."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "secfed.harness.statecheck", str(db)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"db": str(db), "ok": False, "opened": False, "problems": [f"audit took over {timeout_s} s"]}
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {
            "db": str(db),
            "ok": False,
            "opened": False,
            "problems": [f"audit failed (exit {proc.returncode}): {' | '.join(tail)}"],
        }
    return report


def toy_plaintext_check(records: RoundRecords, options: Mapping[str, Any]) -> dict[str, Any]:
    """Recompute the toy task's history in plaintext and compare it with every round's secure sum.

    Starting from the initial model, each contributor's update for the model of that round is
    recomputed (the toy data is a deterministic function of the client id); the secure ``x`` sum
    must match within ``n * 2**-frac_bits`` (one fixed-point rounding per contribution) and the
    integer weight sum exactly. The next model is the one the log reports, after checking it is
    the server's update rule applied to the secure sum and matches the logged hash, so the check
    follows the real trajectory and catches a model that does not follow from its sum.
    """
    opts = toy.ToyOptions.from_mapping(options)
    model = toy.initial_model(opts.dim)
    per_round: list[dict[str, Any]] = []
    problems: list[str] = []
    for rec in records:
        r = rec.get("round")
        contributors = [str(c) for c in rec.get("contributors", [])]
        contribs = [toy.contribution(c, model, opts) for c in contributors]
        sums = rec.get("sums") or {}
        tolerance = len(contribs) * 2.0**-opts.frac_bits
        entry: dict[str, Any] = {"round": r, "contributors": len(contribs), "tolerance": tolerance}
        try:
            got_x = np.asarray(sums["x"], dtype=np.float64)
            got_w = [float(v) for v in sums["w"]]
        except (KeyError, TypeError, ValueError):
            problems.append(f"round {r}: rounds.jsonl lacks the sums x and w")
            entry["ok"] = False
            per_round.append(entry)
            break
        if not contribs:
            problems.append(f"round {r}: no contributors")
            entry["ok"] = False
            per_round.append(entry)
            break
        want_x = np.sum([c["x"] for c in contribs], axis=0)
        want_w = sum(float(c["w"][0]) for c in contribs)
        error = float(np.max(np.abs(got_x - want_x))) if got_x.shape == want_x.shape else float("inf")
        entry["max_abs_error"] = error
        entry["weight"] = got_w
        ok = error <= tolerance and got_w == [want_w]
        if error > tolerance:
            problems.append(f"round {r}: secure x sum is off by {error:.3g} (tolerance {tolerance:.3g})")
        if got_w != [want_w]:
            problems.append(f"round {r}: secure weight sum {got_w} != plaintext {[want_w]}")
        applied = (model + got_x / got_w[0]).astype(np.float32) if got_w and got_w[0] > 0 else model
        logged = rec.get("model")
        next_model = applied if logged is None else np.asarray(logged, dtype=np.float32)
        digest = hashlib.sha256(next_model.astype("<f4").tobytes()).hexdigest()
        if not np.array_equal(next_model, applied):
            ok = False
            problems.append(f"round {r}: the logged model is not the update rule applied to the secure sum")
        if digest != rec.get("model_hash"):
            ok = False
            problems.append(f"round {r}: the model does not match the logged model_hash")
        entry["ok"] = ok
        per_round.append(entry)
        model = next_model
    return {"status": "failed" if problems else "ok", "problems": problems, "rounds": per_round}


# Tasks whose contributions the harness can recompute in plaintext. A task not listed here (e.g. LoRA
# training, where contributions depend on private data and GPU numerics) is reported "not-applicable".
PLAINTEXT_CHECKS: dict[str, PlaintextCheck] = {toy.NAME: toy_plaintext_check}


def plaintext_check(task: str, records: RoundRecords, options: Mapping[str, Any]) -> dict[str, Any]:
    check = PLAINTEXT_CHECKS.get(task)
    if check is None:
        return {"status": "not-applicable", "problems": [], "rounds": []}
    if not records:
        return {"status": "failed", "problems": ["no completed rounds to check"], "rounds": []}
    return check(records, options)
