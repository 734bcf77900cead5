"""The local trainer: per-sequence loss, reproducibility, epochs, and that it actually learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secfed.data.builtin import builtin_splits
from secfed.data.prompts import collate, tokenize_example
from secfed.model.lora import LoraSettings, adapter_to_vector, apply_lora
from secfed.model.tiny import tiny_llama
from secfed.model.train import TrainSettings, sequence_mean_loss, train_local


def test_sequence_loss_of_one_sample_ignores_the_others_lengths() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, 3, 4, 5, -100, -100], [-100, -100, 1, 2, 3, 4]])
    alone = sequence_mean_loss(logits[:1], labels[:1])
    longer_partner = labels.clone()
    longer_partner[1, 1] = 7  # the other sample gains a response token
    both = sequence_mean_loss(logits, longer_partner)
    assert torch.equal(both[0], alone[0])


def _records() -> list:  # type: ignore[type-arg]
    splits, _ = builtin_splits(1, train_per_category=4, test_per_category=1, partition="iid")
    return splits[0]


def test_training_is_reproducible_and_lowers_the_loss() -> None:
    records = _records()
    settings = TrainSettings(local_steps=6, batch_size=4, max_length=64, lr=1e-2, style="chat", seed=5)
    vectors = []
    for _ in range(2):
        tiny = tiny_llama(seed=2)
        torch.manual_seed(0)  # LoRA's A matrices are drawn at wrap time
        peft = apply_lora(tiny.model, LoraSettings())
        stats = train_local(peft, tiny.tokenizer, records, settings, round_=1, progress=False)
        vectors.append(adapter_to_vector(peft))
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert stats.last_loss < stats.first_loss
    assert stats.steps == 6 and stats.sequences == 24 and stats.tokens > 0


def test_epochs_set_the_number_of_steps() -> None:
    records = _records()
    tiny = tiny_llama(seed=2)
    peft = apply_lora(tiny.model, LoraSettings())
    settings = TrainSettings(epochs=1.0, batch_size=4, max_length=64)
    stats = train_local(peft, tiny.tokenizer, records, settings, progress=False)
    assert stats.steps == -(-len(records) // 4)
    with pytest.raises(ValueError, match="epochs"):
        TrainSettings(epochs=0)


def test_fewer_records_than_a_batch_are_not_padded_with_copies() -> None:
    """One record at batch 4: each step sees it once (not four copies), and epochs count passes."""
    one = _records()[:1]
    settings = TrainSettings(epochs=2.0, batch_size=4, max_length=64)
    assert settings.batch_for(1) == 1 and settings.batch_for(3) == 3 and settings.batch_for(9) == 4
    tiny = tiny_llama(seed=2)
    peft = apply_lora(tiny.model, LoraSettings())
    stats = train_local(peft, tiny.tokenizer, one, settings, progress=False)
    assert (stats.steps, stats.sequences) == (2, 2)
    three = _records()[:3]
    stats = train_local(
        peft, tiny.tokenizer, three, TrainSettings(epochs=1.0, batch_size=4, max_length=64), progress=False
    )
    assert (stats.steps, stats.sequences) == (1, 3)


def test_a_batch_of_copies_has_the_gradient_of_the_record_alone() -> None:
    """Why capping the batch loses nothing: the loss is a per-sequence mean, so a batch of four
    copies of one record has that record's gradient (up to float rounding)."""
    tiny = tiny_llama(seed=2)
    torch.manual_seed(0)
    peft = apply_lora(tiny.model, LoraSettings())
    example = tokenize_example(_records()[0], tiny.tokenizer, style="chat", max_length=64)
    trainable = [p for p in peft.parameters() if p.requires_grad]
    grads = []
    for copies in (1, 4):
        batch = collate([example] * copies, 0)
        out = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = sequence_mean_loss(out.logits, batch["labels"]).mean()
        grads.append(torch.autograd.grad(loss, trainable))
    for alone, copied in zip(*grads, strict=True):
        torch.testing.assert_close(copied, alone, rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().max()) > 0 for g in grads[0])
