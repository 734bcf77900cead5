"""Evaluation of a (LoRA-tuned) model on held-out instructions: greedy generation, Rouge-L / exact
match / checker accuracy, and per-category reports for before/after comparison.

Importing the package does not import transformers or rouge_score/nltk; they load on first use.
"""

from __future__ import annotations

from secfed.eval.generate import generate_answers
from secfed.eval.metrics import exact_match, normalize_answer, rouge_l
from secfed.eval.report import EvalReport, evaluate, format_table

__all__ = [
    "EvalReport",
    "evaluate",
    "exact_match",
    "format_table",
    "generate_answers",
    "normalize_answer",
    "rouge_l",
]
