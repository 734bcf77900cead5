"""DP-SGD noise from the AES-256-CTR generator (secfed.dp.csprng), alone and wired into DP-SGD.

The generator's stream is checked against an independent reconstruction (AES-ECB on the counter blocks,
Box-Muller in numpy), its statistics against N(0, 1), and DP-SGD against the attack the module exists
for: noise that torch's seed or torch's generator could reproduce.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secfed.data.builtin import builtin_splits
from secfed.data.formats import Record
from secfed.dp import csprng, sgd
from secfed.dp.csprng import AesCtrGaussian, derive_test_key
from secfed.dp.sgd import DpSettings, train_local_dp
from secfed.model.lora import LoraSettings, adapter_to_vector, apply_lora, vector_to_adapter
from secfed.model.tiny import tiny_llama
from secfed.model.train import TrainSettings

MAX_LEN = 128
SETTINGS = TrainSettings(local_steps=2, max_length=MAX_LEN, lr=1e-2, style="chat", seed=3)


def _reference_normals(key: bytes, first_block: int, n: int) -> np.ndarray[Any, Any]:
    """The documented stream rebuilt without the module: AES-256 of the big-endian counters (ECB),
    words little-endian, u1 = ((w0 >> 11) + 1) / 2^53, u2 = (w1 >> 11) / 2^53, (r cos, r sin) per block."""
    pairs = (n + 1) // 2
    counters = np.zeros((pairs, 2), dtype=">u8")
    counters[:, 1] = np.arange(first_block, first_block + pairs, dtype=np.uint64)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # CTR built by hand
    words = np.frombuffer(encryptor.update(counters.tobytes()) + encryptor.finalize(), dtype="<u8")
    w0, w1 = words[0::2], words[1::2]
    u1 = ((w0 >> np.uint64(11)) + np.uint64(1)).astype(np.float64) / 2.0**53
    u2 = (w1 >> np.uint64(11)).astype(np.float64) / 2.0**53
    r = np.sqrt(-2.0 * np.log(u1))
    out = np.empty(2 * pairs)
    out[0::2], out[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return out[:n]


def _normal_cdf(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    erf = np.fromiter((math.erf(v) for v in (x / math.sqrt(2.0)).tolist()), dtype=np.float64, count=len(x))
    return 0.5 * (1.0 + erf)


def _ks_statistic(z: np.ndarray[Any, Any]) -> float:
    """Kolmogorov-Smirnov distance between the sample's empirical CDF and the N(0, 1) CDF."""
    cdf = _normal_cdf(np.sort(z))
    n = len(z)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def _ks_bound(n: int, p_value: float = 1e-6) -> float:
    """The distance a true N(0, 1) sample of size n exceeds with probability about ``p_value``
    (asymptotic Kolmogorov tail ``2 exp(-2 n d^2)``)."""
    return math.sqrt(math.log(2 / p_value) / (2 * n))


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 for one 32-byte block, from hmac alone."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


# --- the generator on its own ----------------------------------------------------------------------


def test_stream_matches_an_independent_aes_ctr_box_muller() -> None:
    """Catches a wrong mode or counter (ECB-like repeats, a reused or skipped block at a chunk boundary),
    a wrong word order or bit mapping, and an odd-length draw that reuses its discarded sine's block."""
    key = derive_test_key(11)
    gen = AesCtrGaussian.from_test_seed(11)
    n = 2 * csprng._PAIRS_PER_CHUNK + 3  # crosses two chunk boundaries, odd
    np.testing.assert_allclose(gen.standard_normal(n), _reference_normals(key, 0, n), rtol=1e-12, atol=1e-13)
    first_block = (n + 1) // 2
    np.testing.assert_allclose(
        gen.standard_normal(5), _reference_normals(key, first_block, 5), rtol=1e-12, atol=1e-13
    )
    same_key = AesCtrGaussian._from_key(key)
    np.testing.assert_allclose(same_key.standard_normal(7), _reference_normals(key, 0, 7), rtol=1e-12)


