"""DP-SGD over the LoRA adapter: per-sample gradients, clipping and noise scaling, Poisson batches, cleanup.

Most tests swap the AdamW that DP-SGD feeds for plain SGD with ``lr=1`` (``_base_optimizer``), so one
step moves the adapter by exactly minus the noised, clipped, averaged gradient and the tests can check
that gradient itself; Adam would normalise away the scaling errors they look for.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from secfed.data.builtin import builtin_splits
from secfed.data.formats import Record
from secfed.data.prompts import TokenizedExample, collate, tokenize_example
from secfed.dp import sgd
from secfed.dp.sgd import DpRoundEvent, DpSettings, per_sample_gradients, train_local_dp
from secfed.model.loading import LoadedModel
from secfed.model.lora import (
    LoraSettings,
    adapter_to_vector,
    apply_lora,
    load_adapter,
    save_adapter,
    vector_to_adapter,
)
from secfed.model.tiny import tiny_llama
from secfed.model.train import TrainSettings, sequence_mean_loss, train_local

MAX_LEN = 128
SETTINGS = TrainSettings(local_steps=1, max_length=MAX_LEN, lr=1e-2, style="chat", seed=3)


@pytest.fixture(scope="module")
def records() -> list[Record]:
    splits, _ = builtin_splits(1, train_per_category=2, test_per_category=1, partition="iid")
    return splits[0]


def _model(seed: int = 0, dropout: float = 0.0) -> tuple[LoadedModel, Any]:
    """A tiny peft model whose adapter is random (peft starts B at 0, making A's gradient 0)."""
    tiny = tiny_llama(seed=seed)
    peft = apply_lora(tiny.model, LoraSettings(dropout=dropout))
    size = adapter_to_vector(peft).shape[0]
    random = np.random.default_rng(seed).normal(0.0, 0.1, size=(size,)).astype(np.float32)
    vector_to_adapter(peft, random)
    return tiny, peft


@pytest.fixture
def sgd_lr1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sgd, "_base_optimizer", lambda params, _settings: torch.optim.SGD(params, lr=1.0))


def _examples(tiny: LoadedModel, records: Sequence[Record]) -> list[TokenizedExample]:
    return [tokenize_example(r, tiny.tokenizer, style="chat", max_length=MAX_LEN) for r in records]


def _trainable(peft: Any) -> list[torch.nn.Parameter]:
    return [p for p in peft.parameters() if p.requires_grad]


def _grads(peft: Any) -> torch.Tensor:
    grads = [p.grad for p in _trainable(peft)]
    assert all(g is not None for g in grads)
    return torch.cat([g.reshape(-1) for g in grads if g is not None])


def _one_step_delta(peft: Any, tiny: LoadedModel, records: Sequence[Record], dp: DpSettings) -> torch.Tensor:
    """Adapter change of one DP step with SGD(lr=1), i.e. minus the gradient the optimizer received."""
    before = torch.cat([p.detach().reshape(-1).clone() for p in _trainable(peft)])
    train_local_dp(peft, tiny.tokenizer, records, SETTINGS, dp, progress=False, noise_seed=0)
    return torch.cat([p.detach().reshape(-1) for p in _trainable(peft)]) - before


def _clip(rows: torch.Tensor, c: float) -> torch.Tensor:
    """Opacus's flat clipping: each row scaled by min(1, C / (norm + 1e-6))."""
    factor: torch.Tensor = (c / (rows.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    return rows * factor


def _opacus_leftovers(peft: Any) -> list[str]:
    found = [
        n for n, m in peft.named_modules() if {"autograd_grad_sample_hooks", "activations"} & set(vars(m))
    ]
    attrs = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")
    found += [n for n, p in peft.named_parameters() if any(hasattr(p, a) for a in attrs)]
    return found


def _hook_count(peft: Any) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in peft.modules())


def test_per_sample_gradients_equal_one_example_at_a_time(records: list[Record]) -> None:
    tiny, peft = _model()
    examples = _examples(tiny, records[:4])
    assert len({len(e.input_ids) for e in examples}) > 1  # the batch really is padded
    batched = per_sample_gradients(peft, examples, tiny.tokenizer.pad_token_id)
    assert batched.shape == (4, sum(p.numel() for p in _trainable(peft)))
    peft.train()
    for i, example in enumerate(examples):
        peft.zero_grad(set_to_none=True)
        batch = collate([example], tiny.tokenizer.pad_token_id)
        out = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        sequence_mean_loss(out.logits, batch["labels"])[0].backward()  # type: ignore[no-untyped-call]
        alone = _grads(peft)
        assert float(alone.norm()) > 0
        torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-6)
    assert not _opacus_leftovers(peft)


