"""Instruction data for federated tuning: loading, prompting, partitioning, and a built-in dataset.

Kept free of model code so an institution can validate its data (and a simulation can split data)
without loading a model; only :mod:`secfed.data.prompts` needs torch.
"""

from __future__ import annotations

from secfed.data.builtin import CATEGORIES, builtin_splits, check_answer, generate
from secfed.data.formats import DataFormatError, Record, load_records, records_from_dataset
from secfed.data.partition import category_shards, dirichlet, hold_out_category, iid
from secfed.data.prompts import (
    ALPACA_TEMPLATE,
    PromptStyle,
    TokenizedExample,
    build_prompt,
    collate,
    tokenize_example,
)

__all__ = [
    "ALPACA_TEMPLATE",
    "CATEGORIES",
    "DataFormatError",
    "PromptStyle",
    "Record",
    "TokenizedExample",
    "build_prompt",
    "builtin_splits",
    "category_shards",
    "check_answer",
    "collate",
    "dirichlet",
    "generate",
    "hold_out_category",
    "iid",
    "load_records",
    "records_from_dataset",
    "tokenize_example",
]
