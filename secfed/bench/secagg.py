"""``secfed bench secagg``: per-phase cost of our secure aggregation, optionally beside Flower's SecAgg+.

Each repeat provisions nothing new (one in-memory consortium), builds fresh sessions, drops a
``dropout`` fraction of clients *after* they shared keys (the costly case for the server, which must
then rebuild their pairwise masks), and times every client and server step in process, so transport
is excluded (``secfed bench round`` measures that). Figures are medians over repeats; client figures
are medians over clients first.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray
from tqdm import tqdm

from secfed.bench.stats import add_output_arguments, emit, median, median_of_dicts
from secfed.crypto.identity import TrustAnchor
from secfed.crypto.prg import CHUNK_BYTES, SEED_BYTES, MaskAccumulator, Stream
from secfed.pki.issue import create_ca, issue_client
from secfed.secagg.client import ClientSession
from secfed.secagg.config import SessionConfig, default_colluding, required_threshold
from secfed.secagg.errors import UPLOAD_PHASES, Phase
from secfed.secagg.local import LocalRouter
from secfed.secagg.server import ServerSession
from secfed.secagg.spec import Segment, VectorSpec


class _SeededInput(Mapping[str, NDArray[np.float64]]):
    """A client's input vector, generated from its seed when the client reads it (to encode and mask
    it) and not kept: a benchmark of 20 clients at d = 10^8 would otherwise hold 16 GB of inputs."""

    def __init__(self, dim: int, seed: int) -> None:
        self._dim, self._seed = dim, seed

    def __getitem__(self, name: str) -> NDArray[np.float64]:
        if name != "x":
            raise KeyError(name)
        return np.random.default_rng(self._seed).uniform(-1, 1, self._dim)

    def __iter__(self) -> Iterator[str]:
        return iter(("x",))

    def __len__(self) -> int:
        return 1


def _one_round(
    n: int, dim: int, dropout: float, identities: dict[str, Any], trust: TrustAnchor, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    roster = tuple(sorted(identities))[:n]
    colluding = default_colluding(n)
    threshold = required_threshold(n, colluding)
    n_drop = min(math.floor(n * dropout), n - max(threshold, 3))
    spec = VectorSpec((Segment("x", dim, clip=1.0, frac_bits=16),))
    config = SessionConfig(
        round=seed,
        roster=roster,
        threshold=threshold,
        n_colluding=colluding,
        min_cohort=3,
        spec=spec,
        model_hash=os.urandom(32),
        consortium=trust.consortium_id,
    )
    clients = {
        c: ClientSession(
            identity=identities[c],
            trust=trust,
            config=config,
            model_hash=config.model_hash,
            inputs=_SeededInput(dim, seed * 100_003 + i),
        )
        for i, c in enumerate(roster)
    }
    dropped = rng.choice(np.array(roster), size=n_drop, replace=False).tolist()
    run = LocalRouter(ServerSession(config, trust=trust), clients).run(
        drop=dict.fromkeys(dropped, Phase.MASKED_INPUT)
    )
    if run.result is None:
        raise RuntimeError(f"benchmark session failed: {run.error}")
    out: dict[str, float] = {}
    for phase in UPLOAD_PHASES:
        key = phase.value.replace("-", "_")
        out[f"client_{key}_s"] = median(run.client_seconds[phase])
        out[f"server_{key}_s"] = run.server_seconds[phase]
    out["client_mask_s"] = out["client_masked_input_s"]  # the issue's name for the masking step
    survivors = [c for c in roster if c not in dropped]
    out["upload_bytes"] = median([run.upload_bytes[c] for c in survivors])
    out["dropped"] = float(len(dropped))
    out["threshold"] = float(threshold)
    return out


def mask_floor(streams: int, dim: int) -> dict[str, float]:
    """One client's masking against its floor, side by side: ``floor_keystream_s`` is the raw AES-CTR
    keystream for the same bytes as its ``streams`` masks of ``dim`` 32-bit words (generated in
    chunks, added to nothing), ``client_mask_add_s`` generating and adding those masks into its vector
    as the client does (:meth:`~secfed.crypto.prg.MaskAccumulator.add_all`; no key agreement, no
    encoding). Their ratio says how close masking runs to the cipher's own speed on this machine."""
    seeds = [os.urandom(SEED_BYTES) for _ in range(streams)]
    scratch = np.empty(min(CHUNK_BYTES, 4 * dim), dtype=np.uint8)
    zeros = memoryview(bytes(scratch.nbytes))
    started = time.perf_counter()
    for s in seeds:
        encryptor = Cipher(algorithms.AES(s[:16]), modes.CTR(s[16:])).encryptor()
        left = 4 * dim
        while left:
            n = min(left, scratch.nbytes)
            encryptor.update_into(zeros[:n], scratch.data[:n])
            left -= n
    floor = time.perf_counter() - started
    vector = np.zeros(dim, dtype=np.uint32)
    masks = [Stream(s, b"bench", b"stream", 1 if i % 2 else -1) for i, s in enumerate(seeds)]
    started = time.perf_counter()
    MaskAccumulator(vector).add_all(masks)
    return {"floor_keystream_s": floor, "client_mask_add_s": time.perf_counter() - started}


