"""DP-SGD local training of the LoRA adapter with Opacus (docs/design-notes.md section 5).

One institution's round is the Sampled Gaussian Mechanism applied ``steps`` times: every logical step
Poisson-samples each local training sequence with probability ``q`` (the privacy unit is one sequence),
computes each sampled sequence's gradient with respect to the adapter, clips it to L2 norm ``C``, sums
the clipped gradients, adds ``N(0, (sigma * C)^2)`` noise to every coordinate of the sum, and divides by
the expected batch size ``q * n``. Only the LoRA parameters are trainable, so only they are released
(the frozen base is public and checked to be unchanged after the round).

How the Opacus pieces are put together, and why (each point is a way to lose the guarantee silently):

* **Per-sample gradients** come from :class:`opacus.grad_sample.GradSampleHooks` (``grad_sample_mode
  ="hooks"`` attached *without* wrapping the model, i.e. ``wrap_model=False``): the same peft model
  object is trained, saved and trained again next round, and the hooks are removed afterwards.
* **Loss scaling.** The loss of a physical batch is :func:`secfed.model.train.sequence_mean_loss` (each
  sequence's mean token loss, independent of the other sequences' lengths, unlike the model's
  ``labels=`` loss) then ``.mean()`` over the physical batch, with Opacus's ``loss_reduction="mean"``.
  Opacus's hooks multiply the backpropagated values by the *physical* batch size ``m`` (the batch
  dimension of the layer inputs), which cancels the ``1/m`` of the mean, so ``p.grad_sample[i]`` is
  exactly sequence ``i``'s own gradient whatever the physical batch size. (``.mean()`` with
  ``loss_reduction="sum"`` would hand the clipper ``g_i / m``, a sensitivity that changes with the
  micro-batching; ``.sum()`` with ``"mean"`` would clip ``m * g_i``.)
* **Virtual batches.** :class:`opacus.utils.batch_memory_manager.BatchMemoryManager` splits each
  Poisson batch into physical batches of at most ``max_physical_batch``; on all but the last the
  optimizer only clips and adds to ``summed_grad``, and the last one adds the noise once and divides by
  ``expected_batch_size * accumulated_iterations``, where ``accumulated_iterations`` is 1 because the
  optimizer clears ``grad_sample`` after each physical batch. We pass ``expected_batch_size = q * n``
  (the true expected size of a Poisson batch; ``make_private`` would truncate it to an integer). The
  divisor is applied after the noise, so it changes the step size, never the guarantee.
* **Sampling rate.** ``q = 1 / ceil(n / B)``: what Opacus's ``DPDataLoader.from_data_loader`` uses for a
  loader of batch size ``B`` (``1 / len(data_loader)``), which is not ``B / n`` when ``B`` does not divide
  ``n``. The accountant must get this rate, so :class:`DpRoundEvent` records the sampler's own value.
  The Poisson sampler is Opacus's ``UniformWithReplacementSampler`` with an explicit step count (the
  ``DPDataLoader`` wrapper would fix the count at ``1/q`` and can only build empty batches of tensors,
  while our examples are variable-length token lists collated per physical batch).
* **Empty batches.** A Poisson batch can be empty and HF models fail on batch size 0, so the model is
  not run; the parameters get zero-row ``grad_sample`` tensors and the optimizer step still happens:
  the sum of clipped gradients is zero and the noise is added as on every other step (skipping the
  step, or resampling, would change the mechanism the accountant assumes). They are counted.

Several ranks of one institution (``torchrun``, :mod:`secfed.model.distributed`): the mechanism stays
the single-process one. Every rank draws the same Poisson batches (the same seeded sampler; the secret
seed travels to the ranks with the job) and keeps its share of each; each rank clips its own sequences'
gradients and sums them; only rank 0 adds the noise, once per logical step, to its sum; the ranks' sums
(divided by the global ``q * n``) are then added up. So the group releases ``(sum of every clipped
gradient + one draw of N(0, (sigma C)^2)) / (q n)`` per step, which is what the accountant is told, with
the global ``q``, ``n``, step count and empty batches: the ledger entry is the single-process one.

Randomness and known limitations:

* The batches are drawn from a torch generator seeded by ``(settings.seed, round_)``, so a run is
  reproducible. Privacy amplification by subsampling assumes the adversary does not know which
  sequences were sampled: ``settings.seed`` must be secret to the institution (not a seed chosen by
  the server and shared with everyone).
* The noise comes from a cryptographic generator, not from torch's:
  :class:`secfed.dp.csprng.AesCtrGaussian` (the keystream of AES-256 in CTR mode under a fresh
  ``os.urandom(32)`` key per round, turned into 53-bit uniforms and then normals by Box-Muller in
  float64; each coordinate gets ``sigma * C * (Z1 + Z2 + Z3 + Z4) / 2``, the sum of four keeping
  Opacus's ``secure_mode`` countermeasure to the floating-point attacks on Gaussian samplers). It is
  hooked in by overriding ``add_noise`` in a subclass of Opacus's ``DPOptimizer``, so clipping, the
  step hook, empty batches and the divisor after the noise are Opacus's code as before; Opacus's
  ``generator`` and ``secure_mode`` (which needs ``torchcsprng``, unusable with our torch) are unused.
  Knowing or resetting torch's seeds, or recovering the state of torch's generators (624 outputs of
  its Mersenne Twister suffice), tells nothing about the noise. ``noise_seed`` derives the AES key
  from an integer (HKDF-SHA256) so that tests can reproduce the noise: for tests only, it removes the
  privacy.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from secfed import cancel
from secfed.data.formats import Record
from secfed.data.prompts import TokenizedExample, collate, tokenize_example
from secfed.dp.csprng import AesCtrGaussian
from secfed.model.train import (
    ALONE,
    DataParallel,
    TrainSettings,
    TrainStats,
    seed_dropout,
    sequence_mean_loss,
)

__all__ = ["DpRoundEvent", "DpSettings", "dp_train_steps", "per_sample_gradients", "train_local_dp"]

# The first LoRA layer's input (the frozen embeddings) needs no gradient, so torch notes that the full
# backward hook Opacus registers sees only output gradients, which is all Opacus uses. Filtered once, by
# message, at import: catch_warnings() around each call is not thread-safe (clients run as threads).
warnings.filterwarnings(
    "ignore",
    message=r"Full backward hook is firing when gradients are computed with respect to module outputs "
    r"since no inputs require gradients",
)

# Attributes Opacus leaves on modules (activations of a forward with no backward, batch size) and on
# parameters (DPOptimizer's running sum); GradSampleHooks.cleanup() removes only its own param attrs.
_MODULE_ATTRS = ("activations", "max_batch_len")
_PARAM_ATTRS = ("summed_grad", "grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample")


def _finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class DpSettings:
    """The DP-SGD mechanism of one institution's local training.

    ``noise_multiplier`` is sigma (noise std over the clipping norm); 0 means no noise and no privacy,
    allowed only so that tests and benchmarks can isolate clipping. ``max_grad_norm`` is the per-sample
    clipping norm C, ``expected_batch_size`` the Poisson logical batch size B, and ``max_physical_batch``
    how many sequences go through the model at once (memory, not privacy).
    """

    noise_multiplier: float
    max_grad_norm: float
    expected_batch_size: int
    max_physical_batch: int = 4

    def __post_init__(self) -> None:
        if not _finite_number(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not _finite_number(self.max_grad_norm) or not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be a finite number > 0, got {self.max_grad_norm!r}")
        if not _positive_int(self.expected_batch_size):
            raise ValueError(f"expected_batch_size must be an integer >= 1, got {self.expected_batch_size!r}")
        if not _positive_int(self.max_physical_batch):
            raise ValueError(f"max_physical_batch must be an integer >= 1, got {self.max_physical_batch!r}")

    def sample_rate(self, n_records: int) -> float:
        """The Poisson rate the loader uses for ``n_records``: ``1 / ceil(n / B)``, i.e. ``1 / len(loader)``
        of a loader with batch size B (as Opacus derives it), which is 1 when ``B >= n``."""
        if not _positive_int(n_records):
            raise ValueError(f"n_records must be an integer >= 1, got {n_records!r}")
        return 1.0 / math.ceil(n_records / self.expected_batch_size)


@dataclass(frozen=True)
class DpRoundEvent:
    """One institution's DP release for one round: what its privacy ledger records and accounts."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    expected_batch_size: int
    n_records: int
    empty_batches: int


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (apply LoRA first)")
    return params


