"""Greedy, batched answer generation for evaluation.

Evaluation must measure the model, not the decoding: generation is greedy (deterministic, so a
before/after comparison is not blurred by sampling noise) and batched for speed. Batching a
decoder-only model is only equivalent to one-prompt-at-a-time generation when the padding goes on the
*left* (every prompt then ends at the same position, where the new tokens start) and the attention
mask hides it; both are enforced here, whatever the tokenizer was configured with for training.

Prompts are sorted by token length before batching so each batch pads as little as possible, and the
answers are put back in the caller's order.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class _Generates(Protocol):
    """What this module needs from a model: ``PreTrainedModel`` itself has no ``generate`` in its
    static type (transformers 5 mixes ``GenerationMixin`` into the ``*ForCausalLM`` classes only), and
    ``PeftModel`` forwards it, so the call goes through this narrow view."""

    def generate(self, **kwargs: Any) -> Any: ...


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter: works for plain and peft-wrapped models alike (a
    ``PeftModel`` only exposes ``.device`` through attribute forwarding)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS plus the model's generation-config EOS
    ids. Chat models often stop on an end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) that only the
    generation config knows about; passing the tokenizer's EOS alone would override it and the model
    would run on into a new turn."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(configured, int):
        ids.append(configured)
    elif isinstance(configured, (list, tuple)):
        ids.extend(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))  # de-duplicated, order kept


@contextmanager
def _left_padding(tokenizer: PreTrainedTokenizerBase, fallback_pad: str | None) -> Iterator[None]:
    """Temporarily pad on the left (and borrow EOS as the pad token when there is none), restoring the
    tokenizer exactly afterwards: the same tokenizer object is shared with training, which pads right."""
    old_side = tokenizer.padding_side
    old_pad = tokenizer.pad_token
    tokenizer.padding_side = "left"
    if old_pad is None:
        tokenizer.pad_token = fallback_pad
    try:
        yield
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = old_pad


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Drop the EOS and everything after it (the padding ``generate`` appends to rows that finished
    early): a pad token that is not marked special would otherwise survive ``skip_special_tokens``."""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return tokens[:i]
    return tokens


def generate_answers(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy answers to fully rendered ``prompts``, in the order given.

    Prompts are tokenized with ``add_special_tokens=False`` because they are already complete text (a
    chat template writes its own BOS/role tokens; adding another BOS would shift the distribution the
    model was tuned on). Only the newly generated tokens are decoded, up to the first EOS, and stripped.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    if not prompts:
        return []
    if tokenizer.pad_token is None and tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token, so batches cannot be padded")
    eos = _eos_ids(model, tokenizer)
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} tokenizes to nothing; cannot generate from it")
    # Longest first: a batch that does not fit in memory fails at once, not at the end of the run.
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    answers = [""] * len(prompts)

    was_training = model.training
    model.eval()
    try:
        with (
            _left_padding(tokenizer, tokenizer.eos_token),
            torch.inference_mode(),
            tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, file=sys.stderr) as bar,
        ):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                texts = _generate_batch(model, tokenizer, [prompts[i] for i in idx], eos, max_new_tokens)
                for i, text in zip(idx, texts, strict=True):
                    answers[i] = text
                bar.update(len(idx))
    finally:
        if was_training:
            model.train()
    return answers


def _generate_batch(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[str],
    eos: list[int],
    max_new_tokens: int,
) -> list[str]:
    """One left-padded ``generate`` call; returns the stripped new text of each prompt."""
    device = _model_device(model)
    enc = tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt")
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    out = cast(_Generates, model).generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos or None,
    )
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    # Left padding: every prompt ends at column input_ids.shape[1], so the new tokens start there.
    new_tokens: list[list[int]] = sequences[:, input_ids.shape[1] :].tolist()
    stop = set(eos)
    answers: list[str] = []
    for row in new_tokens:
        text = tokenizer.decode(_cut_at_eos(row, stop), skip_special_tokens=True)
        answers.append(text.strip() if isinstance(text, str) else "".join(text).strip())
    return answers