def encode_seconds(dim: int, seed: int) -> float:
    """Encoding one client's vector into the ring (clip, scale, stochastic rounding), apart from masking."""
    from secfed.secagg.fixedpoint import encode

    spec = VectorSpec((Segment("x", dim, clip=1.0, frac_bits=16),))
    values = dict(_SeededInput(dim, seed))  # generated before the clock starts
    started = time.perf_counter()
    encode(values, spec)
    return time.perf_counter() - started


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _client_memory(dim: int, streams: int, out: Any) -> None:
    """In a fresh process: one client's peak RSS increase while it encodes and masks its vector, over
    what it holds before (its input). The peak is reset first (``clear_refs`` 5), so it is the step's."""
    from secfed.secagg.fixedpoint import encode

    spec = VectorSpec((Segment("x", dim, clip=1.0, frac_bits=16),))
    values = dict(_SeededInput(dim, 1))
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    ring, _ = encode(values, spec)
    seeds = [os.urandom(SEED_BYTES) for _ in range(streams)]
    MaskAccumulator(ring).add_all(
        [Stream(s, b"bench", b"stream", 1 if i % 2 else -1) for i, s in enumerate(seeds)]
    )
    out.put(_status_bytes("VmHWM") - before)


def client_peak_rss_delta(dim: int, streams: int) -> int | None:
    """:func:`_client_memory` in its own process (None where /proc cannot reset the peak: not Linux)."""
    import multiprocessing

    if not os.path.exists("/proc/self/clear_refs"):
        return None
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client_memory, args=(dim, streams, queue))
    proc.start()
    delta = int(queue.get(timeout=3600))
    proc.join()
    return delta


