"""Last-token features: the right token, the same value alone or padded in a batch, indices carried."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secfed.coreset.features import feature_blocks, last_token_features, prompt_token_ids
from secfed.data.formats import Record
from secfed.model.tiny import tiny_llama

torch.set_num_threads(2)

RECORDS = [
    Record("Say hi.", "", "hi", "open_qa"),
    Record(
        "Summarise the text below in one short sentence, please.",
        "A long context " * 6,
        "ok",
        "summarization",
    ),
    Record("Name a colour.", "", "red", "brainstorming"),
    Record("Translate 'cat' to French.", "", "chat", "open_qa"),
    Record("Why is the sky blue? Explain it to a child.", "", "light", "open_qa"),
]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_feature_is_the_same_alone_and_in_a_padded_batch(tiny, side):
    tok = tiny.tokenizer
    tok.padding_side = side
    try:
        lengths = [len(prompt_token_ids(r, tok, style="chat", max_length=96)) for r in RECORDS]
        assert len(set(lengths)) > 1  # the batch really is padded
        _, batched = last_token_features(
            tiny.model, tok, RECORDS, layers=[1, -1], batch_size=5, progress=False
        )
        for i, record in enumerate(RECORDS):
            _, alone = last_token_features(tiny.model, tok, [record], layers=[1, -1], progress=False)
            np.testing.assert_allclose(batched[i], alone[0], rtol=1e-5, atol=1e-5)
    finally:
        tok.padding_side = "left"


def test_feature_is_the_hidden_state_of_the_last_prompt_token(tiny):
    tok = tiny.tokenizer
    record = RECORDS[2]
    ids = prompt_token_ids(record, tok, style="chat", max_length=96)
    with torch.no_grad():
        out = tiny.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    expected = torch.cat([out.hidden_states[0][0, -1], out.hidden_states[2][0, -1]]).numpy()
    _, feats = last_token_features(tiny.model, tok, [record], layers=[0, 2], progress=False)
    np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-6)
    assert feats.shape == (1, 2 * tiny.model.config.hidden_size)


def test_indices_are_carried_and_rows_follow_the_records(tiny):
    idx = np.array([40, 7, 13, 99, 2])
    got_idx, feats = last_token_features(
        tiny.model, tiny.tokenizer, RECORDS, layers=[-1], batch_size=2, progress=False, indices=idx
    )
    np.testing.assert_array_equal(got_idx, idx)
    _, reversed_feats = last_token_features(
        tiny.model, tiny.tokenizer, RECORDS[::-1], layers=[-1], batch_size=2, progress=False
    )
    np.testing.assert_allclose(feats, reversed_feats[::-1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unique"):
        last_token_features(
            tiny.model, tiny.tokenizer, RECORDS[:2], layers=[-1], indices=[1, 1], progress=False
        )


def test_long_prompts_keep_head_and_tail():
    tok = tiny_llama(seed=0).tokenizer
    record = Record("Q" * 50, "x" * 400, "r", "c")
    full = prompt_token_ids(record, tok, style="chat", max_length=10_000)
    cut = prompt_token_ids(record, tok, style="chat", max_length=21)
    assert len(cut) == 21
    assert cut[:11] == full[:11] and cut[11:] == full[-10:]


def test_feature_blocks_are_unit_per_layer():
    gen = np.random.default_rng(0)
    raw = np.concatenate([gen.normal(size=(6, 4)) * 100, gen.normal(size=(6, 4)) * 0.01], axis=1)
    raw[0, 4:] = 0.0
    unit = feature_blocks(raw, 2)
    np.testing.assert_allclose(np.linalg.norm(unit[1:, :4], axis=1), np.sqrt(0.5))
    np.testing.assert_allclose(np.linalg.norm(unit[1:, 4:], axis=1), np.sqrt(0.5))
    assert np.all(unit[0, 4:] == 0)
    with pytest.raises(ValueError):
        feature_blocks(raw, 3)
