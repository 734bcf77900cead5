"""Instruction data for federated tuning: loading, prompting, partitioning, and a built-in dataset.

Kept free of model code so an institution can validate its data (and a simulation can split data)
without loading a model. :mod:`secfed.data.prompts` needs torch, so it is not imported here: import
it by name where prompts are built (importing this package must stay cheap, every CLI command does).
"""

from __future__ import annotations

from secfed.data.builtin import CATEGORIES, builtin_splits, check_answer, generate
from secfed.data.formats import DataFormatError, Record, load_records, records_from_dataset
from secfed.data.partition import category_shards, dirichlet, hold_out_category, iid

__all__ = [
    "CATEGORIES",
    "DataFormatError",
    "Record",
    "builtin_splits",
    "category_shards",
    "check_answer",
    "dirichlet",
    "generate",
    "hold_out_category",
    "iid",
    "load_records",
    "records_from_dataset",
]
