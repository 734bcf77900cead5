"""Batched greedy generation against a tiny random Llama and an offline byte-level tokenizer.

The model's output layer gets a bias that forbids every token except lowercase ASCII letters, so each
new token decodes to exactly one character: strings then compare exactly (random byte tokens would
decode to lossy replacement characters) and an answer's length is its token count.
"""

from __future__ import annotations

import string

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from secfed.eval.generate import generate_answers

PROMPTS = [
    "short",
    "a considerably longer prompt, with punctuation and several words in it",
    "x",
    "medium sized prompt",
    "another one of middling length",
]


def make_tokenizer(*, pad: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges (one token per byte), plus <pad>, <eos> and a <bos> that the
    post-processor prepends when special tokens are requested, so the tests notice if it is."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    kwargs = {"pad_token": "<pad>"} if pad else {}
    # transformers 5 leaves this constructor unannotated.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", **kwargs
    )


def letter_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in string.ascii_lowercase]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    m = LlamaForCausalLM(config)
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.fill_(-1e4)
        head.bias[letter_ids(tokenizer)] = 0.0
    m.lm_head = head
    return m


def one_by_one(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    return [
        generate_answers(model, tokenizer, [p], max_new_tokens=max_new_tokens, batch_size=1, progress=False)[
            0
        ]
        for p in prompts
    ]


def test_batched_equals_one_at_a_time_in_original_order(model, tokenizer) -> None:
    singles = one_by_one(model, tokenizer, PROMPTS, 8)
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=4, progress=False)
    assert batched == singles
    # Not a degenerate model that answers everything the same way (which would hide a reordering).
    assert len(set(singles)) > 1


def test_matches_raw_generate_without_special_tokens(model, tokenizer) -> None:
    """The answer is exactly the decoded new tokens of an unpadded, BOS-free generate call."""
    prompt = PROMPTS[1]
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    got = generate_answers(model, tokenizer, [PROMPTS[0], prompt], max_new_tokens=6, progress=False)
    assert got[1] == expected


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_max_new_tokens_respected(model, tokenizer, max_new_tokens: int) -> None:
    answers = generate_answers(
        model, tokenizer, PROMPTS, max_new_tokens=max_new_tokens, batch_size=3, progress=False
    )
    # Only letters can be generated and EOS cannot, so every answer is exactly that many characters.
    assert [len(a) for a in answers] == [max_new_tokens] * len(PROMPTS)
    assert all(a.isalpha() and a.islower() for a in answers)


def test_stops_at_generation_config_eos(model, tokenizer) -> None:
    """A stop token known only to the generation config (like a chat end-of-turn) ends the answer, is
    not part of it, and rows that stop early in a batch still match their one-at-a-time answers."""
    free = one_by_one(model, tokenizer, PROMPTS, 10)
    stop_char = free[0][2]
    stop_id = tokenizer.convert_tokens_to_ids(stop_char)
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [old, stop_id]
    try:
        batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=10, batch_size=5, progress=False)
        assert batched == one_by_one(model, tokenizer, PROMPTS, 10)
    finally:
        model.generation_config.eos_token_id = old
    assert batched == [f.split(stop_char)[0] for f in free]
    assert batched[0] == free[0][:2]


def test_tokenizer_and_model_state_restored(model, tokenizer) -> None:
    tokenizer.padding_side = "right"
    model.train()
    try:
        generate_answers(model, tokenizer, PROMPTS[:2], max_new_tokens=2, progress=False)
        assert tokenizer.padding_side == "right"
        assert model.training
    finally:
        model.eval()

    no_pad = make_tokenizer(pad=False)
    assert no_pad.pad_token is None
    answers = generate_answers(model, no_pad, PROMPTS, max_new_tokens=3, batch_size=5, progress=False)
    assert answers == one_by_one(model, tokenizer, PROMPTS, 3)
    assert no_pad.pad_token is None
    assert no_pad.padding_side == "right"


def test_edge_cases(model, tokenizer) -> None:
    assert generate_answers(model, tokenizer, [], progress=False) == []
    with pytest.raises(ValueError):
        generate_answers(model, tokenizer, ["ok"], max_new_tokens=0, progress=False)
    with pytest.raises(ValueError):
        generate_answers(model, tokenizer, ["ok"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="prompt 1"):
        generate_answers(model, tokenizer, ["ok", ""], progress=False)


def test_peft_wrapped_model(tokenizer) -> None:
    """A LoRA-wrapped model generates through the same path (B starts at zero, so the answers equal
    the base model's) and is put back into training mode afterwards."""
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = LlamaForCausalLM(config)
    expected = generate_answers(base, tokenizer, PROMPTS, max_new_tokens=4, progress=False)
    wrapped = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    wrapped.train()
    assert generate_answers(wrapped, tokenizer, PROMPTS, max_new_tokens=4, progress=False) == expected
    assert wrapped.training
