"""Before/after evaluation of a training preset on held-out instructions.

Runs in the harness process, never in the federation: the coordinator sees no evaluation data. The
base model is scored first (which also converts and caches it once, before any child process needs
it), then the exported global adapter on the same prompts, so the table compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secfed.eval.report import EvalReport

if TYPE_CHECKING:
    from secfed.data.formats import Record


def _score(
    model_source: str,
    records: Sequence[Record],
    *,
    adapter_dir: Path | None,
    style: str,
    max_new_tokens: int,
    checker: Callable[[int, str], bool] | None,
    progress: bool,
) -> EvalReport:
    from secfed.data.prompts import build_prompt
    from secfed.eval.report import evaluate
    from secfed.model.loading import load_base_model
    from secfed.model.lora import load_adapter

    base = load_base_model(model_source)
    model = base.model if adapter_dir is None else load_adapter(base, adapter_dir)
    prompts = [build_prompt(r, base.tokenizer, style) for r in records]  # type: ignore[arg-type]
    return evaluate(
        model,
        base.tokenizer,
        prompts,
        [r.response for r in records],
        [r.category for r in records],
        checker=checker,
        max_new_tokens=max_new_tokens,
        batch_size=8,
        progress=progress,
    )


def evaluate_builtin(
    model_source: str,
    client_options: Mapping[str, Any],
    n_clients: int,
    *,
    adapter_dir: Path | None = None,
    style: str = "chat",
    max_new_tokens: int = 24,
    progress: bool = True,
) -> EvalReport:
    """Score the base model (or base + ``adapter_dir``) on the test split of the built-in data,
    with Rouge-L and the built-in answer checker."""
    from secfed.data.builtin import builtin_splits, check_answer

    _, test = builtin_splits(
        n_clients,
        train_per_category=int(client_options.get("train_per_category", 40)),
        test_per_category=int(client_options.get("test_per_category", 10)),
        seed=int(client_options.get("data_seed", 0)),
        partition=client_options.get("partition", "category"),
    )
    return _score(
        model_source,
        test,
        adapter_dir=adapter_dir,
        style=style,
        max_new_tokens=max_new_tokens,
        checker=lambda i, prediction: check_answer(test[i], prediction),
        progress=progress,
    )


def evaluate_file(
    model_source: str,
    path: Path,
    *,
    adapter_dir: Path | None = None,
    style: str = "chat",
    max_new_tokens: int = 64,
    max_records: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Score on a Dolly/Alpaca JSON or JSONL file: Rouge-L against its responses, per category."""
    from secfed.data.formats import load_records

    return _score(
        model_source,
        load_records(path, max_records=max_records),
        adapter_dir=adapter_dir,
        style=style,
        max_new_tokens=max_new_tokens,
        checker=None,
        progress=progress,
    )