def _frozen_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the frozen parameters' names and bytes, without copying CPU tensors (the base is
    most of the process's memory; a copy of its largest matrix would add to DP's peak)."""
    digest = hashlib.sha256(b"secfed-dp-frozen-v1\x00")
    for name, p in model.named_parameters():
        if p.requires_grad:
            continue
        data = p.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(f"{name}:{p.dtype}:{tuple(p.shape)}\x00".encode())
        digest.update(data.numpy().data)  # the buffer itself, no bytes copy
    return digest.hexdigest()


def _attach(model: torch.nn.Module) -> Any:
    """Opacus per-sample-gradient hooks on ``model`` itself (no wrapper module), mean reduction."""
    from opacus.grad_sample import GradSampleHooks

    if hasattr(model, "autograd_grad_sample_hooks"):
        raise ValueError("the model already carries Opacus hooks (another DP run on it has not finished)")
    hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean", strict=True)
    # A second backward without an optimizer step would stack grad samples of two batches; refuse it.
    hooks.forbid_grad_accumulation()
    return hooks


def _detach(model: torch.nn.Module, hooks: Any) -> None:
    """Remove every hook and attribute Opacus added, so the model trains (DP or not) and saves as before."""
    hooks.cleanup()
    for module in model.modules():
        for attr in _MODULE_ATTRS:
            if attr in module.__dict__:
                delattr(module, attr)
    for p in model.parameters():
        for attr in _PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


def _physical_forward(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Per-sequence losses of one (non-empty) physical batch, and its number of real tokens."""
    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sequence_mean_loss(out.logits, batch["labels"]), int(batch["attention_mask"].sum())