@pytest.mark.parametrize("clipping", ["active", "inactive"])
def test_clipped_gradient_of_one_sample_ignores_its_partners_length(
    records: list[Record], sgd_lr1: None, clipping: str
) -> None:
    """Through the whole DP step (one physical batch of 2 vs. alone): clip(g_a) is the same whoever
    shares its batch, even a partner of very different length. With sample rate 1 every record is in
    the batch, so one step's delta is -(sum of clipped gradients) / n exactly. Active clipping hides
    any rescaling of g_a (only its direction survives), so the unclipped case checks the scale."""
    a, b = records[0], records[1]
    b_long = Record(b.instruction, b.context, b.response + " and more" * 6, b.category)
    tiny, peft = _model()
    start = adapter_to_vector(peft)
    norms = per_sample_gradients(peft, _examples(tiny, [a, b, b_long]), tiny.tokenizer.pad_token_id).norm(
        dim=1
    )
    clip = 0.5 * float(norms.min()) if clipping == "active" else 4 * float(norms.max())
    dp = DpSettings(noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=2, max_physical_batch=2)

    def delta(batch: list[Record]) -> torch.Tensor:
        vector_to_adapter(peft, start)
        return _one_step_delta(peft, tiny, batch, dp)

    clipped_a = -delta([a])
    with_b = -2 * delta([a, b]) - (-delta([b]))
    with_long_b = -2 * delta([a, b_long]) - (-delta([b_long]))
    assert len(_examples(tiny, [b_long])[0].input_ids) > len(_examples(tiny, [b])[0].input_ids)
    if clipping == "active":
        torch.testing.assert_close(float(clipped_a.norm()), clip, rtol=1e-4, atol=0)
    else:
        torch.testing.assert_close(float(clipped_a.norm()), float(norms[0]), rtol=1e-4, atol=0)
    torch.testing.assert_close(with_b, clipped_a, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(with_long_b, clipped_a, rtol=1e-3, atol=1e-6)


def test_virtual_batches_scale_like_one_batch_of_clipped_gradients(
    records: list[Record], sgd_lr1: None
) -> None:
    """The mean/virtual-step scaling: any physical split gives -sum(clip(g_i)) / (q n) for the batch."""
    chosen = records[:5]
    tiny, peft = _model()
    start = adapter_to_vector(peft)
    rows = per_sample_gradients(peft, _examples(tiny, chosen), tiny.tokenizer.pad_token_id)
    clip = float(rows.norm(dim=1).median())  # some samples clipped, some not
    expected = -_clip(rows, clip).sum(dim=0) / 5
    for physical in (1, 2, 5):
        vector_to_adapter(peft, start)
        dp = DpSettings(0.0, clip, expected_batch_size=5, max_physical_batch=physical)
        torch.testing.assert_close(_one_step_delta(peft, tiny, chosen, dp), expected, rtol=1e-3, atol=1e-6)


def test_without_noise_or_clipping_the_step_is_the_per_sequence_loss_gradient(
    records: list[Record], sgd_lr1: None
) -> None:
    chosen = records[:5]
    tiny, peft = _model()
    start = adapter_to_vector(peft)
    dp = DpSettings(noise_multiplier=0.0, max_grad_norm=1e6, expected_batch_size=5, max_physical_batch=2)
    delta = _one_step_delta(peft, tiny, chosen, dp)
    vector_to_adapter(peft, start)
    peft.train()
    peft.zero_grad(set_to_none=True)
    batch = collate(_examples(tiny, chosen), tiny.tokenizer.pad_token_id)
    out = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    sequence_mean_loss(out.logits, batch["labels"]).mean().backward()  # type: ignore[no-untyped-call]
    plain = _grads(peft)
    torch.testing.assert_close(delta, -plain, rtol=1e-3, atol=1e-6)


def test_recorded_sample_rate_is_the_loaders_not_b_over_n(records: list[Record]) -> None:
    from opacus.data_loader import DPDataLoader

    tiny, peft = _model()
    chosen = records[:10]
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
    settings = TrainSettings(local_steps=3, max_length=MAX_LEN, style="chat")
    stats, event = train_local_dp(peft, tiny.tokenizer, chosen, settings, dp, progress=False)
    opacus_rate = DPDataLoader.from_data_loader(
        DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    ).sample_rate
    assert event.sample_rate == opacus_rate == dp.sample_rate(10) == 1 / 3 != 4 / 10
    assert event == DpRoundEvent(1.0, 1 / 3, 3, 1.0, 4, 10, event.empty_batches)
    assert stats.steps == 3 and stats.sequences > 0 and stats.tokens > 0
    # epochs count Poisson steps of the DP batch size: 1 epoch of 10 records at B=4 is 3 steps
    _, by_epoch = train_local_dp(
        peft,
        tiny.tokenizer,
        chosen,
        TrainSettings(epochs=1.0, batch_size=1, max_length=MAX_LEN),
        dp,
        progress=False,
    )
    assert by_epoch.steps == 3


def _find_empty_round(peft: Any, tiny: LoadedModel, chosen: list[Record], dp: DpSettings) -> Iterator[int]:
    """Settings seeds whose single Poisson batch (q = 1/3 over 3 records) comes out empty."""
    for seed in range(60):
        settings = TrainSettings(local_steps=1, max_length=MAX_LEN, style="chat", seed=seed)
        stats, event = train_local_dp(peft, tiny.tokenizer, chosen, settings, dp, progress=False)
        if event.empty_batches:
            assert stats.sequences == 0 and event.steps == 1
            yield seed


def test_empty_poisson_batch_still_takes_the_noised_step(records: list[Record], sgd_lr1: None) -> None:
    chosen = records[:3]
    tiny, peft = _model()
    sigma, clip = 2.0, 0.5
    dp = DpSettings(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=1)
    seed = next(_find_empty_round(peft, tiny, chosen, dp))
    settings = TrainSettings(local_steps=1, max_length=MAX_LEN, style="chat", seed=seed)

    before = adapter_to_vector(peft)
    stats, event = train_local_dp(peft, tiny.tokenizer, chosen, settings, dp, progress=False)
    moved = adapter_to_vector(peft) - before
    assert event.empty_batches == 1 and event.steps == 1 and stats.sequences == 0
    assert np.isnan(stats.first_loss)
    # noise only: N(0, (sigma C)^2) per coordinate, divided by the expected batch size q n = 1
    assert np.count_nonzero(moved) == moved.size
    assert abs(float(moved.std()) / (sigma * clip) - 1) < 0.1
    assert abs(float(moved.mean())) < 5 * sigma * clip / np.sqrt(moved.size)

    no_noise = DpSettings(noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1)
    before = adapter_to_vector(peft)
    _, event = train_local_dp(peft, tiny.tokenizer, chosen, settings, no_noise, progress=False)
    assert event.empty_batches == 1 and event.steps == 1
    np.testing.assert_array_equal(adapter_to_vector(peft), before)


def test_frozen_weights_unchanged_and_saved_adapter_reproduces_logits(
    records: list[Record], tmp_path: Path
) -> None:
    tiny, peft = _model(seed=4, dropout=0.05)
    frozen = {n: p.detach().clone() for n, p in peft.named_parameters() if not p.requires_grad}
    start = adapter_to_vector(peft)
    dp = DpSettings(noise_multiplier=0.8, max_grad_norm=1.0, expected_batch_size=4, max_physical_batch=2)
    train_local_dp(
        peft,
        tiny.tokenizer,
        records,
        TrainSettings(local_steps=3, max_length=MAX_LEN, style="chat"),
        dp,
        progress=False,
    )
    assert not np.array_equal(adapter_to_vector(peft), start)
    for name, p in peft.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name
    assert not peft.training

    batch = collate(_examples(tiny, records[:3]), tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_adapter(peft, tmp_path / "adapter", base_hash=tiny.base_hash)
    fresh = tiny_llama(seed=4)
    reloaded = load_adapter(fresh, tmp_path / "adapter")
    np.testing.assert_array_equal(adapter_to_vector(reloaded), adapter_to_vector(peft))
    with torch.no_grad():
        again = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(again, logits, rtol=0, atol=1e-6)


def test_a_moved_frozen_weight_is_refused(records: list[Record], monkeypatch: pytest.MonkeyPatch) -> None:
    tiny, peft = _model()
    frozen = next(p for n, p in peft.named_parameters() if "embed_tokens" in n)

    class Tampering(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            with torch.no_grad():
                frozen[0, 0] += 1.0
            return super().step(closure)

    monkeypatch.setattr(sgd, "_base_optimizer", lambda params, _settings: Tampering(params, lr=0.1))
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
    with pytest.raises(RuntimeError, match="frozen"):
        train_local_dp(peft, tiny.tokenizer, records, SETTINGS, dp, progress=False)
    assert not _opacus_leftovers(peft)


def test_trains_again_and_without_dp_afterwards(records: list[Record]) -> None:
    tiny, peft = _model(dropout=0.05)
    hooks_before = _hook_count(peft)
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, max_physical_batch=3)
    settings = TrainSettings(local_steps=2, max_length=MAX_LEN, style="chat")
    vectors = [adapter_to_vector(peft)]
    for round_ in (0, 1):
        stats, event = train_local_dp(
            peft, tiny.tokenizer, records, settings, dp, round_=round_, progress=False
        )
        assert event.steps == 2 and stats.steps == 2
        assert not _opacus_leftovers(peft) and _hook_count(peft) == hooks_before
        assert all(p.grad is None for p in peft.parameters())
        vectors.append(adapter_to_vector(peft))
    stats = train_local(
        peft,
        tiny.tokenizer,
        records,
        TrainSettings(local_steps=2, batch_size=3, max_length=MAX_LEN),
        progress=False,
    )
    vectors.append(adapter_to_vector(peft))
    assert stats.steps == 2 and np.isfinite(stats.last_loss)
    assert all(not np.array_equal(x, y) for x, y in itertools.pairwise(vectors))


def test_sampling_is_seeded_and_noise_is_not_unless_asked(records: list[Record]) -> None:
    tiny, peft = _model()
    start = adapter_to_vector(peft)
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=3)

    def run(noise_seed: int | None) -> tuple[np.ndarray[Any, Any], int]:
        vector_to_adapter(peft, start)
        stats, _ = train_local_dp(
            peft, tiny.tokenizer, records, SETTINGS, dp, progress=False, noise_seed=noise_seed
        )
        return adapter_to_vector(peft), stats.tokens

    (x1, t1), (x2, t2), (y1, u1), (y2, u2) = run(7), run(7), run(None), run(None)
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(y1, y2)  # fresh OS entropy for the noise on every call
    assert t1 == t2 == u1 == u2  # same Poisson batch: sampling follows (seed, round) only


def test_invalid_inputs_are_refused(records: list[Record]) -> None:
    for bad in (
        {"noise_multiplier": -1.0},
        {"noise_multiplier": float("nan")},
        {"max_grad_norm": 0.0},
        {"max_grad_norm": float("inf")},
        {"expected_batch_size": 0},
        {"max_physical_batch": 0},
        {"expected_batch_size": 2.5},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            kwargs: dict[str, Any] = {
                "noise_multiplier": 1.0,
                "max_grad_norm": 1.0,
                "expected_batch_size": 4,
                **bad,
            }
            DpSettings(**kwargs)
    dp = DpSettings(1.0, 1.0, 4)
    with pytest.raises(ValueError, match="n_records"):
        dp.sample_rate(0)
    tiny, peft = _model()
    with pytest.raises(ValueError, match="no training records"):
        train_local_dp(peft, tiny.tokenizer, [], SETTINGS, dp, progress=False)
    bare = tiny_llama(seed=1)
    bare.model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train_local_dp(bare.model, bare.tokenizer, records, SETTINGS, dp, progress=False)
