"""Answer-quality metrics for held-out instructions.

Rouge-L (longest common subsequence F-measure) is the standard score for free-form instruction
following (FedIT and its follow-ups report it): it rewards answers that say the reference's words in
the reference's order without demanding an exact string. Exact match, after SQuAD-style
normalisation, is the strict counterpart for short factual answers, where "The Paris." and "paris"
should count as the same answer but a paraphrase should not.

Both return percentages (0-100) so they sit next to each other in a report.

Note that ``rouge_score``'s default tokenizer keeps only ASCII letters and digits: text in other
scripts scores 0. The held-out sets this project evaluates on are English.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Mismatched lists almost always mean predictions were paired with the wrong references, which
    would silently produce a meaningless score; an empty list has no mean."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


@cache
def _scorer() -> Any:
    """One shared scorer, built on first use: ``rouge_score`` imports nltk (about a second), which
    code that only imports this package for ``normalize_answer``/``exact_match`` should not pay."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Rouge-L F-measure of each pair, times 100 (stemmed, so "runs" matches "running").

    Kept per pair so that two methods scored on the same records can be compared pairwise
    (``secfed.bench.stats.paired_bootstrap``), not only by their means.
    """
    _check_pairs(predictions, references)
    scorer = _scorer()
    # rouge_score's argument order is (target, prediction).
    return [
        100.0 * float(scorer.score(ref, pred)["rougeL"].fmeasure)
        for pred, ref in zip(predictions, references, strict=True)
    ]


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean Rouge-L F-measure over the pairs, times 100."""
    scores = rouge_l_scores(predictions, references)
    return sum(scores) / len(scores)


def _is_punctuation(ch: str) -> bool:
    """ASCII punctuation (as SQuAD strips it, symbols such as ``$`` and ``+`` included) plus any
    Unicode punctuation, so typographic quotes and dashes do not make two answers differ."""
    return ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation, drop the articles a/an/the, and collapse
    whitespace. Punctuation is removed before articles, as in the SQuAD script, so "the." goes too."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if not _is_punctuation(ch))
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percentage of predictions equal to their reference after :func:`normalize_answer`."""
    _check_pairs(predictions, references)
    hits = sum(
        normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True)
    )
    return 100.0 * hits / len(predictions)
