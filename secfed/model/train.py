"""Local training of the LoRA adapter on one institution's instruction data.

The loss is the mean token loss *per sequence*, then averaged over the batch, rather than the model's
built-in ``labels=`` loss (which averages over every token of the batch, so one sample's weight
depends on the other samples' lengths). Today that only changes the weighting slightly; with DP-SGD
it is what keeps per-sample gradients independent, so the trainer uses it from the start.
Seeded and reproducible: batch order comes from a generator seeded by (seed, round).

Data parallel across the ranks of one institution (``torchrun``, :mod:`secfed.model.distributed`): the
step loop :func:`train_steps` takes a :class:`DataParallel`, which splits each global batch and sums the
gradients over the ranks; :data:`ALONE` is the single process, and :func:`train_local` picks the group
when this process leads one. Every rank draws the same global batches from the same seeded generator and
trains on its own share, scaled by the *global* batch size, so the summed gradient is the one a single
process computes on the whole batch (up to the order of float additions).

:func:`evaluate_loss` measures the same loss, without gradients, on records the institution does not
train on, so an evaluation curve and the training curve are in the same units.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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


class DataParallel(Protocol):
    """How one process takes part in a training step shared by ``world_size`` processes."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def share(self, batch: Sequence[int]) -> list[int]:
        """This rank's part of a global batch (the parts of all ranks make up the batch, in order)."""
        ...

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Replace each ``p.grad`` by its sum over the ranks (a missing gradient counts as zeros)."""
        ...

    def reduce_stats(self, values: Sequence[float]) -> list[float]:
        """The sums over the ranks of per-rank counters; the last exchange of a training run."""
        ...


class _Alone:
    """The single process: the whole batch, and nothing to exchange."""

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def share(self, batch: Sequence[int]) -> list[int]:
        return list(batch)

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        return None

    def reduce_stats(self, values: Sequence[float]) -> list[float]:
        return list(values)


#: Training in one process (no torchrun group).
ALONE: DataParallel = _Alone()


def seed_dropout(seed: int, round_: int, rank: int = 0) -> None:
    """Seed torch's generators (LoRA dropout) from (seed, round); rank 0 draws what a single process
    draws, other ranks their own streams, so two ranks never share a dropout mask."""
    torch.manual_seed(seed * 1_000_003 + round_ + (rank << 32))


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
    """Run ``settings.local_steps`` AdamW steps on batches drawn from ``records`` (with replacement across epochs).

    In rank 0 of a torchrun group (:func:`secfed.model.distributed.leader_group`) every rank of the
    group trains with it, on its share of each batch."""
    if not records:
        raise ValueError("no training records")
    from secfed.model.distributed import leader_group

    group = leader_group()
    if group is not None:
        return group.train(model, tokenizer, records, settings, round_=round_, progress=progress, desc=desc)
    return train_steps(
        model, tokenizer, records, settings, round_=round_, parallel=ALONE, progress=progress, desc=desc
    )


def train_steps(
    model: torch.nn.Module,
    tokenizer: object,
    records: Sequence[Record],
    settings: TrainSettings,
    *,
    round_: int,
    parallel: DataParallel,
    progress: bool,
    desc: str,
) -> TrainStats:
    """The step loop of :func:`train_local`, for this rank's share of every batch of ``parallel``.

    Each micro-batch's loss is this rank's share of the batch mean (its sequences' mean times its share
    of the batch), so the gradients summed by ``parallel`` are the single-process gradient. The
    returned statistics are the group's (summed over the ranks)."""
    examples = _examples(records, tokenizer, settings)
    pad_id = _pad_id(tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (apply LoRA first)")
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng([settings.seed, round_])
    seed_dropout(settings.seed, round_, parallel.rank)
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
            mine = parallel.share(idx)
            if not mine:
                continue  # a batch smaller than the group: this rank's gradient share is zero
            per_sequence, batch_tokens = _sequence_losses(model, [examples[i] for i in mine], pad_id)
            loss = per_sequence.mean() * (len(mine) / len(idx)) / settings.grad_accum
            loss.backward()  # type: ignore[no-untyped-call]
            step_loss += float(loss.detach())
            sequences += len(mine)
            tokens += batch_tokens
        parallel.reduce_gradients(trainable)
        optimizer.step()
        losses.append(step_loss)
        if parallel.world_size == 1:  # a rank's own share of the loss would read as a wrong loss
            bar.set_postfix(loss=f"{step_loss:.3f}")
    model.eval()
    seconds = time.perf_counter() - started
    *losses, total_sequences, total_tokens = parallel.reduce_stats([*losses, sequences, tokens])
    return TrainStats(
        steps=steps,
        sequences=int(total_sequences),
        tokens=int(total_tokens),
        seconds=seconds,
        first_loss=losses[0],
        last_loss=losses[-1],
    )
