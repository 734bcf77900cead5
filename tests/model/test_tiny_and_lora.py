"""The tiny test model and LoRA adapter handling: trainability, vector layout, save/load fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from secfed.model.lora import (
    ADAPTER_META,
    AdapterError,
    LoraSettings,
    adapter_size,
    adapter_state,
    adapter_to_vector,
    apply_lora,
    load_adapter,
    save_adapter,
    vector_to_adapter,
)
from secfed.model.tiny import tiny_llama

torch.set_num_threads(2)

# lora.py filters this third-party deprecation warning at import, but pytest resets filters after collection.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

TEXTS = ["plain ascii", "héllo wörld", "日本語テキスト 🚀", "tabs\tand\nnewlines  and  spaces", "\x00\x7f"]


def _batch(seed: int = 0, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=generator)


def _train(peft_model, steps: int = 3) -> None:
    peft_model.train()
    optimizer = torch.optim.AdamW(peft_model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        ids = _batch(step)
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def _trained_adapter(seed: int = 0):
    base = tiny_llama(seed)
    torch.manual_seed(123)
    peft_model = apply_lora(base.model, LoraSettings(r=4, alpha=8))
    _train(peft_model)
    return base, peft_model


def _logits(model, ids: torch.Tensor):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------ tiny model


def test_tiny_forward_shapes_and_eval_mode():
    loaded = tiny_llama(0)
    assert not loaded.model.training
    logits = _logits(loaded.model, _batch())
    assert logits.shape == (2, 12, loaded.model.config.vocab_size)
    assert torch.isfinite(logits).all()
    assert len(loaded.base_hash) == 64


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    rng_before = torch.get_rng_state()
    first, again, other = tiny_llama(0), tiny_llama(0), tiny_llama(1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert first.base_hash == again.base_hash
    assert first.base_hash != other.base_hash
    ids = _batch()
    assert torch.equal(_logits(first.model, ids), _logits(again.model, ids))


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trips_text(text):
    tokenizer = tiny_llama(0).tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_tokenizer_specials_and_left_padding():
    tokenizer = tiny_llama(0).tokenizer
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|pad|>", "<|im_end|>")
    assert (
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.eos_token_id,
    ) == (
        256,
        257,
        258,
    )
    batch: Any = tokenizer(["a", "abc"], padding=True)
    assert batch["input_ids"][0] == [256, 256, ord("a")]
    assert batch["attention_mask"][0] == [0, 0, 1]


def test_chat_template_renders_chatml():
    tokenizer = tiny_llama(0).tokenizer
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\n"
    )
    encoded: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = list(encoded["input_ids"])
    assert ids[0] == 257 and ids.count(258) == 2
    assert tokenizer.decode(ids) == text


def test_tiny_generates_with_chat_prompt():
    loaded = tiny_llama(0)
    model: Any = loaded.model
    encoded: Any = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**encoded, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= encoded["input_ids"].shape[1] + 4


# ------------------------------------------------------------------------------ LoRA


def test_only_adapter_parameters_are_trainable():
    base = tiny_llama(0)
    peft_model = apply_lora(base.model, LoraSettings())
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert not peft_model.training  # the base's eval mode is kept
    # 2 layers x (q: 64x8 + 8x64, v with GQA: 64x8 + 8x32)
    assert adapter_size(peft_model) == 2 * ((64 * 8 + 8 * 64) + (64 * 8 + 8 * 32))
    assert list(adapter_state(peft_model)) == sorted(adapter_state(peft_model))


def test_apply_lora_twice_is_refused():
    base = tiny_llama(0)
    peft_model = apply_lora(base.model, LoraSettings())
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(base.model, LoraSettings())
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(peft_model, LoraSettings())  # type: ignore[arg-type]


def test_lora_settings_validation_and_list_coercion():
    assert LoraSettings(target_modules=["q_proj"]).target_modules == ("q_proj",)  # type: ignore[arg-type]
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": ()}):
        with pytest.raises(ValueError):
            LoraSettings(**bad)


def test_training_changes_adapter_but_base_stays_bit_identical():
    base = tiny_llama(0)
    peft_model = apply_lora(base.model, LoraSettings(r=4, alpha=8))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    vector_before = adapter_to_vector(peft_model)
    _train(peft_model, steps=3)
    after = {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" not in n}
    assert before.keys() == after.keys() and before
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    assert not np.array_equal(adapter_to_vector(peft_model), vector_before)


def test_vector_round_trip_is_exact_and_in_place():
    _, peft_model = _trained_adapter()
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    vector = adapter_to_vector(peft_model)
    assert vector.dtype == np.float32 and vector.shape == (adapter_size(peft_model),)
    replacement = np.random.default_rng(0).standard_normal(vector.shape).astype(np.float32)
    vector_to_adapter(peft_model, replacement)
    assert np.array_equal(adapter_to_vector(peft_model), replacement)
    # The same Parameter objects now hold the new values (an optimizer over them stays valid).
    assert {n: p for n, p in peft_model.named_parameters() if p.requires_grad} == params
    vector_to_adapter(peft_model, vector)
    assert np.array_equal(adapter_to_vector(peft_model), vector)
    # adapter_to_vector returns a copy, not a view of the parameters.
    copy = adapter_to_vector(peft_model)
    copy[:] = 0
    assert np.array_equal(adapter_to_vector(peft_model), vector)


def test_vector_to_adapter_rejects_bad_vectors():
    _, peft_model = _trained_adapter()
    size = adapter_size(peft_model)
    original = adapter_to_vector(peft_model)
    with pytest.raises(ValueError, match=f"has {size - 1} values but this adapter has {size}"):
        vector_to_adapter(peft_model, np.zeros(size - 1, dtype=np.float32))
    with pytest.raises(ValueError, match="has"):
        vector_to_adapter(peft_model, np.zeros(size + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        vector_to_adapter(peft_model, np.zeros((1, size), dtype=np.float32))
    bad = np.zeros(size, dtype=np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vector_to_adapter(peft_model, bad)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        vector_to_adapter(peft_model, bad)
    assert np.array_equal(adapter_to_vector(peft_model), original)  # nothing was half-applied


def test_save_then_load_reproduces_logits_exactly(tmp_path: Path):
    base, peft_model = _trained_adapter()
    ids = _batch(99)
    expected = _logits(peft_model, ids)
    assert not torch.equal(expected, _logits(tiny_llama(0).model, ids))  # the adapter does something
    save_adapter(peft_model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / ADAPTER_META).read_text())
    assert meta["base_hash"] == base.base_hash
    assert meta["settings"] == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
    assert meta["size"] == adapter_size(peft_model)

    from peft import PeftModel

    plain = PeftModel.from_pretrained(tiny_llama(0).model, str(tmp_path / "adapter"))
    assert torch.equal(_logits(plain, ids), expected)

    loaded = load_adapter(tiny_llama(0), tmp_path / "adapter")
    assert torch.equal(_logits(loaded, ids), expected)
    assert np.array_equal(adapter_to_vector(loaded), adapter_to_vector(peft_model))
    # A loaded adapter can be saved again (its base hash is known).
    save_adapter(loaded, tmp_path / "again")
    again = json.loads((tmp_path / "again" / ADAPTER_META).read_text())
    assert again["vector_sha256"] == meta["vector_sha256"]


def test_load_adapter_refuses_other_base_and_leaves_it_untouched(tmp_path: Path):
    _, peft_model = _trained_adapter(seed=0)
    save_adapter(peft_model, tmp_path / "adapter")
    other = tiny_llama(1)
    with pytest.raises(AdapterError, match="trained on base model"):
        load_adapter(other, tmp_path / "adapter")
    assert not any("lora_" in name for name, _ in other.model.named_parameters())


def test_load_adapter_refuses_tampered_or_unmarked_adapter(tmp_path: Path):
    _, peft_model = _trained_adapter()
    save_adapter(peft_model, tmp_path / "adapter")
    meta_path = tmp_path / "adapter" / ADAPTER_META
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "vector_sha256": "0" * 64}))
    with pytest.raises(AdapterError, match="altered or corrupted"):
        load_adapter(tiny_llama(0), tmp_path / "adapter")
    meta_path.unlink()
    with pytest.raises(AdapterError, match=ADAPTER_META):
        load_adapter(tiny_llama(0), tmp_path / "adapter")


def test_save_adapter_needs_a_known_base_hash(tmp_path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    peft_model = apply_lora(LlamaForCausalLM(config), LoraSettings())
    with pytest.raises(ValueError, match="base_hash"):
        save_adapter(peft_model, tmp_path / "a")
    save_adapter(peft_model, tmp_path / "b", base_hash="ab" * 32)
    assert json.loads((tmp_path / "b" / ADAPTER_META).read_text())["base_hash"] == "ab" * 32
