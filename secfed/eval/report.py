"""Evaluate a model on held-out instructions and summarise the result per category.

An overall score hides what federated tuning is for: institutions hold different kinds of instructions,
and the question is whether each kind improved (or whether one regressed while the average rose). So
every metric is reported overall *and* per category, next to a few sample answers per category for a
human to read, and :func:`format_table` lines up a before/after pair for the console.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from secfed.eval.generate import generate_answers
from secfed.eval.metrics import exact_match, rouge_l_scores

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Checks one answer: (index into the evaluated prompts, prediction) -> correct?
Checker = Callable[[int, str], bool]


@dataclass
class EvalReport:
    """Scores of one evaluation run.

    ``overall`` and every ``per_category`` entry hold the same keys: ``rougeL``, ``exact_match`` and
    ``n`` (as a float, so the dicts stay ``str -> float`` for JSON), plus ``accuracy`` when a checker
    was given. ``samples`` keeps the first few answers of each category, with ``correct`` ("true" /
    "false") when a checker was given. ``record_rouge_l`` is each prompt's Rouge-L, in prompt order,
    for paired comparisons between methods; ``to_json`` leaves it out (it is per record, and the
    report's JSON is a summary).
    """

    overall: dict[str, float]
    per_category: dict[str, dict[str, float]]
    samples: list[dict[str, str]] = field(default_factory=list)
    record_rouge_l: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (plain dicts and lists), safe to mutate."""
        return {
            "overall": dict(self.overall),
            "per_category": {cat: dict(scores) for cat, scores in self.per_category.items()},
            "samples": [dict(s) for s in self.samples],
        }


def _scores(
    predictions: Sequence[str],
    references: Sequence[str],
    correct: Sequence[bool] | None,
    rouge: Sequence[float],
) -> dict[str, float]:
    """The metric dict of one group of answers (all of them, or one category's)."""
    scores = {
        "rougeL": sum(rouge) / len(rouge),  # the records' own scores, computed once in evaluate
        "exact_match": exact_match(predictions, references),
    }
    if correct is not None:
        scores["accuracy"] = 100.0 * sum(correct) / len(correct)
    scores["n"] = float(len(predictions))
    return scores


def evaluate(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    references: Sequence[str],
    categories: Sequence[str],
    *,
    checker: Checker | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    samples_per_category: int = 3,
    progress: bool = True,
) -> EvalReport:
    """Generate greedy answers to ``prompts`` and score them against ``references``.

    ``categories[i]`` names the kind of instruction ``prompts[i]`` is; categories are reported in
    sorted order. ``checker(i, prediction)``, when given, judges correctness beyond string overlap
    (e.g. a multiple-choice letter or a number parsed from free text) and adds ``accuracy``.
    """
    if not (len(prompts) == len(references) == len(categories)):
        raise ValueError(
            f"{len(prompts)} prompts, {len(references)} references and {len(categories)} categories"
        )
    if not prompts:
        raise ValueError("nothing to evaluate")
    if samples_per_category < 0:
        raise ValueError("samples_per_category must be >= 0")

    predictions = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        desc="evaluate",
    )
    if len(predictions) != len(prompts):
        raise RuntimeError(f"generation returned {len(predictions)} answers for {len(prompts)} prompts")
    correct = [bool(checker(i, p)) for i, p in enumerate(predictions)] if checker is not None else None
    rouge = rouge_l_scores(predictions, references)

    by_category: dict[str, list[int]] = {}
    for i, cat in enumerate(categories):
        by_category.setdefault(cat, []).append(i)

    per_category: dict[str, dict[str, float]] = {}
    samples: list[dict[str, str]] = []
    for cat in sorted(by_category):
        idx = by_category[cat]
        per_category[cat] = _scores(
            [predictions[i] for i in idx],
            [references[i] for i in idx],
            [correct[i] for i in idx] if correct is not None else None,
            [rouge[i] for i in idx],
        )
        for i in idx[:samples_per_category]:
            sample = {
                "category": cat,
                "prompt": prompts[i],
                "reference": references[i],
                "prediction": predictions[i],
            }
            if correct is not None:
                sample["correct"] = "true" if correct[i] else "false"
            samples.append(sample)

    return EvalReport(
        overall=_scores(predictions, references, correct, rouge),
        per_category=per_category,
        samples=samples,
        record_rouge_l=rouge,
    )


def _cell(scores: dict[str, float] | None, key: str) -> str:
    """One table cell: the score to one decimal, or "-" where the report has no such value."""
    if scores is None or key not in scores:
        return "-"
    return f"{scores[key]:.1f}"


def _delta(before: dict[str, float] | None, after: dict[str, float] | None, key: str) -> str:
    """Signed change, so an improvement and a regression read differently at a glance."""
    if before is None or after is None or key not in before or key not in after:
        return "-"
    return f"{after[key] - before[key]:+.1f}"


def _count(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    """``n``; both counts when the two runs evaluated different numbers of prompts (then the two
    columns are not strictly comparable, and the table should say so)."""
    counts = [int(s["n"]) for s in (before, after) if s is not None and "n" in s]
    if not counts:
        return "-"
    return str(counts[0]) if len(set(counts)) == 1 else "/".join(str(c) for c in counts)


def format_table(before: EvalReport, after: EvalReport) -> str:
    """A plain-text before/after table: one row per category (union of both reports, sorted) and an
    ``overall`` row; Rouge-L always, accuracy columns only when either report has accuracy."""
    with_accuracy = "accuracy" in before.overall or "accuracy" in after.overall
    header = ["category", "n", "rougeL before", "rougeL after", "delta"]
    if with_accuracy:
        header += ["acc before", "acc after", "delta"]

    def row(name: str, b: dict[str, float] | None, a: dict[str, float] | None) -> list[str]:
        cells = [name, _count(b, a), _cell(b, "rougeL"), _cell(a, "rougeL"), _delta(b, a, "rougeL")]
        if with_accuracy:
            cells += [_cell(b, "accuracy"), _cell(a, "accuracy"), _delta(b, a, "accuracy")]
        return cells

    categories = sorted(set(before.per_category) | set(after.per_category))
    rows = [row(c, before.per_category.get(c), after.per_category.get(c)) for c in categories]
    rows.append(row("overall", before.overall, after.overall))

    widths = [max(len(r[col]) for r in [header, *rows]) for col in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(render(header))
    lines = [render(header), rule, *(render(r) for r in rows[:-1]), rule, render(rows[-1])]
    return "\n".join(lines)
