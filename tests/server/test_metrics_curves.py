"""The secure learning curves on the operator's dashboard: the Prometheus gauges carry the cohort's
mean training loss and the mean loss of the received adapter on held-out records, from the decoded
secure sum, and nothing when the task does not ask for a curve (no made-up zero)."""

from __future__ import annotations

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from secfed.fl.curves import eval_segments, loss_segments
from secfed.secagg.messages import AggregateResult
from server.metrics import FederationMetrics


def _samples(metrics: FederationMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _sum(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {"x": np.zeros(2)}
    for part in parts:
        for name, segment in part.items():
            values[name] = values.get(name, np.zeros(1)) + segment
    return values


def test_the_curve_gauges_show_the_cohort_means_and_only_when_asked() -> None:
    metrics = FederationMetrics(rounds_planned=3, cohort_size=3)
    model = np.zeros(2, dtype=np.float32)
    plain = AggregateResult(b"s" * 16, ("a", "b"), (), np.zeros(2, dtype=np.uint64), _sum([]))
    metrics.round_completed(0, plain, model, 0.0, {"compute": 1.0}, [])
    names = {name for name, _labels in _samples(metrics)}
    assert "secfed_mean_train_loss" not in names and "secfed_mean_eval_loss" not in names
    parts = [loss_segments(2.0, 1.0), loss_segments(4.0, 2.5), eval_segments(3.0), eval_segments(2.0)]
    curves = AggregateResult(b"s" * 16, ("a", "b"), (), np.zeros(2, dtype=np.uint64), _sum(parts))
    metrics.round_completed(1, curves, model, 0.0, {"compute": 1.0}, [])
    samples = _samples(metrics)
    assert samples[("secfed_mean_train_loss", (("step", "first"),))] == 3.0
    assert samples[("secfed_mean_train_loss", (("step", "last"),))] == 1.75
    assert samples[("secfed_mean_eval_loss", (("records", "held_out"),))] == 2.5
