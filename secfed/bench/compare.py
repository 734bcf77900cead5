"""``secfed bench dolly``: the FedIT / FedHDS comparison on Dolly-15k, every method on the same seeds.

Methods (``results`` keys): ``base`` (no tuning); ``local-only`` (each institution alone; Rouge-L
averaged over the institutions evaluated); ``fedit-plaintext`` and ``fedit-secure`` (FedIT on all
records, plaintext vs secure aggregation); ``fedhds-plaintext`` (the paper's design: the server sees
every institution's centroids, INSECURE, a baseline only); ``random`` (random records at the same
budget as secure FedHDS); ``fedhds-secure`` (ours); ``fedhds-secure-dp`` (ours with DP-SGD at epsilon
8 per institution); ``centralized`` (one model trained on the union).

Data: the FedIT split (``client_<i>.json``, ``test.json``). As FedHDS does, one category
(summarization) is held out of every institution's training data; Rouge-L is reported on all 80 test
records and on the held-out category's test records. Each institution trains from a seeded sample of
its records (``--records-per-client``): the full data would take days on a 2-core CPU.

Federated methods run in one process (``secfed.bench.inprocess``: the real coordinator and SecAgg
state machines by function call, one shared base model), so the comparison is about training, not
transport. ``train_s`` is the summed local training time of all institutions (what one machine per
institution would spend in total); ``selection_s`` the coreset stages' client time (features once,
then the statistics). Figures are wall-clock on a shared machine: compare ratios from one run.

Every method is scored on the same test records, so each keeps its per-record Rouge-L
(``rougeL_per_record``) and ``comparisons`` gives the differences the targets are about with a
paired-bootstrap 95 % interval: at 80 records, differences of a point are often within noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from secfed.bench.stats import add_output_arguments, emit, paired_bootstrap
from secfed.data.formats import Record, load_records

if TYPE_CHECKING:  # the federation code is imported lazily: benchmarks compose the system
    from secfed.fl.fedit import ModelPool

HELD_OUT = "summarization"
METHODS = (
    "base",
    "local-only",
    "fedit-plaintext",
    "fedit-secure",
    "fedhds-plaintext",
    "random",
    "fedhds-secure",
    "fedhds-secure-dp",
    "centralized",
)


@dataclass(frozen=True)
class DollyPreset:
    clients: int = 10
    records_per_client: int = 24
    rounds: int = 2
    full_epochs: float = 1.0  # passes over each institution's records in total, over all rounds
    selected_epochs: float = 2.0  # passes over the selected records per FedHDS round
    batch_size: int = 4
    max_length: int = 192
    lr: float = 5e-4
    eval_records: int = 80
    max_new_tokens: int = 32
    max_context_chars: int | None = 600  # long contexts dominate generation time on CPU
    local_only_evaluated: int = 2
    epsilon: float = 8.0
    feature_layers: tuple[int, ...] = (6, 12, 18, 24, 30)
    coreset: Mapping[str, Any] = field(default_factory=lambda: {"max_fraction": 0.05})
    seed: int = 0


CPU_PRESET = DollyPreset()
#: A GPU-sized run: every record of every institution, more rounds; the same code path.
FULL_PRESET = DollyPreset(
    records_per_client=1_000_000,
    rounds=10,
    full_epochs=1.0,
    batch_size=8,
    max_length=512,
    max_new_tokens=128,
    max_context_chars=None,
    local_only_evaluated=10,
)


@dataclass
class Outcome:
    rouge: float
    rouge_heldout: float | None
    train_s: float
    data_fraction: float
    upload_bytes: int
    selection_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    per_record: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rougeL": round(self.rouge, 3),
            "rougeL_heldout": None if self.rouge_heldout is None else round(self.rouge_heldout, 3),
            "train_s": round(self.train_s, 2),
            "selection_s": round(self.selection_s, 2),
            "data_fraction": round(self.data_fraction, 5),
            "upload_bytes": self.upload_bytes,
            "rougeL_per_record": [round(x, 3) for x in self.per_record],
            **self.extra,
        }


def load_split(data: Path, preset: DollyPreset) -> tuple[list[list[Record]], list[Record]]:
    """Each institution's training sample (held-out category removed) and the test records."""
    paths = [data / f"client_{i}.json" for i in range(preset.clients)]
    missing = [str(p) for p in [*paths, data / "test.json"] if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{data}: missing {missing} (expected the FedIT Dolly split)")
    rng = np.random.default_rng(preset.seed)
    clients = []
    for path in paths:
        records = [r for r in load_records(path) if r.category != HELD_OUT]
        take = min(len(records), preset.records_per_client)
        order = rng.permutation(len(records))[:take]
        clients.append([records[int(i)] for i in sorted(order)])
    test = load_records(data / "test.json", max_records=preset.eval_records)
    if preset.max_context_chars is not None:
        # The same cut for every method: it bounds generation time, it does not favour any of them.
        test = [replace(r, context=r.context[: preset.max_context_chars]) for r in test]
    return clients, test


@dataclass(frozen=True)
class Scores:
    """One evaluation: Rouge-L overall, on the held-out category, and per test record (in order)."""

    rouge: float
    heldout: float | None
    per_record: list[float]


class _Evaluator:
    """Scores a global adapter vector on the test records with one loaded model."""

    def __init__(self, peft: Any, tokenizer: Any, test: Sequence[Record], preset: DollyPreset) -> None:
        from secfed.data.prompts import build_prompt

        self.peft, self.tokenizer, self.preset = peft, tokenizer, preset
        self.prompts = [build_prompt(r, tokenizer, "chat") for r in test]
        self.references = [r.response for r in test]
        self.categories = [r.category for r in test]

    def __call__(self, adapter: np.ndarray | None) -> Scores:
        from secfed.model.lora import vector_to_adapter

        if adapter is None:
            with self.peft.disable_adapter():
                report = self._run()
        else:
            vector_to_adapter(self.peft, adapter)
            report = self._run()
        held = report.per_category.get(HELD_OUT, {}).get("rougeL")
        return Scores(
            float(report.overall["rougeL"]), None if held is None else float(held), report.record_rouge_l
        )

    def _run(self) -> Any:
        from secfed.eval.report import evaluate

        return evaluate(
            self.peft,
            self.tokenizer,
            self.prompts,
            self.references,
            self.categories,
            max_new_tokens=self.preset.max_new_tokens,
            batch_size=8,
            progress=True,
        )


def _train_options(preset: DollyPreset, model: str, epochs: float) -> dict[str, Any]:
    return {
        "model": model,
        "train": {
            "epochs": epochs,
            "batch_size": preset.batch_size,
            "max_length": preset.max_length,
            "lr": preset.lr,
            "style": "chat",
        },
        "max_weight": 64,
        "seed": preset.seed,
        "clip": 4.0,
    }


def _write_clients(clients: Sequence[Sequence[Record]], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, records in enumerate(clients):
        path = directory / f"client_{i}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for r in records:
                row = {
                    "instruction": r.instruction,
                    "context": r.context,
                    "response": r.response,
                    "category": r.category,
                }
                fh.write(json.dumps(row) + "\n")
        paths.append(path)
    return paths


@dataclass
class _Bench:
    preset: DollyPreset
    model: str
    client_files: list[Path]
    workdir: Path
    evaluate: _Evaluator
    pool: ModelPool
    features: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [f"inst{i:02d}" for i in range(len(self.client_files))]

    def client_options(self, i: int) -> dict[str, Any]:
        return {"model": self.model, "data": str(self.client_files[i])}

    def fedit(self, *, secure: bool) -> tuple[Outcome, Any]:
        from secfed.bench.inprocess import run_inprocess
        from secfed.fl.fedit import FeditClient, FeditServer

        epochs = self.preset.full_epochs / self.preset.rounds
        server = FeditServer(_train_options(self.preset, self.model, epochs))
        clients = {
            cid: FeditClient(cid, self.client_options(i), model_pool=self.pool)
            for i, cid in enumerate(self.ids)
        }
        run = run_inprocess(server, clients, rounds=self.preset.rounds, secure=secure, seed=self.preset.seed)
        _check(run)
        scores = self.evaluate(run.model)
        train_s = sum(run.compute_s.values())
        outcome = Outcome(
            scores.rouge, scores.heldout, train_s, 1.0, run.upload_values * 8, per_record=scores.per_record
        )
        return outcome, run

    def fedhds(self, mode: str, *, fraction: float | None = None, dp: bool = False) -> tuple[Outcome, Any]:
        from secfed.bench.inprocess import run_inprocess
        from secfed.dp.policy import PrivacyPolicy
        from secfed.fl.fedhds import FedhdsClient, FedhdsServer

        options = {
            **_train_options(self.preset, self.model, 1.0),
            "coreset": dict(self.preset.coreset),
            "feature_layers": list(self.preset.feature_layers),
            "selected_epochs": self.preset.selected_epochs,
        }
        if mode == "random":
            options.update(selection="random", random_fraction=fraction)
        if dp:
            options["dp"] = {
                "target_epsilon": self.preset.epsilon,
                "delta": 1e-5,
                "rounds": self.preset.rounds,
                "max_grad_norm": 1.0,
                "expected_batch_size": self.preset.batch_size,
                "max_physical_batch": self.preset.batch_size,
            }
        server = FedhdsServer(options)
        clients: dict[str, Any] = {}
        for i, cid in enumerate(self.ids):
            privacy = None
            if dp:
                ledger = self.workdir / f"{cid}.privacy.jsonl"
                ledger.unlink(missing_ok=True)
                privacy = PrivacyPolicy(ledger=ledger, delta=1e-5, budget_epsilon=self.preset.epsilon)
            client = FedhdsClient(cid, self.client_options(i), privacy=privacy, model_pool=self.pool)
            if cid in self.features:
                client.preload_features(*self.features[cid])
            clients[cid] = client
        run = run_inprocess(server, clients, rounds=self.preset.rounds, secure=True, seed=self.preset.seed)
        _check(run)
        for cid, client in clients.items():
            if client.features is not None:
                self.features.setdefault(cid, client.features)
        scores = self.evaluate(run.model)
        total = sum(len(c.records) for c in clients.values()) * self.preset.rounds
        trained = sum(c.records_trained for c in clients.values())
        selection_s = sum(c.selection_s for c in clients.values())
        train_s = sum(run.compute_s.values()) - selection_s
        extra: dict[str, Any] = {
            "selected_per_round": [server.summaries[r].get("selected") for r in sorted(server.summaries)]
        }
        if dp:
            from secfed.dp.ledger import PrivacyLedger

            spent = [
                PrivacyLedger.open_existing(self.workdir / f"{cid}.privacy.jsonl").spent() for cid in self.ids
            ]
            extra["epsilon_max"] = max(s.pld for s in spent)
            extra["epsilon_rdp_max"] = max(s.rdp for s in spent)
        outcome = Outcome(
            scores.rouge,
            scores.heldout,
            train_s,
            trained / total,
            run.upload_values * 8,
            selection_s,
            extra,
            scores.per_record,
        )
        return outcome, run


def _check(run: Any) -> None:
    if not str(run.finished_reason).startswith("completed"):
        raise RuntimeError(f"benchmark federation failed: {run.finished_reason}; aborted: {run.aborted}")


def run_benchmark(
    data: Path, preset: DollyPreset, *, model: str = "smollm2-135m-instruct", methods: Sequence[str] = METHODS
) -> dict[str, Any]:
    """Run ``methods`` and return the result object; the institutions' files and ledgers live in a
    temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="secfed-bench-compare-") as tmp:
        return _run(data, preset, model, methods, Path(tmp))


def _run(
    data: Path, preset: DollyPreset, model: str, methods: Sequence[str], workdir: Path
) -> dict[str, Any]:
    from secfed.model.loading import load_base_model
    from secfed.model.lora import LoraSettings, apply_lora
    from secfed.model.train import TrainSettings, train_local

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; known: {list(METHODS)}")
    started = time.perf_counter()
    clients_records, test = load_split(data, preset)
    total_records = sum(len(c) for c in clients_records)
    files = _write_clients(clients_records, workdir / "clients")
    # One base model + adapter for every institution, the evaluator and centralized training.
    base = load_base_model(model)
    peft = apply_lora(base.model, LoraSettings())
    pool: ModelPool = {(model, "auto", None): (base, peft, LoraSettings())}
    evaluator = _Evaluator(peft, base.tokenizer, test, preset)
    bench = _Bench(preset, model, files, workdir, evaluator, pool)
    from secfed.model.lora import adapter_to_vector, vector_to_adapter

    initial = adapter_to_vector(peft)
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, outcome: Outcome) -> None:
        results[name] = outcome.to_json()
        print(f"[dolly] {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)

    if "base" in methods:
        scores = evaluator(None)
        record("base", Outcome(scores.rouge, scores.heldout, 0.0, 0.0, 0, per_record=scores.per_record))
    if "fedit-plaintext" in methods:
        record("fedit-plaintext", bench.fedit(secure=False)[0])
    if "fedit-secure" in methods:
        record("fedit-secure", bench.fedit(secure=True)[0])
    secure_fraction = None
    if "fedhds-secure" in methods:
        outcome, _ = bench.fedhds("secure")
        secure_fraction = outcome.data_fraction
        record("fedhds-secure", outcome)
    if "fedhds-plaintext" in methods:
        record("fedhds-plaintext", _plaintext_fedhds(bench))
    if "random" in methods:
        fraction = secure_fraction if secure_fraction else float(preset.coreset.get("max_fraction", 0.05))
        record("random", bench.fedhds("random", fraction=fraction)[0])
    if "fedhds-secure-dp" in methods:
        record("fedhds-secure-dp", bench.fedhds("secure", dp=True)[0])
    settings = TrainSettings(
        epochs=preset.full_epochs,
        batch_size=preset.batch_size,
        max_length=preset.max_length,
        lr=preset.lr,
        style="chat",
        seed=preset.seed,
    )
    if "centralized" in methods:
        union = [r for c in clients_records for r in c]
        vector_to_adapter(peft, initial)
        t0 = time.perf_counter()
        stats = train_local(peft, base.tokenizer, union, settings, desc="centralized")
        seconds = time.perf_counter() - t0
        scores = evaluator(adapter_to_vector(peft))
        record(
            "centralized",
            Outcome(
                scores.rouge,
                scores.heldout,
                seconds,
                1.0,
                0,
                extra={"steps": stats.steps},
                per_record=scores.per_record,
            ),
        )
    if "local-only" in methods:
        local: list[Scores] = []
        train_s = 0.0
        for i in range(min(preset.local_only_evaluated, len(clients_records))):
            vector_to_adapter(peft, initial)
            t0 = time.perf_counter()
            train_local(peft, base.tokenizer, clients_records[i], settings, desc=f"local-only inst{i:02d}")
            train_s += time.perf_counter() - t0
            local.append(evaluator(adapter_to_vector(peft)))
        held_scores = [sc.heldout for sc in local]
        record(
            "local-only",
            Outcome(
                float(np.mean([sc.rouge for sc in local])),
                None
                if any(h is None for h in held_scores)
                else float(np.mean([h or 0.0 for h in held_scores])),
                train_s,
                1.0 / len(clients_records),
                0,
                extra={"institutions_evaluated": len(local)},
                # Record by record, the mean over the institutions evaluated: the same average as above.
                per_record=[float(x) for x in np.mean([sc.per_record for sc in local], axis=0)],
            ),
        )
    return {
        "benchmark": "dolly",
        "data": str(data),
        "model": model,
        "preset": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.__dict__.items() if k != "coreset"
        }
        | {"coreset": dict(preset.coreset)},
        "records": total_records,
        "test_records": len(test),
        "held_out_category": HELD_OUT,
        "results": results,
        "comparisons": compare_methods(results),
        "wall_s": round(time.perf_counter() - started, 1),
    }


#: The paired comparisons the issue's targets are about, as (method, baseline, target on the delta).
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("fedit-secure", "fedit-plaintext", "|delta| < 0.2"),
    ("fedhds-secure", "fedhds-plaintext", "delta > -1"),
    ("fedhds-secure", "fedit-secure", "delta >= 0"),
    ("fedhds-secure", "random", "delta > 0"),
    ("fedhds-secure-dp", "fedhds-secure", "(the cost of DP)"),
)


def compare_methods(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``"A vs B"`` -> mean Rouge-L difference A - B over the test records, with a paired 95 %
    bootstrap interval, for each of ``COMPARISONS`` whose two methods both ran."""
    out: dict[str, dict[str, Any]] = {}
    for method, baseline, target in COMPARISONS:
        if method in results and baseline in results:
            a, b = results[method]["rougeL_per_record"], results[baseline]["rougeL_per_record"]
            stats = paired_bootstrap(a, b)
            stats["delta"] = round(stats["delta"], 3)
            stats["ci95"] = [round(x, 3) for x in stats["ci95"]]
            out[f"{method} vs {baseline}"] = {**stats, "target": target}
    return out


def _plaintext_points(features: Sequence[np.ndarray], config: Any, round_seed: int) -> list[np.ndarray]:
    """Every institution's records in a shared 2-D space fitted on the pooled features (the server
    of the plaintext baseline sees everything anyway), with the same projection as the secure run."""
    from secfed.coreset.features import feature_blocks
    from secfed.coreset.layout import CohortSum, sum_contributions
    from secfed.coreset.space import (
        PCA_STAGE,
        fit_shared_space,
        pca_contribution,
        pca_layout,
        project,
        projection_matrix,
    )

    projection = projection_matrix(features[0].shape[1], config.k0, round_seed)
    projected = [
        project(feature_blocks(f, config.feature_blocks), projection, config.bound) for f in features
    ]
    layout = pca_layout(config.k0, bound=config.bound, max_records=config.max_records)
    total: CohortSum = sum_contributions(layout, [pca_contribution(p) for p in projected])
    space = fit_shared_space(
        CohortSum(PCA_STAGE, total.values, len(features)),
        dims=config.dims,
        bins=config.bins,
        range_std=config.range_std,
    )
    return [space.coords(p) for p in projected]


def _plaintext_fedhds(bench: _Bench) -> Outcome:
    """INSECURE baseline: the server receives every institution's centroids (as in the FedHDS paper)
    and tells each institution which records to train on; training and aggregation as in FedHDS."""
    from secfed.bench.inprocess import run_inprocess
    from secfed.coreset.baselines import plaintext_fedhds_INSECURE
    from secfed.fl.fedhds import FedhdsClient, FedhdsServer

    if len(bench.features) != len(bench.ids):
        raise RuntimeError("plaintext FedHDS reuses the secure run's features: run fedhds-secure first")
    options = {
        **_train_options(bench.preset, bench.model, 1.0),
        "coreset": dict(bench.preset.coreset),
        "feature_layers": list(bench.preset.feature_layers),
        "selected_epochs": bench.preset.selected_epochs,
    }
    probe = FedhdsServer(options)
    config = probe.coreset
    assignments: list[dict[str, list[int]]] = []
    t0 = time.perf_counter()
    for round_ in range(bench.preset.rounds):
        feats = [bench.features[cid][1] for cid in bench.ids]
        idx = [bench.features[cid][0] for cid in bench.ids]
        points = _plaintext_points(feats, config, probe._round_seed(round_))
        chosen = plaintext_fedhds_INSECURE(
            points,
            idx,
            local_min_cluster_size=config.local_min_cluster_size,
            global_min_cluster_size=config.global_min_cluster_size,
            seed=bench.preset.seed,
        )
        assignments.append({cid: chosen.selected[i].tolist() for i, cid in enumerate(bench.ids)})
    selection_s = time.perf_counter() - t0

    class AssignedServer(FedhdsServer):
        """Plans one train stage; what each institution trains on is decided above, in the clear."""

        def next_stage(self, round_: int, model: Any, done: Any, *, colluders: int, attempt: int) -> Any:
            if done:
                return None
            picked = sum(len(v) for v in assignments[round_].values())
            summary = {"mode": "plaintext-INSECURE", "selected": picked}
            return self._train_stage(round_, model, {}, summary, self.round_coreset(colluders), attempt)

    class AssignedClient(FedhdsClient):
        """INSECURE baseline only: trains on the records the plaintext server chose for it. The
        production client never takes a record list from the server (it would let the server pick
        one institution's record and read its update from the sum)."""

        def admit(self, round_: int, model: Any, task_config: Any, session: Any, policy: Any) -> int | None:
            self._assigned = np.asarray(assignments[round_][self.client_id], dtype=np.int64)
            if not len(self._assigned):
                return None  # nothing assigned: it uploads zeros (see _train_and_release)
            return super().admit(round_, model, task_config, session, policy)

        def _train_and_release(self, round_: int, model: Any, ins: Any) -> dict[str, Any]:
            if not len(self._assigned):
                return {"delta": np.zeros(len(model)), "weight": np.zeros(1)}
            out: dict[str, Any] = super()._train_and_release(round_, model, ins)
            return out

        def _selected_indices(self, ins: Any) -> Any:
            return self._assigned

        def check_plan(self, ins: Any, session: Any) -> None:
            # No coreset stages: the plaintext server decided the selection above.
            return None

        def release_identity(self, round_: int, model: Any, task_config: Any) -> bytes | None:
            # The baseline sends everything in the clear to the server anyway: there is nothing
            # left for the release log to protect (and an unchanged model would stall it).
            return None

    server = AssignedServer(options)
    clients = {
        cid: AssignedClient(cid, bench.client_options(i), model_pool=bench.pool)
        for i, cid in enumerate(bench.ids)
    }
    run = run_inprocess(server, clients, rounds=bench.preset.rounds, secure=True, seed=bench.preset.seed)
    _check(run)
    scores = bench.evaluate(run.model)
    total = sum(len(c.records) for c in clients.values()) * bench.preset.rounds
    trained = sum(c.records_trained for c in clients.values())
    extra = {"selected_per_round": [sum(len(v) for v in a.values()) for a in assignments]}
    return Outcome(
        scores.rouge,
        scores.heldout,
        sum(run.compute_s.values()),
        trained / total,
        run.upload_values * 8,
        selection_s,
        extra,
        scores.per_record,
    )


def plot_svg(result: Mapping[str, Any]) -> str:
    """A standalone SVG: Rouge-L on the test records and on the held-out category, per method."""
    from secfed.audit.charts import Bars, bar_chart, standalone_svg

    names = list(result["results"])
    chart = bar_chart(
        chart_id="dolly",
        title="Rouge-L per method (Dolly-15k, same seeds)",
        desc="Rouge-L on the test records and on the held-out category for every method",
        categories=names,
        layers=[
            Bars("Rouge-L, all test records", tuple(result["results"][n]["rougeL"] for n in names), "#1f6fb2")
        ],
        x_label="method",
        y_label="Rouge-L",
    )
    return standalone_svg(chart)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dolly",
        help="FedIT vs FedHDS (secure, plaintext, random, DP, centralized) on Dolly-15k",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--data", type=Path, required=True, help="the FedIT Dolly split (client_<i>.json, test.json)"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--full", action="store_true", help="the GPU-sized preset (all records, 10 rounds)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--records-per-client", type=int, help="override the preset's sample per institution")
    p.add_argument("--rounds", type=int, help="override the preset's rounds")
    p.add_argument(
        "--selected-epochs",
        type=float,
        help="override the preset's passes over the selected records per FedHDS (and random) round",
    )
    add_output_arguments(p)
    p.add_argument("--plot", type=Path, help="write an SVG bar chart of Rouge-L per method here")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    preset = FULL_PRESET if args.full else CPU_PRESET
    if args.records_per_client is not None:
        if args.records_per_client < 1:
            raise ValueError(f"dolly --records-per-client must be at least 1, got {args.records_per_client}")
        preset = replace(preset, records_per_client=args.records_per_client)
    if args.rounds is not None:
        if args.rounds < 1:
            raise ValueError(f"dolly --rounds must be at least 1, got {args.rounds}")
        preset = replace(preset, rounds=args.rounds)
    if args.selected_epochs is not None:
        if not args.selected_epochs > 0:
            raise ValueError(f"dolly --selected-epochs must be positive, got {args.selected_epochs}")
        preset = replace(preset, selected_epochs=args.selected_epochs)
    result = run_benchmark(args.data, preset, model=args.model, methods=args.methods)
    if args.plot is not None:
        args.plot.write_text(plot_svg(result), encoding="utf-8")
    if not emit(result, args.out, args.json):
        print(_summary(result))
    return 0


def _summary(result: Mapping[str, Any]) -> str:
    lines = [
        f"secfed bench dolly: {result['records']} training records, {result['test_records']} test records"
    ]
    lines.append(f"{'method':18} {'rougeL':>7} {'held-out':>8} {'train s':>8} {'data':>7}")
    for name, r in result["results"].items():
        lines.append(
            f"{name:18} {r['rougeL']:7.2f} {r['rougeL_heldout'] or float('nan'):8.2f} {r['train_s']:8.1f} "
            f"{100 * r['data_fraction']:6.2f}%"
        )
    for name, c in result["comparisons"].items():
        lo, hi = c["ci95"]
        lines.append(
            f"{name}: Rouge-L delta {c['delta']:+.2f} (95% CI {lo:+.2f} .. {hi:+.2f}; target {c['target']})"
        )
    return "\n".join(lines)