def run_benchmark(
    clients: int, dim: int, dropout: float, repeats: int, compare_flower: bool, progress: bool = True
) -> dict[str, Any]:
    if clients < 3:
        raise ValueError("--clients must be at least 3")
    if dim < 1:
        raise ValueError("--dim must be at least 1")
    if not 0 <= dropout < 1:
        raise ValueError("--dropout must be in [0, 1)")
    ca = create_ca("bench CA")
    identities = {f"c{i:04d}": issue_client(ca, f"c{i:04d}") for i in range(clients)}
    trust = TrustAnchor(ca.certificate)
    runs = []
    flower_runs: list[float] = []
    for rep in tqdm(range(repeats), desc="secagg bench", unit="round", disable=not progress, file=sys.stderr):
        runs.append(_one_round(clients, dim, dropout, identities, trust, seed=rep + 1))
        # A client adds one mask per peer and its own self mask.
        runs[-1].update(mask_floor(clients, dim))
        runs[-1]["client_encode_s"] = encode_seconds(dim, seed=rep + 1)
        # The server regenerates every survivor's self mask and each dropped client's pairwise masks
        # with the survivors: its floor is that many streams at the keystream rate just measured.
        dropped, survivors = runs[-1]["dropped"], clients - runs[-1]["dropped"]
        per_stream = runs[-1]["floor_keystream_s"] / clients
        runs[-1]["server_floor_keystream_s"] = per_stream * (survivors + dropped * survivors)
        if compare_flower:
            from secfed.bench.flower_compare import flower_client_mask_seconds

            vec = np.random.default_rng(rep).uniform(-1, 1, dim)
            flower_runs.append(flower_client_mask_seconds(vec, clients - 1))
    ours: dict[str, Any] = dict(median_of_dicts(runs))
    # Measured once, in a process of its own (the benchmark's own arrays would hide it here).
    ours["client_peak_rss_delta_bytes"] = client_peak_rss_delta(dim, clients)
    result: dict[str, Any] = {
        "benchmark": "secagg",
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "repeats": repeats,
        "ring_bits": 32,
        "ours": ours,
        "plaintext_bytes": 4 * dim,
        "vector_bytes": 4 * dim,
        "upload_overhead": ours["upload_bytes"] / (4 * dim),
        "floor_keystream_s": ours["floor_keystream_s"],
        "mask_add_over_floor": median([r["client_mask_add_s"] / r["floor_keystream_s"] for r in runs]),
        "server_floor_keystream_s": ours["server_floor_keystream_s"],
        "unmask_over_floor": median([r["server_unmask_s"] / r["server_floor_keystream_s"] for r in runs]),
        "client_peak_rss_over_vector_bytes": None
        if ours["client_peak_rss_delta_bytes"] is None
        else ours["client_peak_rss_delta_bytes"] / (4 * dim),
    }
    if compare_flower:
        result["flower"] = {"client_mask_s": median(flower_runs)}
        result["flower_over_ours_client_mask"] = median(flower_runs) / ours["client_mask_s"]
    return result


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("secagg", help="per-phase cost of secure aggregation (in process, no transport)")
    p.add_argument("--clients", type=int, default=50, help="clients per session (default 50)")
    p.add_argument("--dim", type=int, default=1_000_000, help="vector length (default 10^6)")
    p.add_argument(
        "--dropout", type=float, default=0.3, help="fraction dropped after sharing keys (default 0.3)"
    )
    p.add_argument("--repeats", type=int, default=3, help="sessions to run; medians are reported (default 3)")
    p.add_argument("--compare", choices=["flower"], help="also time Flower's SecAgg+ client masking")
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    result = run_benchmark(
        args.clients, args.dim, args.dropout, args.repeats, args.compare == "flower", progress=not args.json
    )
    if emit(result, args.out, args.json):
        return 0
    ours = result["ours"]
    print(
        f"secure aggregation: {args.clients} clients, d={args.dim}, {int(ours['dropped'])} dropped after ShareKeys, "
        f"t={int(ours['threshold'])}, median of {args.repeats}"
    )
    print(f"{'phase':<14}{'client s':>12}{'server s':>12}")
    for phase in UPLOAD_PHASES:
        key = phase.value.replace("-", "_")
        print(f"{phase.value:<14}{ours[f'client_{key}_s']:>12.4f}{ours[f'server_{key}_s']:>12.4f}")
    print(
        f"upload per client: {ours['upload_bytes']:.0f} B ({result['upload_overhead']:.4f}x the plaintext 32-bit vector)"
    )
    print(
        f"masking one client's vector: {ours['client_mask_add_s']:.4f} s, "
        f"{result['mask_add_over_floor']:.2f}x the raw AES-CTR keystream of the same bytes "
        f"({result['floor_keystream_s']:.4f} s)"
    )
    print(
        f"server unmasking: {ours['server_unmask_s']:.4f} s, {result['unmask_over_floor']:.2f}x the keystream "
        f"of the masks it must regenerate ({result['server_floor_keystream_s']:.4f} s at the measured rate)"
    )
    print(f"encoding one client's vector (apart from masking): {ours['client_encode_s']:.4f} s")
    if ours["client_peak_rss_delta_bytes"] is not None:
        print(
            f"one client's peak memory increase to encode and mask (own process): "
            f"{ours['client_peak_rss_delta_bytes'] / 2**20:.1f} MiB, "
            f"{result['client_peak_rss_over_vector_bytes']:.2f}x the 32-bit vector"
        )
    if "flower" in result:
        print(
            f"Flower SecAgg+ client masking: {result['flower']['client_mask_s']:.4f} s "
            f"({result['flower_over_ours_client_mask']:.1f}x ours)"
        )
    return 0
