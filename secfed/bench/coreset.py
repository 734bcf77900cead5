"""``secfed bench coreset``: what secure FedHDS selection costs and how good a coreset it picks.

The issue's questions, on the FedIT Dolly split (``DIR/client_<i>.json``) with the default model:

* **budget**: the fraction of the cohort's records selected per round (target: at most 5 %);
* **cost**: selection time per client against one epoch of that client's full-data LoRA training
  (target: under 30 %), and the bytes each client uploads for selection;
* **quality** against plaintext FedHDS (INSECURE, the server sees every centroid) and random records
  at the same budget. Coverage (:func:`secfed.coreset.metrics.coverage`) is the mean distance in the
  round's shared space from every record to its nearest selected record, over the same for as many
  random records: below 1 beats chance, lower is better (target: secure at most 0.85 and at most 0.1
  above plaintext FedHDS). Next to it: the adjusted Rand index between the secure and plaintext
  global clusterings of the local centroids, the plaintext clustering's own stability (its ARI
  against itself when centroids move by up to half a grid cell: secure cannot be expected to agree
  with plaintext better than that), and the share of centroids in cells suppressed for having fewer
  than ``min_cohort`` institutions (target: single-institution cells are suppressed).

How it is measured, and why:

* Each institution's records are a seeded sample (``--records-per-client``) of its file; record
  indices are positions in that file, carried with the features, so a selection names real records.
* Features are last-token hidden states of ``--layers`` (the "turbo" features of
  :mod:`secfed.fl.fedhds`: frozen base model, computed once per institution). They dominate the
  selection time, and on a 2-core CPU they take minutes for 800 records, so they are cached under
  ``<cache>/coreset-features/<sha256 of model hash, sampled records and feature settings>.npz``
  together with the seconds each client took when they were computed; a cache hit reports those
  seconds (``feature_s_source`` says when they were measured), so a rerun reports the same cost.
* Each round runs :func:`secfed.coreset.pipeline.run_secure` (the federation's client and server
  code, SecAgg replaced by a plain sum) with round seed ``seed * 1_000_003 + r``, the federation's
  formula. The client-side time of the coreset stages (projection, PCA statistics, HDBSCAN, grid
  vectors, votes, the final pick) is then measured per client by *replaying* the round's public
  broadcasts into a fresh :class:`~secfed.coreset.client.CoresetClient` with the same slot seed:
  the replay must reproduce every vector the client sent and its selection (checked), so it times
  exactly the client's work, alone, without the server's or other clients' time mixed in.
* ``selection_s_per_client`` is what an institution spends on selection in the first round
  (features + stages; mean over clients); later rounds reuse the turbo features and cost
  ``selection_stage_s_per_client``. ``selection_over_train`` compares the training client's own
  first-round selection time with its full-data epoch (``full_train_s_per_client``: LoRA defaults,
  ``TrainSettings(epochs=1, batch_size=4, max_length=256, style="chat")``, wall time of the call).
  Features and training are timed minutes apart, so on a machine shared with other jobs their wall
  times see different contention; the same figures in process CPU time (``*_cpu_*``, all torch
  threads counted) are reported next to them as a check. The target is judged on wall time.
* Upload bytes per client are the stage vectors' lengths times 8 bytes (SecAgg's 64-bit ring);
  masking, shares and framing add about 0.35 % on top (``secfed bench secagg``), not counted here.
* Plaintext FedHDS and the metrics use the clients' private local views of the same round (same
  shared space), which only a simulation has: the baseline differs from the secure run only in what
  the server sees. ``coverage_plaintext`` is the paper's FedHDS (no budget, its own selected
  fraction is reported); ``coverage_plaintext_budget`` merges its clusters down to the secure budget.

Reported values are medians over rounds (per-round values under ``per_round``). Timings are
wall-clock on whatever else the machine is running: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from secfed.bench.stats import add_output_arguments, emit, median
from secfed.data.formats import Record, load_records

if TYPE_CHECKING:  # torch and scikit-learn load lazily: every `secfed` command imports this module
    from secfed.coreset.config import CoresetConfig
    from secfed.coreset.dp_config import DpSelection
    from secfed.coreset.pipeline import ClientData, SecureRun
    from secfed.data.prompts import PromptStyle

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_LAYERS = (6, 10, 14, 18, 22, 26, 30)
#: Prompt style of the features: the one training conditions on (see secfed.coreset.features).
FEATURE_STYLE: PromptStyle = "chat"
#: Bytes per vector element on the wire: SecAgg's default 64-bit ring (Layout.vector_spec).
RING_BYTES = 8
#: One epoch of local training over a client's sampled records (the issue's "full-data training").
TRAIN_SETTINGS: dict[str, Any] = {"epochs": 1.0, "batch_size": 4, "max_length": 256, "style": "chat"}
#: Bump when the cache file's layout or the feature computation changes.
CACHE_VERSION = 1

TARGET_FRACTION = 0.05
TARGET_SELECTION_OVER_TRAIN = 0.30
TARGET_COVERAGE = 0.85
TARGET_COVERAGE_GAP = 0.10
#: The [coreset-dp] targets: DP selection's coverage in the fixed reference space, by selection epsilon.
TARGET_COVERAGE_DP = {1.0: 0.88, 2.0: 0.85}

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class CoresetBenchSettings:
    """Everything the benchmark's result depends on (echoed in the JSON)."""

    data: Path
    model: str = DEFAULT_MODEL
    clients: int = 10
    records_per_client: int = 80
    layers: tuple[int, ...] = DEFAULT_LAYERS
    max_length: int = 96
    feature_batch_size: int = 8
    rounds: int = 3
    seed: int = 0
    train_client: int = 0
    skip_train: bool = False
    cache_dir: Path | None = None
    refresh: bool = False
    threads: int | None = None
    coreset: Mapping[str, Any] = field(default_factory=dict)
    # Also run DP selection at each of these selection epsilons (--selection-epsilon), with these
    # secfed.coreset.dp_config.DpSelection overrides (--selection-dp).
    selection_epsilons: tuple[float, ...] = ()
    selection_dp: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.clients < 2:
            raise ValueError("--clients must be at least 2 (cells need two institutions)")
        if self.records_per_client < 1 or self.rounds < 1 or self.feature_batch_size < 1:
            raise ValueError("--records-per-client, --rounds and --feature-batch-size must be >= 1")
        if not self.layers:
            raise ValueError("--layers must name at least one layer")
        if self.max_length < 8:
            raise ValueError("--max-length must be >= 8")
        if not 0 <= self.train_client < self.clients:
            raise ValueError(f"--train-client must be in [0, {self.clients})")
        if "feature_blocks" in self.coreset:
            raise ValueError("feature_blocks is set from --layers (one block per layer, as in FedHDS)")
        if self.selection_dp and not self.selection_epsilons:
            raise ValueError("--selection-dp needs --selection-epsilon")
        if "epsilon" in self.selection_dp:
            raise ValueError("give the selection epsilon with --selection-epsilon, not in --selection-dp")
        self.dp_configs()

    def dp_configs(self) -> list[DpSelection]:
        """The DP selection settings to run, one per selection epsilon (none: no DP selection run)."""
        from secfed.coreset.dp_config import DpSelection

        return [DpSelection.from_json({**self.selection_dp, "epsilon": e}) for e in self.selection_epsilons]

    def coreset_config(self) -> CoresetConfig:
        """The federation's config: one feature block per layer (``SelectionOptions.coreset_config``)."""
        from secfed.coreset.config import CoresetConfig

        return CoresetConfig.from_json({**self.coreset, "feature_blocks": len(self.layers)})


