"""Per-record features for coreset selection: last-token hidden states of chosen layers.

FedHDS describes each instruction by the hidden state of the last prompt token at a few layers of the
model (the current global model, or a small frozen "turbo" model). Two properties matter more here
than in the paper's reference code:

* **indices travel with features.** Records are processed in length-sorted batches (less padding,
  faster on CPU), so the rows come back in the caller's order *and* with an explicit index array; a
  selected feature row therefore always maps back to the record it was computed from.
* **padding never changes a feature.** The last *real* token is located from the attention mask
  (right or left padding), and position ids are computed from the mask so that a left-padded record
  sees the same positions as when run alone (rotary models would tolerate the shift, absolute-position
  models would not). A record's feature is the same (up to float rounding)
  whether it is computed alone or in a padded batch; a test checks this.

Prompts are built with :func:`secfed.data.prompts.build_prompt` (style ``"chat"`` by default, as in
training), the text the model sees before the response during training, so features describe exactly what training will condition on. A prompt
longer than ``max_length`` loses its middle (head and tail kept), the same policy the training
tokenizer applies to prompts: the tail carries the response header, the head the instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from secfed import cancel
from secfed.coreset.space import feature_blocks
from secfed.data.formats import Record
from secfed.data.prompts import PromptStyle, build_prompt

# feature_blocks lives with the shared space (pure numpy, no torch) and is re-exported here.
__all__ = ["feature_blocks", "last_token_features", "prompt_token_ids"]


def prompt_token_ids(record: Record, tokenizer: Any, *, style: PromptStyle, max_length: int) -> list[int]:
    """Token ids of ``record``'s prompt (with the tokenizer's leading special tokens), at most ``max_length``.

    Too long a prompt keeps its first ``ceil(max_length / 2)`` and last ``floor(max_length / 2)`` tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    text = build_prompt(record, tokenizer, style)
    ids = [int(i) for i in tokenizer(text, add_special_tokens=style != "chat")["input_ids"]]
    if len(ids) > max_length:
        head = (max_length + 1) // 2
        tail = max_length - head
        ids = ids[:head] + (ids[len(ids) - tail :] if tail else [])
    return ids


def _pad_batch(
    seqs: Sequence[list[int]], pad_id: int, *, left: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    # Real tokens get positions 0..n-1 whatever the padding side (a left-padded row would otherwise
    # start at position `width - n`, and its hidden states would differ from the same record alone).
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


def last_token_features(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    layers: Sequence[int],
    max_length: int = 96,
    batch_size: int = 8,
    progress: bool = True,
    style: PromptStyle = "chat",
    indices: Sequence[int] | NDArray[np.int64] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Hidden state of the last prompt token at each of ``layers``, concatenated per record.

    ``layers`` index ``output_hidden_states`` (0 is the embedding output, ``i`` the output of block
    ``i``, negative values count from the last). Returns ``(indices, features)``: ``indices[i]`` is
    the record's index (``indices`` argument, default ``0..n-1``) and ``features[i]`` has
    ``len(layers) * hidden_size`` columns, layer blocks in the order given. Rows follow the order of
    ``records``. The model runs under ``torch.no_grad()`` in its current mode (callers pass eval-mode
    models; loaded models are in eval mode). A tqdm bar on stderr shows progress when ``progress``.
    """
    if not layers:
        raise ValueError("layers must name at least one hidden-state layer")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index_array = (
        np.arange(len(records), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    )
    if index_array.shape != (len(records),):
        raise ValueError(f"indices has shape {index_array.shape}, expected ({len(records)},)")
    if len(np.unique(index_array)) != len(index_array):
        raise ValueError("indices must be unique: each feature row must map back to one record")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    seqs = [prompt_token_ids(r, tokenizer, style=style, max_length=max_length) for r in records]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("a prompt tokenized to no tokens; it has no last token to describe it")
    # Length-sorted batches waste little on padding; rows are written back to their original places.
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    device = next(model.parameters()).device
    rows: list[NDArray[np.float64] | None] = [None] * len(seqs)
    with (
        torch.no_grad(),
        tqdm(total=len(seqs), desc="coreset features", unit="rec", disable=not progress) as bar,
    ):
        for start in range(0, len(order), batch_size):
            cancel.check()
            batch = order[start : start + batch_size]
            ids, mask, positions = _pad_batch([seqs[i] for i in batch], int(pad_id), left=left)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                output_hidden_states=True,
                use_cache=False,
            )
            hidden = out.hidden_states
            # The last real token is the last position whose mask is 1 (right: n-1, left: width-1).
            last = (mask * torch.arange(mask.shape[1])).argmax(dim=1).to(device)
            take = torch.arange(len(batch), device=device)
            blocks = [hidden[layer][take, last].float().cpu() for layer in layers]
            feats = torch.cat(blocks, dim=1).numpy().astype(np.float64)
            for row, i in enumerate(batch):
                rows[i] = feats[row]
            bar.update(len(batch))
    if not rows:
        width = len(layers) * int(model.config.hidden_size)
        return index_array, np.zeros((0, width), dtype=np.float64)
    return index_array, np.stack([r for r in rows if r is not None])