def test_test_seed_stream_is_pinned_and_deterministic() -> None:
    """Known answers: the HKDF key (checked against RFC 5869 built from hmac) and the first normals.
    Catches a changed KDF, salt or stream (recorded test runs would silently stop reproducing)."""
    assert derive_test_key(0) == _hkdf_sha256(b"0", csprng._TEST_KDF_SALT, csprng._TEST_KDF_INFO)
    assert derive_test_key(0).hex() == "42a4cd3dfcf6885b41b2de9c48b421434616ca573c60e1ed9ada22b214551f8d"
    pinned = [-0.9046132474298627, -1.5652701846748907, 1.1610096705334183, 0.7377581713012444]
    np.testing.assert_allclose(AesCtrGaussian.from_test_seed(0).standard_normal(4), pinned, rtol=1e-12)
    a, b = AesCtrGaussian.from_test_seed(5), AesCtrGaussian.from_test_seed(5)
    np.testing.assert_array_equal(a.standard_normal(1000), b.standard_normal(1000))
    assert not np.array_equal(
        AesCtrGaussian.from_test_seed(5).standard_normal(1000),
        AesCtrGaussian.from_test_seed(6).standard_normal(1000),
    )
    with pytest.raises(TypeError):
        derive_test_key(True)


def test_default_generators_are_keyed_by_os_urandom_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two default generators under the same torch and numpy seeds differ; and with ``os.urandom``
    pinned they coincide with the explicit-key stream, so nothing else (torch's seed, the time, a
    counter) enters the key. Catches a key derived from, or mixed with, a configured seed."""
    torch.manual_seed(0)
    np.random.seed(0)  # the global RNG must not matter either
    first = AesCtrGaussian().standard_normal(1000)
    torch.manual_seed(0)
    np.random.seed(0)
    second = AesCtrGaussian().standard_normal(1000)
    assert not np.array_equal(first, second)

    requests: list[int] = []

    def fixed_urandom(size: int) -> bytes:
        requests.append(size)
        return bytes(range(size))

    monkeypatch.setattr(os, "urandom", fixed_urandom)
    pinned = AesCtrGaussian().standard_normal(64)
    assert requests == [32]
    np.testing.assert_array_equal(pinned, AesCtrGaussian._from_key(bytes(range(32))).standard_normal(64))


def test_a_million_samples_look_standard_normal() -> None:
    """Mean, std, tails, higher moments, KS against the normal CDF, and no correlation between the
    cosine and sine of a pair or between neighbours. Catches a wrong scale (e.g. r without the 2),
    uniforms that are not uniform, a constant angle, or cos used for both halves of a pair."""
    z = AesCtrGaussian.from_test_seed(1).standard_normal(1_000_000)
    assert z.dtype == np.float64 and z.shape == (1_000_000,)
    assert np.isfinite(z).all()
    assert abs(float(z.mean())) < 5e-3  # standard error 1e-3
    assert abs(float(z.std()) - 1.0) < 4e-3  # standard error 7e-4
    centred = z - z.mean()
    skew = float(np.mean(centred**3)) / float(np.mean(centred**2)) ** 1.5
    kurtosis = float(np.mean(centred**4)) / float(np.mean(centred**2)) ** 2
    assert abs(kurtosis - 3.0) < 0.03  # standard error 5e-3
    assert abs(skew) < 0.015  # standard error 2.5e-3
    tail = math.erfc(3.0 / math.sqrt(2.0))  # P(|Z| > 3) = 0.0027
    assert abs(float(np.mean(np.abs(z) > 3.0)) - tail) < 5 * math.sqrt(tail / len(z))
    assert _ks_statistic(z) < _ks_bound(len(z))
    for half in (z[0::2], z[1::2]):  # the cosines and the sines are each N(0, 1)
        assert _ks_statistic(half) < _ks_bound(len(half))
    assert abs(float(np.corrcoef(z[0::2], z[1::2])[0, 1])) < 5e-3
    assert abs(float(np.corrcoef(z[:-1], z[1:])[0, 1])) < 5e-3


class _ConstantKeystream:
    """A stand-in cipher context whose keystream is one repeated byte (to reach u1's extremes)."""

    def __init__(self, byte: int) -> None:
        self.byte = byte

    def update_into(self, data: Any, buf: bytearray) -> int:
        n = len(data)
        buf[:n] = bytes([self.byte]) * n
        return n

    def finalize(self) -> bytes:
        return b""


@pytest.mark.parametrize("byte", [0x00, 0xFF])
def test_extreme_uniforms_never_take_log_of_zero(byte: int) -> None:
    """All-zero words give u1 = 2^-53 (the largest radius, finite) and all-one words u1 = 1 (radius 0).
    Catches u1 = (w >> 11) / 2^53, which is 0 for a zero word and makes -log(u1) infinite."""
    gen = AesCtrGaussian.from_test_seed(0)
    gen._encryptor = _ConstantKeystream(byte)  # type: ignore[assignment]
    with np.errstate(all="raise"):
        z = gen.standard_normal(6)
    assert np.isfinite(z).all()
    if byte == 0x00:  # theta = 0: (r, 0) with r = sqrt(2 * 53 ln 2)
        np.testing.assert_allclose(z[0::2], math.sqrt(2 * 53 * math.log(2)), rtol=1e-12)
        np.testing.assert_array_equal(z[1::2], 0.0)
    else:
        np.testing.assert_array_equal(z, 0.0)


def test_gaussian_is_std_times_half_the_sum_of_four_draws() -> None:
    """The DP noise formula, against the same stream drawn by hand: catches a missing ``/ 2`` (std
    doubled), one draw instead of four (losing the floating-point countermeasure), a wrong dtype or
    shape, and std == 0 consuming the stream."""
    shape, std = (3, 7, 5), 2.5
    gen, ref = AesCtrGaussian.from_test_seed(4), AesCtrGaussian.from_test_seed(4)
    zeros = gen.gaussian(shape, std=0.0, dtype=torch.float32)
    assert zeros.shape == shape and not zeros.any()
    noise = gen.gaussian(shape, std=std, dtype=torch.float64)
    draws = [ref.standard_normal(math.prod(shape)) for _ in range(4)]
    expected = (draws[0] + draws[1] + draws[2] + draws[3]) * (0.5 * std)
    assert noise.dtype == torch.float64 and noise.shape == shape and noise.device.type == "cpu"
    np.testing.assert_array_equal(noise.numpy().reshape(-1), expected)
    as_f32 = AesCtrGaussian.from_test_seed(4).gaussian(shape, std=std, dtype=torch.float32)
    assert as_f32.dtype == torch.float32
    np.testing.assert_array_equal(as_f32.numpy().reshape(-1), expected.astype(np.float32))

    big = AesCtrGaussian.from_test_seed(8).gaussian((1000, 1000), std=std, dtype=torch.float32)
    assert torch.isfinite(big).all()
    assert abs(float(big.double().std()) / std - 1) < 4e-3
    assert abs(float(big.double().mean())) < 5e-3 * std
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="std"):
            gen.gaussian(shape, std=bad)
    with pytest.raises(ValueError, match="dtype"):
        gen.gaussian(shape, std=1.0, dtype=torch.int64)