def per_sample_gradients(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], pad_token_id: int
) -> torch.Tensor:
    """Each example's gradient of its own sequence loss, shape ``(len(examples), n_trainable)``.

    Computed in one batch by exactly the hooks, loss and reduction :func:`train_local_dp` uses (rows
    flattened in ``model.parameters()`` order), so tests and audits can check what the clipper sees.
    The model is put in train mode (Opacus records activations only there) and restored afterwards.
    """
    if not examples:
        raise ValueError("no examples")
    params = _trainable(model)
    device = params[0].device
    was_training = model.training
    hooks = _attach(model)
    try:
        model.train()
        per_seq, _ = _physical_forward(model, examples, pad_token_id, device)
        per_seq.mean().backward()  # type: ignore[no-untyped-call]
        rows = [p.grad_sample.detach().reshape(len(examples), -1) for p in params]  # type: ignore[attr-defined]
        return torch.cat(rows, dim=1).clone()
    finally:
        _detach(model, hooks)
        model.train(was_training)


class _StepHook:
    """Counts the optimizer's real (noised) steps; Opacus calls it once per logical batch."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _optimizer: object) -> None:
        self.count += 1


def _base_optimizer(params: list[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer DP-SGD's noised gradient feeds, the same as :func:`secfed.model.train.train_local`'s."""
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


@functools.cache
def _csprng_dp_optimizer() -> Any:
    """:class:`opacus.optimizers.DPOptimizer` with its noise drawn from :class:`AesCtrGaussian`.

    Only ``add_noise`` is replaced, by Opacus's own body with the noise source swapped (noise of std
    ``noise_multiplier * max_grad_norm`` on every coordinate of ``summed_grad``, none when that std is
    0), so everything else (clipping, virtual steps, the step hook, ``scale_grad``'s divisor after the
    noise) stays Opacus's code. Built on first use: importing Opacus takes over a second.

    In a group of ranks (``parallel``), as Opacus's ``DistributedDPOptimizer`` does: rank 0 alone holds
    a noise source and adds the step's noise to its own sum, the other ranks pass their sums on
    unnoised, and ``step`` adds up the ranks' (divided) gradients before the update. Unlike Opacus's,
    the divisor is the global expected batch size, so nothing is divided by the world size afterwards.
    """
    from opacus.optimizers import DPOptimizer
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    class CsprngDPOptimizer(DPOptimizer):  # type: ignore[misc]  # opacus is untyped
        def __init__(
            self,
            *args: Any,
            noise_source: AesCtrGaussian | None,
            parallel: DataParallel = ALONE,
            **kwargs: Any,
        ) -> None:
            if kwargs.get("generator") is not None or kwargs.get("secure_mode"):
                raise ValueError("the noise comes from noise_source; torch generators are not used")
            if (noise_source is None) != (parallel.rank != 0):
                raise ValueError(
                    "rank 0 draws each step's noise for the whole group, and no other rank does: "
                    f"rank {parallel.rank} was given {'no' if noise_source is None else 'a'} noise_source"
                )
            super().__init__(*args, **kwargs)
            self.noise_source = noise_source
            self.parallel = parallel

        def add_noise(self) -> None:
            std = float(self.noise_multiplier * self.max_grad_norm)
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                summed: torch.Tensor = p.summed_grad
                if self.noise_source is None:  # rank 0 adds this step's noise to the group's sum
                    p.grad = summed.view_as(p)
                else:
                    noise = self.noise_source.gaussian(
                        summed.shape, std=std, dtype=summed.dtype, device=summed.device
                    )
                    p.grad = (summed + noise).view_as(p)
                _mark_as_processed(p.summed_grad)

        def step(self, closure: Any = None) -> Any:
            if closure is not None:
                with torch.enable_grad():
                    closure()
            if not self.pre_step():
                return None  # a physical batch inside a logical one: clipped and summed only
            self.parallel.reduce_gradients(self.params)
            return self.original_optimizer.step()

    return CsprngDPOptimizer


