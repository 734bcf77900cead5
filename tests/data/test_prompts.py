"""Prompt text, response-only labels, truncation and collation, on real (offline-built) tokenizers."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from secfed.data.formats import Record
from secfed.data.prompts import (
    ALPACA_TEMPLATE,
    IGNORE_INDEX,
    TokenizedExample,
    build_prompt,
    collate,
    tokenize_example,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
CORPUS = [
    "Here is a task for you. Write a reply that carries it out.",
    "### Instruction: ### Input: ### Response:",
    "What is the capital of France? Paris is the capital of France.",
    "user assistant system hello world, numbers 0123456789 and words.",
]


def _bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return tok


def _wrap(raw: Tokenizer, **special_tokens: str) -> PreTrainedTokenizerFast:
    """The transformers wrapper around a ``tokenizers`` model (its constructor is untyped)."""
    return PreTrainedTokenizerFast(tokenizer_object=raw, **special_tokens)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """ChatML-style byte-level BPE like SmolLM2's: EOS, no BOS, a chat template."""
    tok = _wrap(_bpe(), eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer whose post-processor prepends BOS to every encoding."""
    raw = _bpe()
    bos = raw.token_to_id("<s>")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return _wrap(raw, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")


PLAIN = Record("What is the capital of France?", "", "Paris.", "open_qa")
WITH_CONTEXT = Record(
    "Summarise the text.", "France is a country; its capital is Paris.", "Paris.", "summarization"
)


def test_alpaca_prompt_with_and_without_context() -> None:
    no_input = build_prompt(PLAIN)
    assert no_input == ALPACA_TEMPLATE["no_input"].format(instruction=PLAIN.instruction)
    assert "### Instruction:\nWhat is the capital of France?\n\n### Response:\n" in no_input
    assert "### Input:" not in no_input
    with_input = build_prompt(WITH_CONTEXT, style="alpaca")
    assert "### Input:\nFrance is a country; its capital is Paris.\n\n### Response:\n" in with_input
    assert with_input.endswith("### Response:\n")
    assert (
        with_input.index("### Instruction:")
        < with_input.index("### Input:")
        < with_input.index("### Response:")
    )


def test_alpaca_prompt_keeps_braces_in_user_text() -> None:
    record = Record("Format {name} as JSON: {}", "", "ok", "x")
    assert "Format {name} as JSON: {}" in build_prompt(record)


def test_chat_prompt_uses_the_template(tokenizer: PreTrainedTokenizerFast) -> None:
    assert (
        build_prompt(PLAIN, tokenizer, "chat")
        == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert build_prompt(WITH_CONTEXT, tokenizer, "chat") == (
        "<|im_start|>user\nSummarise the text.\n\nFrance is a country; its capital is Paris.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_without_template_is_refused(bos_tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="chat_template"):
        build_prompt(PLAIN, None, "chat")
    with pytest.raises(ValueError, match="chat_template"):
        build_prompt(PLAIN, bos_tokenizer, "chat")


@pytest.mark.parametrize("style", ["alpaca", "chat"])
@pytest.mark.parametrize("record", [PLAIN, WITH_CONTEXT])
def test_labels_mask_exactly_the_prompt(tokenizer: PreTrainedTokenizerFast, style, record: Record) -> None:
    ex = tokenize_example(record, tokenizer, style=style, max_length=512)
    prompt_ids = tokenizer(build_prompt(record, tokenizer, style), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    assert ex.input_ids == [*prompt_ids, *response_ids, tokenizer.eos_token_id]
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert ex.labels[-1] == tokenizer.eos_token_id
    assert ex.n_response_tokens == len(response_ids) + 1 == sum(label != IGNORE_INDEX for label in ex.labels)
    assert ex.attention_mask == [1] * len(ex.input_ids)
    assert tokenizer.decode(ex.input_ids[n_prompt:-1]) == record.response


def test_bos_added_once_and_never_in_the_response(bos_tokenizer: PreTrainedTokenizerFast) -> None:
    bos = bos_tokenizer.bos_token_id
    ex = tokenize_example(PLAIN, bos_tokenizer, max_length=512)
    assert ex.input_ids[0] == bos
    assert ex.input_ids.count(bos) == 1
    plain = bos_tokenizer(build_prompt(PLAIN), add_special_tokens=False)["input_ids"]
    assert ex.input_ids[1 : 1 + len(plain)] == plain
    assert ex.labels[: 1 + len(plain)] == [IGNORE_INDEX] * (1 + len(plain))


def test_long_context_is_cut_from_the_middle_of_the_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    record = Record("Summarise the text.", "Paris is the capital of France. " * 200, "Paris is big.", "s")
    max_length = 64
    ex = tokenize_example(record, tokenizer, max_length=max_length)
    response = [*tokenizer(record.response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert len(ex.input_ids) == max_length
    assert ex.input_ids[-len(response) :] == response  # the whole (short) response survives
    assert ex.n_response_tokens == len(response)
    prompt = ex.input_ids[: -len(response)]
    full_prompt = tokenizer(build_prompt(record), add_special_tokens=False)["input_ids"]
    head = (len(prompt) + 1) // 2
    assert prompt[:head] == full_prompt[:head]  # template start and instruction kept
    assert prompt[head:] == full_prompt[len(full_prompt) - (len(prompt) - head) :]  # "### Response:" kept
    assert str(tokenizer.decode(prompt)).endswith("### Response:\n")


def test_long_response_keeps_at_least_half_the_budget(tokenizer: PreTrainedTokenizerFast) -> None:
    record = Record("Summarise the text.", "France is a country. " * 100, "Paris is the capital. " * 100, "s")
    max_length = 40
    ex = tokenize_example(record, tokenizer, max_length=max_length)
    assert len(ex.input_ids) == max_length
    assert ex.n_response_tokens == max_length // 2
    assert ex.labels[: max_length // 2] == [IGNORE_INDEX] * (max_length // 2)
    response = tokenizer(record.response, add_special_tokens=False)["input_ids"]
    assert ex.input_ids[max_length // 2 :] == response[: max_length // 2]  # its beginning, no EOS
    assert tokenizer.eos_token_id not in ex.labels


def test_short_prompt_leaves_its_budget_to_the_response(tokenizer: PreTrainedTokenizerFast) -> None:
    record = Record("Hi", "", "hello world " * 100, "x")
    ex = tokenize_example(record, tokenizer, style="chat", max_length=48)
    n_prompt = len(tokenizer(build_prompt(record, tokenizer, "chat"), add_special_tokens=False)["input_ids"])
    assert len(ex.input_ids) == 48
    assert ex.n_response_tokens == 48 - n_prompt > 24


def test_tokenize_rejects_bad_settings(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match="max_length"):
        tokenize_example(PLAIN, tokenizer, max_length=1)
    no_eos = _wrap(_bpe())
    with pytest.raises(ValueError, match="eos_token_id"):
        tokenize_example(PLAIN, no_eos)


def test_collate_right_pads() -> None:
    a = TokenizedExample([5, 6, 7], [-100, 6, 7], [1, 1, 1], 2)
    b = TokenizedExample([8], [8], [1], 1)
    batch = collate([a, b], pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    with pytest.raises(ValueError):
        collate([], 0)


def test_collate_real_examples(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = [tokenize_example(r, tokenizer, max_length=128) for r in (PLAIN, WITH_CONTEXT)]
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in examples)
    assert batch["input_ids"].shape == (2, width)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert int(batch["attention_mask"][row].sum()) == n
        assert int((batch["labels"][row] != IGNORE_INDEX).sum()) == e.n_response_tokens