def test_drawing_noise_leaves_torch_and_numpy_generators_untouched() -> None:
    """The noise path consumes nothing from torch's or numpy's global generators (catches torch.randn
    or np.random inside it: their state would move, and reseeding them would then matter)."""
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state(legacy=False)
    AesCtrGaussian().gaussian((1000,), std=1.0)
    AesCtrGaussian().standard_normal(1001)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state(legacy=False)
    assert np.array_equal(after["state"]["key"], numpy_state["state"]["key"])
    assert after["state"]["pos"] == numpy_state["state"]["pos"]


def test_keystream_is_wiped_and_a_closed_generator_refuses_to_draw() -> None:
    """No keystream stays in the reused buffer after a draw or after ``close`` (even one left by a draw
    that failed half-way), and a closed generator cannot be used by mistake with a dropped context."""
    gen = AesCtrGaussian()
    gen.standard_normal(3)
    assert not gen._keystream.any()
    gen._keystream[:] = 0xA5  # what an interrupted draw could leave behind
    gen.close()
    assert gen._encryptor is None and not gen._keystream.any()
    with pytest.raises(RuntimeError, match="closed"):
        gen.standard_normal(3)
    gen.close()  # idempotent
    with AesCtrGaussian() as ctx:
        ctx.gaussian((2,), std=1.0)
    with pytest.raises(RuntimeError, match="closed"):
        ctx.gaussian((2,), std=1.0)


# --- wired into DP-SGD -------------------------------------------------------------------------------


