"""Local training of the LoRA adapter on one institution's instruction data.

The loss is the mean token loss *per sequence*, then averaged over the batch, rather than the model's
built-in ``labels=`` loss (which averages over every token of the batch, so one sample's weight
depends on the other samples' lengths). Today that only changes the weighting slightly; with DP-SGD
it is what keeps per-sample gradients independent, so the trainer uses it from the start.
Seeded and reproducible: batch order comes from a generator seeded by (seed, round).

:func:`evaluate_loss` measures the same loss, without gradients, on records the institution does not
train on, so an evaluation curve and the training curve are in the same units.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from secfed import cancel
from secfed.data.formats import Record
from secfed.data.prompts import TokenizedExample, collate, tokenize_example
from secfed.model.settings import TrainSettings as TrainSettings


@dataclass(frozen=True)
class TrainStats:
    steps: int
    sequences: int
    tokens: int
    seconds: float
    first_loss: float
    last_loss: float
    # The loss of the adapter the round started from on the institution's held-out records, measured
    # before training (:func:`evaluate_loss`); None when the round asked for no evaluation.
    eval_loss: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def sequence_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token loss over response tokens, shape ``(batch,)``."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view_as(shift_labels)
    counts = mask.sum(dim=1).clamp(min=1)
    return (token_loss * mask).sum(dim=1) / counts


def _examples(
    records: Sequence[Record], tokenizer: object, settings: TrainSettings
) -> list[TokenizedExample]:
    """The records in the prompt format and length the federation trains with."""
    return [
        tokenize_example(r, tokenizer, style=settings.style, max_length=settings.max_length) for r in records
    ]


def _pad_id(tokenizer: object) -> int:
    """The tokenizer's padding id (0 when it has none: padded positions are masked out anyway)."""
    return int(getattr(tokenizer, "pad_token_id", 0) or 0)


def _sequence_losses(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], pad_id: int
) -> tuple[torch.Tensor, int]:
    """One forward pass over ``examples`` on the model's device: per-sequence losses and tokens seen.

    Only the losses leave this function, so the logits are freed before the next forward pass (the
    autograd graph keeps what a backward pass needs)."""
    device = next(p for p in model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sequence_mean_loss(out.logits, batch["labels"]), int(batch["attention_mask"].sum())


def evaluate_loss(
    model: torch.nn.Module, tokenizer: object, records: Sequence[Record], settings: TrainSettings
) -> float:
    """The mean over ``records`` of the loss training minimises (:func:`sequence_mean_loss`), with no
    gradient and dropout off, in batches of ``settings.batch_size``; the model's mode is restored.

    Same tokenisation, prompt style and truncation as :func:`train_local`, so the number is comparable
    with the training loss of the round."""
    if not records:
        raise ValueError("no records to evaluate on")
    examples = _examples(records, tokenizer, settings)
    pad_id = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), settings.batch_size):
                cancel.check()
                per_sequence, _tokens = _sequence_losses(
                    model, examples[start : start + settings.batch_size], pad_id
                )
                total += float(per_sequence.sum())
    finally:
        model.train(was_training)
    return total / len(examples)


def train_local(
    model: torch.nn.Module,
    tokenizer: object,
    records: Sequence[Record],
    settings: TrainSettings,
    *,
    round_: int = 0,
    progress: bool = True,
    desc: str = "local training",
) -> TrainStats:
    """Run ``settings.local_steps`` AdamW steps on batches drawn from ``records`` (with replacement across epochs)."""
    if not records:
        raise ValueError("no training records")
    examples = _examples(records, tokenizer, settings)
    pad_id = _pad_id(tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (apply LoRA first)")
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng([settings.seed, round_])
    torch.manual_seed(settings.seed * 1_000_003 + round_)
    order = rng.permutation(len(examples))
    cursor = 0
    losses: list[float] = []
    sequences = tokens = 0
    model.train()
    started = time.perf_counter()
    steps = settings.steps_for(len(examples))
    batch_size = settings.batch_for(len(examples))
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, file=sys.stderr)
    for _ in bar:
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _micro in range(settings.grad_accum):
            cancel.check()
            idx = []
            for _k in range(batch_size):
                if cursor == len(order):
                    order, cursor = rng.permutation(len(examples)), 0
                idx.append(int(order[cursor]))
                cursor += 1
            per_sequence, batch_tokens = _sequence_losses(model, [examples[i] for i in idx], pad_id)
            loss = per_sequence.mean() / settings.grad_accum
            loss.backward()  # type: ignore[no-untyped-call]
            step_loss += float(loss.detach())
            sequences += len(idx)
            tokens += batch_tokens
        optimizer.step()
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.3f}")
    model.eval()
    return TrainStats(
        steps=steps,
        sequences=sequences,
        tokens=tokens,
        seconds=time.perf_counter() - started,
        first_loss=losses[0],
        last_loss=losses[-1],
    )