def _sampling_generator(seed: int, round_: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, round_, 0x5D9]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


class _Shares:
    """The global Poisson batches, each cut to this rank's share; counts the empty *global* batches
    (the ledger's count, the same on every rank and as in a single process)."""

    def __init__(self, batches: Iterable[list[int]], parallel: DataParallel) -> None:
        self._batches = batches
        self._parallel = parallel
        self.empty = 0

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches:
            if not batch:
                self.empty += 1
            yield self._parallel.share(batch)


def _noise_source(noise_seed: int | None) -> AesCtrGaussian:
    return AesCtrGaussian() if noise_seed is None else AesCtrGaussian.from_test_seed(noise_seed)


def train_local_dp(
    model: torch.nn.Module,
    tokenizer: object,
    records: Sequence[Record],
    settings: TrainSettings,
    dp: DpSettings,
    *,
    round_: int = 0,
    progress: bool = True,
    desc: str = "local DP training",
    noise_seed: int | None = None,
) -> tuple[TrainStats, DpRoundEvent]:
    """DP-SGD on the trainable (LoRA) parameters of ``model`` over ``records``; see the module docstring.

    Takes ``settings.dp_steps_for(n, B)`` logical steps, each one Poisson batch of expected size
    ``dp.expected_batch_size``; ``settings.batch_size`` and ``grad_accum`` are replaced by the DP batch
    settings (when ``settings.epochs`` is set, steps are counted with batch size B). Returns the usual
    training statistics (local only: the losses are not differentially private) and the
    :class:`DpRoundEvent` to record in the privacy ledger. Raises ``RuntimeError`` if a frozen weight
    changed or the number of noised steps is not the number planned.

    The noise is drawn from :class:`secfed.dp.csprng.AesCtrGaussian` under a fresh ``os.urandom`` key.
    ``noise_seed`` is for tests only: it keys the noise stream with a key derived from that integer,
    so the noise is reproducible by anyone who knows it and the round has no privacy.

    In rank 0 of a torchrun group (:func:`secfed.model.distributed.leader_group`) every rank of the
    group trains with it (see the module docstring); the noise is still drawn here, once per step.
    """
    if not isinstance(dp, DpSettings):
        raise TypeError(f"dp must be DpSettings, got {type(dp).__name__}")
    if not records:
        raise ValueError("no training records")
    from secfed.model.distributed import leader_group

    group = leader_group()
    if group is not None:
        return group.train_dp(
            model,
            tokenizer,
            records,
            settings,
            dp,
            round_=round_,
            progress=progress,
            desc=desc,
            noise_seed=noise_seed,
        )
    return dp_train_steps(
        model,
        tokenizer,
        records,
        settings,
        dp,
        round_=round_,
        parallel=ALONE,
        progress=progress,
        desc=desc,
        noise_seed=noise_seed,
    )