def test_optimizer_adds_exactly_the_csprng_noise_before_the_divisor() -> None:
    """One step of the DP optimizer on known per-sample gradients (norms below C, so unclipped) with
    SGD(lr=1): the update is -(sum of the gradients + csprng noise of std sigma*C) / (q n), the noise
    being the stream itself, parameter by parameter. Catches noise from another source, a wrong std
    (e.g. sigma alone), noise added after the division, or a skipped parameter."""
    sigma, clip, divisor = 1.5, 10.0, 2.5
    p = torch.nn.Parameter(torch.zeros(3, 4))
    q = torch.nn.Parameter(torch.zeros(5))
    rows_p = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) / 100
    rows_q = -torch.arange(10, dtype=torch.float32).reshape(2, 5) / 100
    p.grad_sample = rows_p.clone()  # type: ignore[attr-defined]
    q.grad_sample = rows_q.clone()  # type: ignore[attr-defined]
    optimizer = sgd._csprng_dp_optimizer()(
        torch.optim.SGD([p, q], lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=divisor,
        loss_reduction="mean",
        noise_source=AesCtrGaussian.from_test_seed(9),
    )
    optimizer.step()
    ref = AesCtrGaussian.from_test_seed(9)
    noise_p = ref.gaussian((3, 4), std=sigma * clip)
    noise_q = ref.gaussian((5,), std=sigma * clip)
    torch.testing.assert_close(p.detach(), -(rows_p.sum(0) + noise_p) / divisor, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.detach(), -(rows_q.sum(0) + noise_q) / divisor, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="noise_source"):
        sgd._csprng_dp_optimizer()(
            torch.optim.SGD([p], lr=1.0),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=1,
            generator=torch.Generator(),
            noise_source=AesCtrGaussian(),
        )


@pytest.fixture(scope="module")
def records() -> list[Record]:
    splits, _ = builtin_splits(1, train_per_category=2, test_per_category=1, partition="iid")
    return splits[0]


def _model() -> tuple[Any, Any]:
    """A tiny peft model with a random adapter and no dropout (so the noise is the only randomness
    that is not fixed by ``settings.seed``)."""
    tiny = tiny_llama(seed=0)
    peft = apply_lora(tiny.model, LoraSettings(dropout=0.0))
    size = adapter_to_vector(peft).shape[0]
    vector_to_adapter(peft, np.random.default_rng(0).normal(0.0, 0.1, size=(size,)).astype(np.float32))
    return tiny, peft


def test_same_torch_seed_gives_different_noise(records: list[Record]) -> None:
    """The issue itself: two DP-SGD runs with the same torch seed, settings seed, start and data end at
    different adapters, while the test-only ``noise_seed`` makes them equal (so the noise is the only
    difference). Catches noise drawn from torch's global generator, which ``train_local_dp`` seeds from
    ``settings.seed`` (both runs would then be identical), or a key derived from a configured seed."""
    tiny, peft = _model()
    start = adapter_to_vector(peft)
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)

    def run(noise_seed: int | None) -> np.ndarray[Any, Any]:
        vector_to_adapter(peft, start)
        torch.manual_seed(0)
        train_local_dp(peft, tiny.tokenizer, records, SETTINGS, dp, progress=False, noise_seed=noise_seed)
        return adapter_to_vector(peft)

    fresh_a, fresh_b = run(None), run(None)
    seeded_a, seeded_b = run(17), run(17)
    np.testing.assert_array_equal(seeded_a, seeded_b)
    assert not np.array_equal(fresh_a, fresh_b)
    assert not np.array_equal(fresh_a, seeded_a)


def test_dp_sgd_noise_never_calls_torch_random_sampling(
    records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With torch.normal, torch.randn and Opacus's own noise function made to raise, DP-SGD still runs
    its noised steps (the old path, Opacus's secure_mode on a torch generator, calls torch.normal)."""
    from opacus.optimizers import optimizer as opacus_optimizer

    tiny, peft = _model()  # built first: weight initialisation does use torch's generator
    before = adapter_to_vector(peft)

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the DP noise must not come from torch's generators")

    monkeypatch.setattr(torch, "normal", forbidden)
    monkeypatch.setattr(torch, "randn", forbidden)
    monkeypatch.setattr(torch, "randn_like", forbidden)
    monkeypatch.setattr(torch.Tensor, "normal_", forbidden)
    monkeypatch.setattr(opacus_optimizer, "_generate_noise", forbidden)
    dp = DpSettings(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
    stats, event = train_local_dp(peft, tiny.tokenizer, records, SETTINGS, dp, progress=False)
    assert event.steps == stats.steps == SETTINGS.local_steps
    assert not np.array_equal(adapter_to_vector(peft), before)
