"""Metrics against hand-computed values, and the per-category report with a stubbed generator."""

from __future__ import annotations

import json
from unittest.mock import ANY

import pytest

from secfed.eval import report as report_module
from secfed.eval.metrics import exact_match, normalize_answer, rouge_l, rouge_l_scores
from secfed.eval.report import EvalReport, evaluate, format_table

# --- Rouge-L ---------------------------------------------------------------------------------------


def test_rouge_l_identical_and_disjoint() -> None:
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l(["dogs bark loudly"], ["the cat sat on the mat"]) == pytest.approx(0.0)


def test_rouge_l_hand_computed_partial_overlaps() -> None:
    # ref: the cat sat on the mat / pred: the cat is on a mat -> LCS "the cat on mat" = 4 of 6 and 6:
    # P = R = 4/6, F = 2/3.
    assert rouge_l(["the cat is on a mat"], ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    # ref: a b c d / pred: a c e -> LCS "a c" = 2; P = 2/3, R = 2/4, F = 2PR/(P+R) = 4/7.
    assert rouge_l(["a c e"], ["a b c d"]) == pytest.approx(400 / 7)
    # Order matters (a subsequence, not a bag of words): pred "d c b a" vs ref "a b c d" -> LCS 1,
    # P = R = 1/4, F = 1/4.
    assert rouge_l(["d c b a"], ["a b c d"]) == pytest.approx(25.0)


def test_rouge_l_is_the_mean_over_pairs_and_stems() -> None:
    preds = ["the cat sat on the mat", "nothing shared", "a c e"]
    refs = ["the cat sat on the mat", "the cat sat on the mat", "a b c d"]
    assert rouge_l(preds, refs) == pytest.approx((100 + 0 + 400 / 7) / 3)
    # Porter stemming: "running" and "runs" both become "run"; case and punctuation are ignored.
    assert rouge_l(["Running!"], ["runs"]) == pytest.approx(100.0)


def test_rouge_l_scores_are_per_pair_in_order() -> None:
    preds = ["the cat sat on the mat", "nothing shared", "a c e"]
    refs = ["the cat sat on the mat", "the cat sat on the mat", "a b c d"]
    assert rouge_l_scores(preds, refs) == pytest.approx([100.0, 0.0, 400 / 7])
    with pytest.raises(ValueError):
        rouge_l_scores(["a"], [])


def test_rouge_l_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        rouge_l([], [])


# --- exact match -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Paris.", "paris"),
        ("  An   apple,  a day ", "apple day"),
        ("Theory", "theory"),  # "the" only as a whole word
        ("“Quoted” — text!", "quoted text"),  # Unicode punctuation too
        ("42 + 1 = 43", "42 1 43"),  # ASCII symbols, as in SQuAD's string.punctuation
        ("don't", "dont"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match() -> None:
    assert exact_match(["The answer is 42.", "PARIS", "blue"], ["answer is 42", "Paris!", "red"]) == (
        pytest.approx(200 / 3)
    )
    assert exact_match(["x"], ["x"]) == 100.0
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        exact_match([], [])


# --- evaluate / report -----------------------------------------------------------------------------

PROMPTS = ["p0", "p1", "p2", "p3", "p4"]
REFERENCES = ["the cat sat on the mat", "paris", "a b c d", "42", "blue"]
CATEGORIES = ["open_qa", "closed_qa", "open_qa", "math", "closed_qa"]
# What the stubbed model "answers", in prompt order.
ANSWERS = ["the cat is on a mat", "Paris.", "a c e", "41", "green"]


@pytest.fixture
def stub_generation(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    calls: list[dict[str, object]] = []

    def fake(model, tokenizer, prompts, **kwargs):
        calls.append({"prompts": list(prompts), **kwargs})
        return [ANSWERS[PROMPTS.index(p)] for p in prompts]

    monkeypatch.setattr(report_module, "generate_answers", fake)
    return calls


def run(checker=None, samples_per_category: int = 3) -> EvalReport:
    return evaluate(
        None,  # type: ignore[arg-type]  # the stub never touches the model
        None,  # type: ignore[arg-type]
        PROMPTS,
        REFERENCES,
        CATEGORIES,
        checker=checker,
        max_new_tokens=7,
        batch_size=2,
        samples_per_category=samples_per_category,
        progress=False,
    )


def test_evaluate_aggregates_per_category(stub_generation) -> None:
    checked: list[tuple[int, str]] = []

    def checker(i: int, prediction: str) -> bool:
        checked.append((i, prediction))
        return normalize_answer(prediction) == normalize_answer(REFERENCES[i]) or i == 2

    rep = run(checker)
    assert stub_generation[0]["prompts"] == PROMPTS
    assert stub_generation[0]["max_new_tokens"] == 7
    assert stub_generation[0]["batch_size"] == 2
    assert checked == list(enumerate(ANSWERS))

    assert list(rep.per_category) == ["closed_qa", "math", "open_qa"]
    closed, math, open_qa = (rep.per_category[c] for c in ["closed_qa", "math", "open_qa"])
    assert closed == pytest.approx({"rougeL": 50.0, "exact_match": 50.0, "accuracy": 50.0, "n": 2.0})
    assert math == pytest.approx({"rougeL": 0.0, "exact_match": 0.0, "accuracy": 0.0, "n": 1.0})
    assert open_qa == pytest.approx(
        {"rougeL": (200 / 3 + 400 / 7) / 2, "exact_match": 0.0, "accuracy": 50.0, "n": 2.0}
    )
    assert rep.overall == pytest.approx(
        {"rougeL": (200 / 3 + 100 + 400 / 7) / 5, "exact_match": 20.0, "accuracy": 40.0, "n": 5.0}
    )
    # Per record, in prompt order, and their mean is the overall score.
    assert rep.record_rouge_l == pytest.approx([200 / 3, 100.0, 400 / 7, 0.0, 0.0])
    assert sum(rep.record_rouge_l) / len(PROMPTS) == pytest.approx(rep.overall["rougeL"])


def test_samples_and_json(stub_generation) -> None:
    rep = run(lambda i, p: i == 1, samples_per_category=1)
    assert rep.samples == [
        {
            "category": "closed_qa",
            "prompt": "p1",
            "reference": "paris",
            "prediction": "Paris.",
            "correct": "true",
        },
        {"category": "math", "prompt": "p3", "reference": "42", "prediction": "41", "correct": "false"},
        {
            "category": "open_qa",
            "prompt": "p0",
            "reference": "the cat sat on the mat",
            "prediction": "the cat is on a mat",
            "correct": "false",
        },
    ]
    data = rep.to_json()
    assert json.loads(json.dumps(data)) == data
    data["overall"]["rougeL"] = -1.0
    assert rep.overall["rougeL"] != -1.0  # a copy


def test_evaluate_without_checker(stub_generation) -> None:
    rep = run()
    assert "accuracy" not in rep.overall
    assert all("accuracy" not in s for s in rep.per_category.values())
    assert all("correct" not in s for s in rep.samples)
    assert len(rep.samples) == 5  # at most 3 per category, and no category has more than 2


def test_evaluate_rejects_mismatched_lengths(stub_generation) -> None:
    with pytest.raises(ValueError):
        evaluate(None, None, PROMPTS, REFERENCES[:-1], CATEGORIES, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate(None, None, [], [], [], progress=False)  # type: ignore[arg-type]


def test_format_table(stub_generation) -> None:
    before = run(lambda i, p: False)
    after = EvalReport(
        overall={"rougeL": 70.0, "exact_match": 60.0, "accuracy": 80.0, "n": 6.0},
        per_category={
            **{c: dict(s, rougeL=s["rougeL"] + 10) for c, s in before.per_category.items()},
            "new_category": {"rougeL": 12.5, "exact_match": 0.0, "accuracy": 100.0, "n": 1.0},
        },
        samples=[],
    )
    table = format_table(before, after)
    lines = table.splitlines()
    for cat in ["closed_qa", "math", "open_qa", "new_category", "overall"]:
        assert any(line.startswith(cat) for line in lines), cat
    assert "acc before" in lines[0] and "rougeL after" in lines[0]
    new_row = next(line for line in lines if line.startswith("new_category")).split()
    assert new_row == ["new_category", "1", "-", "12.5", "-", "-", "100.0", "-"]
    math_row = next(line for line in lines if line.startswith("math")).split()
    assert math_row == ["math", "1", "0.0", "10.0", "+10.0", "0.0", "0.0", "+0.0"]
    assert lines[-1].split()[:2] == ["overall", "5/6"]  # different counts are shown, not hidden

    plain = format_table(run(), run())
    assert "acc" not in plain
    assert plain.splitlines()[-1].split() == ["overall", "5", f"{run().overall['rougeL']:.1f}", ANY, "+0.0"]
