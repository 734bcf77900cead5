"""Prompt formatting and tokenization for response-only instruction tuning.

The model is trained to produce the response given the prompt, so the loss covers the response tokens
(and the end-of-sequence token that teaches it to stop) and never the prompt: labels are ``-100`` on
every prompt token. Prompt and response are tokenized separately, which makes that boundary exact and
matches inference, where the model sees exactly the tokenized prompt and generates from there.

Truncation policy (``max_length`` counts every token, EOS included):

* if prompt + response + EOS fit, nothing is cut;
* otherwise the response keeps at least ``min(its length, max_length // 2)`` tokens, the prompt gets
  the remainder, and any budget the prompt does not need goes back to the response;
* a prompt that is too long loses its *middle*: its first half (template preamble, instruction, start of
  the context, any BOS token) and its last half (end of the context and the response header / chat
  generation prompt the model must see right before answering) are kept;
* a response that is too long keeps its beginning and loses the EOS, since a cut answer has not ended.

So a long context can never remove the whole response, and every example carries a training signal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from secfed.data.formats import Record
from secfed.model.settings import PromptStyle

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_NO_INPUT",
    "ALPACA_TEMPLATE_WITH_INPUT",
    "IGNORE_INDEX",
    "PromptStyle",
    "TokenizedExample",
    "build_prompt",
    "collate",
    "tokenize_example",
]

#: Label value that PyTorch's cross-entropy (and the trainer's per-sequence loss) skips.
IGNORE_INDEX = -100


ALPACA_TEMPLATE_NO_INPUT = (
    "Here is a task for you. Write a reply that carries it out.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_TEMPLATE_WITH_INPUT = (
    "Here is a task for you, followed by input that gives it more context. "
    "Write a reply that carries it out.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
#: Both variants of the Alpaca-style template, keyed by whether the record has a context.
ALPACA_TEMPLATE: Mapping[str, str] = MappingProxyType(
    {"no_input": ALPACA_TEMPLATE_NO_INPUT, "with_input": ALPACA_TEMPLATE_WITH_INPUT}
)


def _user_message(record: Record) -> str:
    return f"{record.instruction}\n\n{record.context}" if record.context.strip() else record.instruction


def build_prompt(
    record: Record, tokenizer: PreTrainedTokenizerBase | None = None, style: PromptStyle = "alpaca"
) -> str:
    """The text the model sees before the response starts (training and generation share it).

    ``alpaca`` needs no tokenizer and suits base models; ``chat`` uses the tokenizer's own chat template
    (one user turn holding the instruction and any context, plus the generation prompt), which is what
    an instruct model was tuned on.
    """
    if style == "alpaca":
        if record.context.strip():
            return ALPACA_TEMPLATE_WITH_INPUT.format(instruction=record.instruction, context=record.context)
        return ALPACA_TEMPLATE_NO_INPUT.format(instruction=record.instruction)
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat_template; use style='alpaca'")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _user_message(record)}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        return text
    raise ValueError(f"unknown prompt style {style!r}; expected 'alpaca' or 'chat'")


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence; ``labels`` is ``-100`` on the prompt, so only the response is learned."""

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    n_response_tokens: int


def _ids(tokenizer: Any, text: str, *, add_special_tokens: bool) -> list[int]:
    return [int(i) for i in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]


def _prompt_ids(tokenizer: Any, prompt: str, style: PromptStyle) -> list[int]:
    """Prompt ids with the tokenizer's leading special tokens (BOS) once, and never trailing ones.

    A chat template already writes its special tokens into the text, so adding them again would
    duplicate BOS. For the plain Alpaca text the tokenizer's own prefix (BOS on Llama-style models) is
    wanted, but some tokenizers also *append* EOS, which must not sit between prompt and response.
    """
    plain = _ids(tokenizer, prompt, add_special_tokens=False)
    if style == "chat":
        return plain
    full = _ids(tokenizer, prompt, add_special_tokens=True)
    n = len(plain)
    for start in range(len(full) - n + 1):
        if full[start : start + n] == plain:
            return full[:start] + plain
    return plain


def _keep_ends(ids: list[int], keep: int) -> list[int]:
    """Drop the middle of ``ids`` so that ``keep`` tokens remain (head gets the odd one)."""
    if keep >= len(ids):
        return ids
    head = (keep + 1) // 2
    tail = keep - head
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def tokenize_example(
    record: Record, tokenizer: Any, *, style: PromptStyle = "alpaca", max_length: int = 256
) -> TokenizedExample:
    """Tokenize prompt + response + EOS with labels on the response only (see the module's truncation policy)."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one prompt and one response token), got {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; the model could not learn where a response ends")
    prompt = _prompt_ids(tokenizer, build_prompt(record, tokenizer, style), style)
    response = [*_ids(tokenizer, record.response, add_special_tokens=False), int(eos)]
    if len(prompt) + len(response) > max_length:
        reserved = min(len(response), max_length // 2)
        prompt = _keep_ends(prompt, max_length - reserved)
        response = response[: max_length - len(prompt)]
    input_ids = prompt + response
    return TokenizedExample(
        input_ids=input_ids,
        labels=[IGNORE_INDEX] * len(prompt) + response,
        attention_mask=[1] * len(input_ids),
        n_response_tokens=len(response),
    )


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence: ids with ``pad_token_id``, mask 0, labels -100.

    Right padding keeps positions of real tokens the same as unpadded, which causal LMs trained without
    position offsets expect; padded positions neither attend nor count in the loss.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(e.labels, dtype=torch.long)
        attention_mask[row, :n] = torch.tensor(e.attention_mask, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
