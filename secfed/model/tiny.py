"""A tiny random Llama with an in-memory byte-level tokenizer, for tests and smoke runs.

It exercises exactly the code paths of the real base model (LlamaForCausalLM, grouped-query
attention, tied embeddings, a ChatML chat template, left padding) while building in well under a
second with no files and no network, so federated LoRA rounds can be tested end to end on CI.
The tokenizer maps every UTF-8 byte to one token, so any text round-trips exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from secfed.model.loading import LoadedModel, hash_tensors

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"  # noqa: S105 (a vocabulary entry, not a secret)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

#: ChatML, as SmolLM2 uses, minus its default system prompt (the tiny model has no persona).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_alphabet() -> list[str]:
    """The printable character standing for each byte 0..255, as byte-level BPE encodes bytes.

    Printable Latin-1 bytes stand for themselves; the rest (controls, space, ...) are shifted past
    U+00FF in byte order. This is the convention of the ``tokenizers`` ByteLevel pre-tokenizer, so
    token id ``b`` is byte ``b``.
    """
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    }
    alphabet: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def byte_tokenizer(max_length: int = 256) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast``: ids 0..255 are bytes, then ``<|pad|>``, ``<|im_start|>``, ``<|im_end|>`` (EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in enumerate(byte_alphabet())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([PAD_TOKEN, IM_START, IM_END])
    wrapper: Any = PreTrainedTokenizerFast  # its __init__ is unannotated
    tokenizer: PreTrainedTokenizerFast = wrapper(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=IM_START,
        eos_token=IM_END,
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        padding_side="left",
    )
    return tokenizer


def tiny_llama(
    seed: int = 0,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 256,
) -> LoadedModel:
    """A random ``LlamaForCausalLM`` (CPU, float32, eval mode) whose weights depend only on ``seed``.

    The global torch RNG is left as it was: the model is drawn inside a forked RNG state, so building
    a tiny model in a test does not shift the randomness of whatever the test does next.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size < 1 or layers < 1 or heads < 1 or hidden_size % heads != 0:
        raise ValueError(
            f"tiny_llama: hidden_size ({hidden_size}) must be a positive multiple of heads ({heads})"
        )
    tokenizer = byte_tokenizer(max_positions)
    pad_id, bos_id, eos_id = (256, 257, 258)
    config = LlamaConfig(
        vocab_size=259,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        # Grouped-query attention like SmolLM2, so k/v projections are narrower than q (LoRA shapes differ).
        num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
        max_position_embeddings=max_positions,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
        dtype=torch.float32,
    )
    model: Any
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    source = f"tiny-llama(seed={seed},hidden={hidden_size},layers={layers},heads={heads})"
    base_hash = hash_tensors(model.state_dict().items())
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, base_hash=base_hash)