@dataclass(frozen=True)
class ClientSample:
    """One institution's sampled records; ``indices[i]`` is ``records[i]``'s position in its file."""

    indices: IntArray
    records: list[Record]


@dataclass(frozen=True)
class FeatureSet:
    """Per-client features, the seconds each client took to compute them, and where they came from."""

    indices: list[IntArray]
    features: list[FloatArray]
    seconds: list[float]
    cpu_seconds: list[float] | None  # process CPU time (all torch threads); None in old cache entries
    cached: bool
    path: Path | None
    measured: str  # "this run" or the UTC time the cache was written
    threads: int


# --------------------------------------------------------------------------------------------------
# Data and features


def sample_clients(data: Path, clients: int, per_client: int, seed: int) -> list[ClientSample]:
    """A seeded sample of ``per_client`` records from each ``client_<i>.json`` (file order kept)."""
    paths = [data / f"client_{i}.json" for i in range(clients)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{data}: missing {missing} (expected client_<i>.json for {clients} clients)")
    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        records = load_records(path)
        take = min(len(records), per_client)
        chosen = np.sort(rng.permutation(len(records))[:take]).astype(np.int64)
        out.append(ClientSample(chosen, [records[int(i)] for i in chosen]))
    return out


def records_digest(samples: Sequence[ClientSample]) -> str:
    """SHA-256 of the sampled records' text and indices: the "data" part of the feature cache key."""
    digest = hashlib.sha256(b"secfed/bench/coreset/records\x00")
    for c, sample in enumerate(samples):
        for i, r in zip(sample.indices.tolist(), sample.records, strict=True):
            row = [c, int(i), r.instruction, r.context, r.response, r.category]
            digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\x00")
    return digest.hexdigest()


def _cache_meta(settings: CoresetBenchSettings, model_hash: str, data_hash: str) -> dict[str, Any]:
    """Every input the features depend on (the cache key is the hash of this)."""
    return {
        "version": CACHE_VERSION,
        "model_hash": model_hash,
        "records_sha256": data_hash,
        "layers": list(settings.layers),
        "max_length": settings.max_length,
        "batch_size": settings.feature_batch_size,
        "style": FEATURE_STYLE,
    }


def feature_cache_path(cache_dir: Path, meta: Mapping[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(dict(meta), sort_keys=True).encode("utf-8")).hexdigest()
    return cache_dir / f"{key}.npz"


def _read_cache(path: Path, meta: Mapping[str, Any], samples: Sequence[ClientSample]) -> FeatureSet | None:
    """The cached features if ``path`` holds exactly what would be computed now, else ``None``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz["meta"]))
            if {k: stored.get(k) for k in meta} != dict(meta) or stored.get("clients") != len(samples):
                return None
            indices = [np.asarray(npz[f"idx{c}"], dtype=np.int64) for c in range(len(samples))]
            features = [np.asarray(npz[f"f{c}"], dtype=np.float64) for c in range(len(samples))]
    except (OSError, ValueError, KeyError):
        return None
    if any(not np.array_equal(i, s.indices) for i, s in zip(indices, samples, strict=True)):
        return None
    return FeatureSet(
        indices=indices,
        features=features,
        seconds=[float(s) for s in stored["feature_s"]],
        cpu_seconds=None
        if stored.get("feature_cpu_s") is None
        else [float(s) for s in stored["feature_cpu_s"]],
        cached=True,
        path=path,
        measured=str(stored.get("created", "unknown")),
        threads=int(stored.get("torch_threads", 0)),
    )


def _write_cache(path: Path, meta: Mapping[str, Any], features: FeatureSet) -> None:
    """Atomic write; float32 when that is lossless (the model's hidden states are float32)."""
    arrays: dict[str, Any] = {}
    for c, (idx, feats) in enumerate(zip(features.indices, features.features, strict=True)):
        narrow = feats.astype(np.float32)
        arrays[f"idx{c}"] = idx
        arrays[f"f{c}"] = narrow if np.array_equal(narrow.astype(np.float64), feats) else feats
    stored = {
        **meta,
        "clients": len(features.indices),
        "feature_s": features.seconds,
        "feature_cpu_s": features.cpu_seconds,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch_threads": features.threads,
    }
    arrays["meta"] = np.array(json.dumps(stored))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def _check_layers(layers: Sequence[int], model: Any) -> None:
    n = int(model.config.num_hidden_layers)
    bad = [layer for layer in layers if not -(n + 1) <= layer <= n]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has hidden states 0..{n} (or -{n + 1}..-1)")


def compute_features(
    base: Any, samples: Sequence[ClientSample], settings: CoresetBenchSettings, threads: int
) -> FeatureSet:
    """Last-token features of every client's records, timed per client (tokenisation included)."""
    from secfed.coreset.features import last_token_features

    _check_layers(settings.layers, base.model)
    indices, features, seconds, cpu_seconds = [], [], [], []
    for c, sample in enumerate(samples):
        if settings.progress:
            print(f"features of client {c} ({len(sample.records)} records)", file=sys.stderr, flush=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        idx, feats = last_token_features(
            base.model,
            base.tokenizer,
            sample.records,
            layers=settings.layers,
            max_length=settings.max_length,
            batch_size=settings.feature_batch_size,
            progress=settings.progress,
            style=FEATURE_STYLE,
            indices=sample.indices,
        )
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        indices.append(idx)
        features.append(feats)
    return FeatureSet(
        indices, features, seconds, cpu_seconds, cached=False, path=None, measured="this run", threads=threads
    )


def load_or_compute_features(
    base: Any, samples: Sequence[ClientSample], settings: CoresetBenchSettings, threads: int
) -> FeatureSet:
    from secfed.model.loading import default_cache_dir

    cache_dir = (
        settings.cache_dir if settings.cache_dir is not None else default_cache_dir() / "coreset-features"
    )
    meta = _cache_meta(settings, str(base.base_hash), records_digest(samples))
    path = feature_cache_path(cache_dir, meta)
    if not settings.refresh and path.exists():
        hit = _read_cache(path, meta, samples)
        if hit is not None:
            return hit
    fresh = compute_features(base, samples, settings, threads)
    try:
        _write_cache(path, meta, fresh)
    except OSError as exc:
        print(f"warning: could not cache the features in {path}: {exc}", file=sys.stderr)
        return fresh
    return FeatureSet(
        fresh.indices,
        fresh.features,
        fresh.seconds,
        fresh.cpu_seconds,
        False,
        path,
        fresh.measured,
        fresh.threads,
    )


# --------------------------------------------------------------------------------------------------
# One round: secure selection, client time, quality against the baselines


def round_seed_of(seed: int, round_: int) -> int:
    """The federation's public round seed (``FedhdsServer._round_seed``)."""
    return (int(seed) * 1_000_003 + round_) % 2**62


def _slot_seed(round_seed: int, client: int) -> int:
    return round_seed * 1000 + client


def client_stage_seconds(
    run: SecureRun, clients: Sequence[ClientData], round_seed: int
) -> tuple[list[float], list[float]]:
    """Each client's wall and CPU time for its part of ``run``, measured by replaying the broadcasts.

    A fresh client with the same slot seed must send exactly the vectors of the transcript and end
    with the same selection; otherwise the replay would time something else, and this raises.
    """
    from secfed.coreset.client import CoresetClient
    from secfed.coreset.election import SeededSlots
    from secfed.coreset.pipeline import wire

    final = wire(run.final.broadcast)
    seconds, cpu_seconds = [], []
    for c, data in enumerate(clients):
        actor = CoresetClient(data.indices, data.features, rng=SeededSlots(_slot_seed(round_seed, c)))
        spent = cpu_spent = 0.0
        for stage in run.transcript:
            started, cpu_started = time.perf_counter(), time.process_time()
            vector = actor.contribute(stage.broadcast)
            spent += time.perf_counter() - started
            cpu_spent += time.process_time() - cpu_started
            sent = stage.contributions[c]
            if set(vector) != set(sent) or any(not np.array_equal(vector[k], sent[k]) for k in sent):
                raise RuntimeError(f"replay of client {c} diverged from its round in stage {stage.name}")
        started, cpu_started = time.perf_counter(), time.process_time()
        picked = actor.selection(final).records
        spent += time.perf_counter() - started
        cpu_spent += time.process_time() - cpu_started
        if not np.array_equal(picked, run.selected[c]):
            raise RuntimeError(f"replay of client {c} selected different records")
        seconds.append(spent)
        cpu_seconds.append(cpu_spent)
    return seconds, cpu_seconds


def _coverage_or_none(points: FloatArray, rows: IntArray, seed: int) -> float | None:
    from secfed.coreset.metrics import coverage

    return coverage(points, rows, seed=seed) if len(rows) else None


def round_quality(run: SecureRun, config: CoresetConfig, round_seed: int) -> dict[str, Any]:
    """Coverage of secure, plaintext and random selections, ARI, stability and suppression of one round."""
    from secfed.coreset.baselines import global_labels, plaintext_fedhds_INSECURE, random_selection
    from secfed.coreset.metrics import (
        clustering_ari,
        plaintext_stability,
        pooled_rows,
        suppressed_share,
    )
    from secfed.coreset.server import GlobalClusters
    from secfed.coreset.space import SharedSpace, derive_seed

    views = run.views
    indices = [v.indices for v in views]
    points_per_client = [v.points for v in views]
    points = np.concatenate(points_per_client)
    n = len(points)
    budget = int(run.final.summary["budget"])
    kmeans_seed = round_seed % 2**32

    secure_rows = pooled_rows(indices, run.selected)
    plaintext_args: dict[str, Any] = {
        "local_min_cluster_size": config.local_min_cluster_size,
        "global_min_cluster_size": config.global_min_cluster_size,
        "local_noise": config.local_noise,
    }
    plain = plaintext_fedhds_INSECURE(points_per_client, indices, **plaintext_args)
    plain_budget = plaintext_fedhds_INSECURE(
        points_per_client, indices, **plaintext_args, max_selected=budget, seed=kmeans_seed
    )
    plain_rows = pooled_rows(indices, plain.selected)
    plain_budget_rows = pooled_rows(indices, plain_budget.selected)
    # Its own seed: with the coverage's seed it would repeat the first draw of coverage's denominator.
    random_seed = derive_seed(round_seed, "bench-coreset-random")
    random_rows = pooled_rows(indices, random_selection(indices, len(secure_rows), seed=random_seed))

    # The same local centroids in the same order on both sides (same points, deterministic HDBSCAN).
    local_centroids = np.concatenate([v.clusters.centroids for v in views])
    if not np.array_equal(local_centroids, plain.centroids):
        raise RuntimeError("plaintext FedHDS clustered different local centroids than the secure run")
    empty = GlobalClusters.empty(config.dims).to_json()
    clusters = GlobalClusters.from_json(dict(run.final.broadcast.get("clusters", empty)))
    secure_labels = np.concatenate([clusters.cluster_of(v.cells) for v in views])
    grid = SharedSpace.from_json(dict(run.final.broadcast["space"])).grid

    def relabel(centroids: FloatArray) -> IntArray:
        return global_labels(centroids, min_cluster_size=config.global_min_cluster_size)

    stability = plaintext_stability(
        plain.centroids, plain.labels, relabel, half_cell=grid.width / 2.0, seed=round_seed
    )
    allowed = np.asarray(run.final.broadcast.get("allowed", []), dtype=np.int64)
    # Simulation-only check of the suppression rule: how many institutions stand behind each cell.
    per_cell = Counter(cell for v in views for cell in set(v.cells.tolist()))
    allowed_set = set(allowed.tolist())
    behind_allowed = [per_cell.get(cell, 0) for cell in allowed_set]
    single = [cell for cell, k in per_cell.items() if k == 1]

    summary = run.final.summary
    return {
        "records": n,
        "selected": len(secure_rows),
        "selected_fraction": len(secure_rows) / n,
        "budget": budget,
        "n_clusters": int(summary.get("n_clusters", 0)),
        "n_winners": int(summary.get("n_winners", 0)),
        "unclaimed": len(summary.get("unclaimed", [])),
        "election_attempts": int(summary.get("election_attempts", 0)),
        "n_cells": int(summary["n_cells"]),
        "occupied_cells": int(summary.get("n_occupied_cells", 0)),
        "allowed_cells": len(allowed),
        "local_centroids": len(local_centroids),
        "min_institutions_per_allowed_cell": min(behind_allowed) if behind_allowed else None,
        "single_institution_cells": len(single),
        "single_institution_cells_allowed": sum(int(cell in allowed_set) for cell in single),
        "selected_rows": secure_rows.tolist(),
        "coverage_secure": _coverage_or_none(points, secure_rows, round_seed),
        "coverage_plaintext": _coverage_or_none(points, plain_rows, round_seed),
        "plaintext_selected": len(plain_rows),
        "plaintext_selected_fraction": len(plain_rows) / n,
        "coverage_plaintext_budget": _coverage_or_none(points, plain_budget_rows, round_seed),
        "plaintext_budget_selected": len(plain_budget_rows),
        "coverage_random": _coverage_or_none(points, random_rows, round_seed),
        "adjusted_rand": clustering_ari(secure_labels, plain.labels),
        "adjusted_rand_budget": clustering_ari(secure_labels, plain_budget.labels),
        "plaintext_stability": stability,
        "suppressed_share": suppressed_share([v.cells for v in views], allowed),
    }


def run_round(clients: Sequence[ClientData], config: CoresetConfig, round_seed: int) -> dict[str, Any]:
    """One secure round (in memory), its per-client time and upload, and its quality."""
    from secfed.coreset.election import SeededSlots
    from secfed.coreset.pipeline import run_secure

    rngs = [SeededSlots(_slot_seed(round_seed, c)) for c in range(len(clients))]
    started = time.perf_counter()
    run = run_secure(clients, config, round_seed, rngs=rngs)
    run_s = time.perf_counter() - started
    stage_s, stage_cpu_s = client_stage_seconds(run, clients, round_seed)
    # Every client of a stage sends a vector of the stage's public layout: the same length for all.
    elements = {st.name: int(sum(v.size for v in st.contributions[0].values())) for st in run.transcript}
    return {
        "round_seed": round_seed,
        "run_secure_s": run_s,
        "stage_s_per_client": float(np.mean(stage_s)),
        "stage_s_all": stage_s,
        "stage_cpu_s_all": stage_cpu_s,
        "upload_elements_by_stage": elements,
        "upload_bytes_per_client": RING_BYTES * sum(elements.values()),
        **round_quality(run, config, round_seed),
    }


# --------------------------------------------------------------------------------------------------
# Training reference


def full_train_seconds(base: Any, records: Sequence[Record], *, progress: bool) -> dict[str, Any]:
    """One epoch of LoRA training over ``records`` (wall time of the call, tokenisation included).

    Mutates ``base.model`` (LoRA layers are injected), so it runs after the features.
    """
    from secfed.model.lora import LoraSettings, apply_lora
    from secfed.model.train import TrainSettings, train_local

    peft = apply_lora(base.model, LoraSettings())
    settings = TrainSettings(**TRAIN_SETTINGS)
    started, cpu_started = time.perf_counter(), time.process_time()
    stats = train_local(peft, base.tokenizer, records, settings, progress=progress, desc="full-data epoch")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "seconds": wall,
        "cpu_s": cpu,
        "loop_s": stats.seconds,
        "steps": stats.steps,
        "tokens": stats.tokens,
    }


# --------------------------------------------------------------------------------------------------
# The benchmark


def _set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def _median_of(rounds: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rounds if r[key] is not None]
    return median(values) if values else None


def run_benchmark(settings: CoresetBenchSettings) -> dict[str, Any]:
    """Run the benchmark; the returned dict is the JSON result (see the module docstring)."""
    from secfed.coreset.pipeline import ClientData
    from secfed.model.loading import load_base_model

    started = time.perf_counter()
    threads = _set_threads(settings.threads)
    config = settings.coreset_config()
    samples = sample_clients(settings.data, settings.clients, settings.records_per_client, settings.seed)
    base = load_base_model(settings.model)
    feats = load_or_compute_features(base, samples, settings, threads)
    clients = [ClientData(i, f) for i, f in zip(feats.indices, feats.features, strict=True)]

    rounds = []
    for r in range(settings.rounds):
        rounds.append(run_round(clients, config, round_seed_of(settings.seed, r)))
        if settings.progress:
            q = rounds[-1]
            print(
                f"round {r}: selected {q['selected']}/{q['records']}, coverage secure "
                f"{q['coverage_secure']}, plaintext {q['coverage_plaintext']}",
                file=sys.stderr,
                flush=True,
            )

    sweep = []
    for dp in settings.dp_configs():
        from secfed.bench.coreset_dp import dp_round, dp_summary

        dp_rounds = []
        for r, q in enumerate(rounds):
            dp_rounds.append(
                dp_round(
                    feats.features,
                    len(settings.layers),
                    dp,
                    release_seed=round_seed_of(settings.seed, r),
                    max_fraction=config.max_fraction,
                    secure_rows=np.asarray(q["selected_rows"], dtype=np.int64),
                )
            )
            if settings.progress:
                d = dp_rounds[-1]
                print(
                    f"epsilon {dp.epsilon:g}, release {r}: DP selected {d['dp_selected']}/{d['records']}, coverage DP "
                    f"{d['coverage_secure_dp']}, secure {d['coverage_secure_in_dp_reference']} (same space)",
                    file=sys.stderr,
                    flush=True,
                )
        entry = dp_summary(dp, dp_rounds, settings.clients)
        target = TARGET_COVERAGE_DP.get(dp.epsilon)
        entry["target_coverage_secure_dp"] = target
        entry["coverage_secure_dp_within_target"] = (
            None
            if target is None or entry["coverage_secure_dp"] is None
            else entry["coverage_secure_dp"] <= target
        )
        sweep.append(entry)
    # One epsilon: its fields at the top level; several: the sweep (and each entry has the same fields).
    dp_fields: dict[str, Any] = dict(sweep[0]) if len(sweep) == 1 else ({"dp_sweep": sweep} if sweep else {})

    first_round = rounds[0]["stage_s_all"]
    selection_all = [f + s for f, s in zip(feats.seconds, first_round, strict=True)]
    train = None
    if not settings.skip_train:
        train = full_train_seconds(base, samples[settings.train_client].records, progress=settings.progress)
    train_s = None if train is None else float(train["seconds"])
    ratio = None if train_s is None else selection_all[settings.train_client] / train_s
    # CPU time is less at the mercy of other jobs than wall time (see the module docstring).
    selection_cpu = None
    if feats.cpu_seconds is not None:
        first_cpu = rounds[0]["stage_cpu_s_all"]
        selection_cpu = [f + s for f, s in zip(feats.cpu_seconds, first_cpu, strict=True)]
    ratio_cpu = (
        None
        if train is None or selection_cpu is None
        else selection_cpu[settings.train_client] / float(train["cpu_s"])
    )

    fractions = [float(r["selected_fraction"]) for r in rounds]
    cov_secure = _median_of(rounds, "coverage_secure")
    cov_plain = _median_of(rounds, "coverage_plaintext")
    single_allowed = sum(int(r["single_institution_cells_allowed"]) for r in rounds)
    targets = {
        "selected_fraction_at_most_0.05": max(fractions) <= TARGET_FRACTION,
        "selection_under_30pct_of_train": None if ratio is None else ratio < TARGET_SELECTION_OVER_TRAIN,
        "coverage_secure_at_most_0.85": cov_secure is not None and cov_secure <= TARGET_COVERAGE,
        "coverage_secure_within_0.1_of_plaintext": (
            cov_secure is not None and cov_plain is not None and cov_secure <= cov_plain + TARGET_COVERAGE_GAP
        ),
        "single_institution_cells_suppressed": config.min_cohort >= 2 and single_allowed == 0,
    }
    return {
        "benchmark": "coreset",
        "data": str(settings.data),
        "model": settings.model,
        "model_hash": str(base.base_hash),
        "clients": settings.clients,
        "records_per_client": settings.records_per_client,
        "records_total": sum(len(s.records) for s in samples),
        "sample_seed": settings.seed,
        "layers": list(settings.layers),
        "feature_max_length": settings.max_length,
        "feature_batch_size": settings.feature_batch_size,
        "rounds": settings.rounds,
        "round_seeds": [r["round_seed"] for r in rounds],
        "coreset_config": config.to_json(),
        "train_client": settings.train_client,
        "train_settings": None
        if settings.skip_train
        else {**TRAIN_SETTINGS, "lora": "LoraSettings() defaults"},
        "torch_threads": threads,
        # selection: budget, time, bytes
        "selected_fraction": median(fractions),
        "selected_fraction_max": max(fractions),
        "features_cached": feats.cached,
        "feature_cache": None if feats.path is None else str(feats.path),
        "feature_s_source": feats.measured,
        "feature_s_torch_threads": feats.threads,
        "feature_s_per_client": float(np.mean(feats.seconds)),
        "feature_s_all": feats.seconds,
        "selection_s_per_client": float(np.mean(selection_all)),
        "selection_s_all": selection_all,
        "selection_stage_s_per_client": median([float(r["stage_s_per_client"]) for r in rounds]),
        "feature_cpu_s_all": feats.cpu_seconds,
        "selection_cpu_s_per_client": None if selection_cpu is None else float(np.mean(selection_cpu)),
        "full_train_cpu_s": None if train is None else float(train["cpu_s"]),
        "selection_over_train_cpu": ratio_cpu,
        "full_train_s_per_client": train_s,
        "full_train": train,
        "selection_over_train": ratio,
        "upload_bytes_per_client": median([float(r["upload_bytes_per_client"]) for r in rounds]),
        "upload_note": f"stage vector elements x {RING_BYTES} bytes (64-bit ring); SecAgg adds ~0.35 % "
        "(masking, shares, framing: secfed bench secagg)",
        # quality
        "coverage_secure": cov_secure,
        "coverage_plaintext": cov_plain,
        "plaintext_selected_fraction": _median_of(rounds, "plaintext_selected_fraction"),
        "coverage_plaintext_budget": _median_of(rounds, "coverage_plaintext_budget"),
        "coverage_random": _median_of(rounds, "coverage_random"),
        "adjusted_rand": _median_of(rounds, "adjusted_rand"),
        "adjusted_rand_budget": _median_of(rounds, "adjusted_rand_budget"),
        "plaintext_stability": _median_of(rounds, "plaintext_stability"),
        "suppressed_share": _median_of(rounds, "suppressed_share"),
        "targets": targets,
        "target_values": {
            "selected_fraction": TARGET_FRACTION,
            "selection_over_train": TARGET_SELECTION_OVER_TRAIN,
            "coverage_secure": TARGET_COVERAGE,
            "coverage_gap_to_plaintext": TARGET_COVERAGE_GAP,
        },
        **dp_fields,
        "per_round": rounds,
        "bench_wall_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------------
# Command line


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("coreset", help="secure coreset selection: budget, cost and coverage vs baselines")
    p.add_argument("--data", type=Path, required=True, help="directory with client_<i>.json")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default {DEFAULT_MODEL})")
    p.add_argument("--clients", type=int, default=10, help="institutions, client_0..N-1 (default 10)")
    p.add_argument("--records-per-client", type=int, default=80, help="seeded sample per client (default 80)")
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=list(DEFAULT_LAYERS),
        help="hidden-state layers of the features (default 6 10 14 18 22 26 30)",
    )
    p.add_argument("--max-length", type=int, default=96, help="prompt tokens per feature (default 96)")
    p.add_argument("--feature-batch-size", type=int, default=8, help="records per forward pass (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="round seeds; medians are reported (default 3)")
    p.add_argument("--seed", type=int, default=0, help="sample seed and base of the round seeds (default 0)")
    p.add_argument("--train-client", type=int, default=0, help="client whose full epoch is timed (default 0)")
    p.add_argument("--skip-train", action="store_true", help="do not time training (its keys are null)")
    p.add_argument("--cache-dir", type=Path, help="feature cache (default ~/.cache/secfed/coreset-features)")
    p.add_argument("--refresh", action="store_true", help="recompute the features even if cached")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--coreset", default="{}", help="JSON object of CoresetConfig overrides (default: none)")
    p.add_argument(
        "--selection-epsilon",
        type=float,
        nargs="+",
        default=[],
        metavar="E",
        help="also run DP selection at each selection epsilon (per institution, whole federation)",
    )
    p.add_argument("--plot", type=Path, help="with --selection-epsilon: an SVG of coverage per epsilon here")
    p.add_argument(
        "--selection-dp", default="{}", help="JSON object of DpSelection overrides (with --selection-epsilon)"
    )
    add_output_arguments(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    overrides = json.loads(args.coreset)
    if not isinstance(overrides, dict):
        raise ValueError("--coreset must be a JSON object")
    dp_overrides = json.loads(args.selection_dp)
    if not isinstance(dp_overrides, dict):
        raise ValueError("--selection-dp must be a JSON object")
    if args.plot is not None and not args.selection_epsilon:
        raise ValueError("--plot needs --selection-epsilon")
    settings = CoresetBenchSettings(
        data=args.data,
        model=args.model,
        clients=args.clients,
        records_per_client=args.records_per_client,
        layers=tuple(args.layers),
        max_length=args.max_length,
        feature_batch_size=args.feature_batch_size,
        rounds=args.rounds,
        seed=args.seed,
        train_client=args.train_client,
        skip_train=args.skip_train,
        cache_dir=args.cache_dir,
        refresh=args.refresh,
        threads=args.threads,
        coreset=overrides,
        selection_epsilons=tuple(args.selection_epsilon),
        selection_dp=dp_overrides,
        progress=not args.json,
    )
    result = run_benchmark(settings)
    if args.plot is not None:
        from secfed.bench.coreset_dp import plot_svg

        args.plot.write_text(plot_svg(result.get("dp_sweep") or [result], result["clients"]))
    if emit(result, args.out, args.json):
        return 0
    print(summary_table(result))
    return 0


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else ("ok" if flag else "MISSED")


def summary_table(result: Mapping[str, Any]) -> str:
    """The human-readable summary: one line per figure, with its target where the issue sets one."""
    t = result["targets"]
    features = (
        "cached, measured " + result["feature_s_source"] if result["features_cached"] else "computed now"
    )
    rows = [
        (
            "selected fraction / round",
            _fmt(result["selected_fraction"]),
            "<= 0.05 (max over rounds)",
            _ok(t["selected_fraction_at_most_0.05"]),
        ),
        ("selection s / client, 1st round", _fmt(result["selection_s_per_client"], 2), "", ""),
        ("  of which features", _fmt(result["feature_s_per_client"], 2), features, ""),
        ("  stages only (later rounds)", _fmt(result["selection_stage_s_per_client"], 3), "", ""),
        (
            f"full-data epoch s (client {result['train_client']})",
            _fmt(result["full_train_s_per_client"], 1),
            "",
            "",
        ),
        (
            "selection / training",
            _fmt(result["selection_over_train"]),
            "< 0.30",
            _ok(t["selection_under_30pct_of_train"]),
        ),
        (
            "  same in process CPU time",
            _fmt(result["selection_over_train_cpu"]),
            "check on the wall-time ratio",
            "",
        ),
        ("upload bytes / client", _fmt(result["upload_bytes_per_client"], 0), "vectors only", ""),
        (
            "coverage secure",
            _fmt(result["coverage_secure"]),
            "<= 0.85",
            _ok(t["coverage_secure_at_most_0.85"]),
        ),
        (
            "coverage plaintext FedHDS",
            _fmt(result["coverage_plaintext"]),
            f"selects {_fmt(result['plaintext_selected_fraction'])}; secure <= it + 0.1",
            _ok(t["coverage_secure_within_0.1_of_plaintext"]),
        ),
        ("coverage plaintext @ budget", _fmt(result["coverage_plaintext_budget"]), "", ""),
        ("coverage random @ budget", _fmt(result["coverage_random"]), "~1 by definition", ""),
        (
            "ARI secure vs plaintext",
            _fmt(result["adjusted_rand"]),
            f"plaintext stability {_fmt(result['plaintext_stability'])}",
            "",
        ),
        (
            "suppressed centroid share",
            _fmt(result["suppressed_share"]),
            "single-institution cells suppressed",
            _ok(t["single_institution_cells_suppressed"]),
        ),
    ]
    for entry in result.get("dp_sweep") or ([result] if "selection_epsilon" in result else []):
        target = entry["target_coverage_secure_dp"]
        rows += [
            (
                f"coverage DP (epsilon {entry['selection_epsilon']:g})",
                _fmt(entry["coverage_secure_dp"]),
                f"selects {_fmt(entry['dp_selected_fraction'])}"
                + ("" if target is None else f"; <= {target}"),
                "" if target is None else _ok(entry["coverage_secure_dp_within_target"]),
            ),
        ]
    if result.get("dp_sweep") or "selection_epsilon" in result:
        entry = (result.get("dp_sweep") or [result])[0]
        rows += [
            ("  secure (non-DP), same space", _fmt(entry["coverage_secure_in_dp_reference"]), "", ""),
            ("  random, same space", _fmt(entry["coverage_random_in_dp_reference"]), "~1", ""),
        ]
    head = (
        f"secure coreset selection: {result['clients']} clients x {result['records_per_client']} records "
        f"({result['records_total']}), {result['model']} layers {result['layers']}, "
        f"median of {result['rounds']} rounds"
    )
    width = max(len(r[0]) for r in rows)
    lines = [head] + [f"  {a:<{width}}  {b:>9}  {c:<40} {d}".rstrip() for a, b, c, d in rows]
    return "\n".join(lines)