def dp_train_steps(
    model: torch.nn.Module,
    tokenizer: object,
    records: Sequence[Record],
    settings: TrainSettings,
    dp: DpSettings,
    *,
    round_: int,
    parallel: DataParallel,
    progress: bool,
    desc: str,
    noise_seed: int | None,
) -> tuple[TrainStats, DpRoundEvent]:
    """The DP-SGD loop of :func:`train_local_dp`, for this rank's share of every Poisson batch of
    ``parallel``; only rank 0 draws noise (``noise_seed`` is ignored elsewhere). The statistics and the
    event are the group's."""
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler
    from torch.utils.data import DataLoader

    params = _trainable(model)
    device = params[0].device
    examples: list[TokenizedExample] = [
        tokenize_example(r, tokenizer, style=settings.style, max_length=settings.max_length) for r in records
    ]
    n = len(examples)
    pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
    steps = settings.dp_steps_for(n, dp.expected_batch_size)
    sampler = UniformWithReplacementSampler(
        num_samples=n,
        sample_rate=dp.sample_rate(n),
        generator=_sampling_generator(settings.seed, round_),
        steps=steps,
    )
    shares = _Shares(sampler, parallel)
    # The dataset is the indices; each physical batch of indices is collated into tokens below.
    indices: Any = list(range(n))  # a map-style dataset; torch's stubs want a Dataset subclass
    loader: DataLoader[int] = DataLoader(indices, batch_sampler=shares, collate_fn=list)
    noise_source = _noise_source(noise_seed) if parallel.rank == 0 else None
    seed_dropout(settings.seed, round_, parallel.rank)

    frozen_before = _frozen_digest(model)
    step_hook = _StepHook()
    step_losses: list[float] = []  # per logical step: this rank's loss sum, then its sequence count
    sequences = tokens = 0
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, file=sys.stderr)
    hooks = _attach(model)  # from here on, the finally below removes them whatever happens
    started = time.perf_counter()
    try:
        optimizer = _csprng_dp_optimizer()(
            _base_optimizer(params, settings),
            noise_multiplier=float(dp.noise_multiplier),
            max_grad_norm=float(dp.max_grad_norm),
            expected_batch_size=n * float(sampler.sample_rate),
            loss_reduction="mean",
            noise_source=noise_source,
            parallel=parallel,
        )
        optimizer.attach_step_hook(step_hook)
        model.train()
        loss_sum, loss_count = 0.0, 0
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=dp.max_physical_batch, optimizer=optimizer
        ) as physical_loader:
            for chunk in physical_loader:
                cancel.check()
                if chunk:
                    per_seq, n_tokens = _physical_forward(model, [examples[i] for i in chunk], pad_id, device)
                    per_seq.mean().backward()  # type: ignore[no-untyped-call]
                    loss_sum += float(per_seq.detach().sum())
                    loss_count += len(chunk)
                    sequences += len(chunk)
                    tokens += n_tokens
                else:
                    # No sequence of this rank in the Poisson batch: no forward (HF cannot run on 0
                    # rows); zero-row per-sample gradients make the step below clip nothing and add the
                    # noise as usual (the batch may be empty for the whole group: counted in shares).
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
                done = step_hook.count
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step_hook.count > done:  # that physical batch ended a logical one
                    step_losses += [loss_sum, loss_count]
                    if loss_count and parallel.world_size == 1:
                        bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}")
                    loss_sum, loss_count = 0.0, 0
                    bar.update(1)
        seconds = time.perf_counter() - started
    finally:
        bar.close()
        if noise_source is not None:
            noise_source.close()
        _detach(model, hooks)
        model.eval()
    if step_hook.count != steps:
        raise RuntimeError(
            f"DP-SGD took {step_hook.count} noised steps, expected {steps}: accounting would be wrong"
        )
    if _frozen_digest(model) != frozen_before:
        raise RuntimeError("frozen (non-adapter) weights changed during DP training; the round is invalid")
    *step_losses, total_sequences, total_tokens = parallel.reduce_stats([*step_losses, sequences, tokens])
    losses = [
        total / count for total, count in zip(step_losses[::2], step_losses[1::2], strict=True) if count
    ]
    stats = TrainStats(
        steps=steps,
        sequences=int(total_sequences),
        tokens=int(total_tokens),
        seconds=seconds,
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
    )
    event = DpRoundEvent(
        noise_multiplier=float(dp.noise_multiplier),
        sample_rate=float(sampler.sample_rate),
        steps=step_hook.count,
        max_grad_norm=float(dp.max_grad_norm),
        expected_batch_size=dp.expected_batch_size,
        n_records=n,
        empty_batches=shares.empty,
    )
    return stats, event
