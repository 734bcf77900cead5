"""QLoRA: a quantized base is one federation-wide scheme, bound into the base identity, CUDA only.

The CUDA path itself runs in the GPU check; here: the scheme's validation and identity, the refusals a
CPU institution gives, and (through the loader's device-agnostic core, with bitsandbytes' CPU fallback)
that LoRA on a 4-bit base trains and keeps the full-precision adapter layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from secfed.fl.fedit import FeditClient, FeditOptions, FeditServer
from secfed.fl.policy import RefusalCategory, Refused
from secfed.model.loading import ModelLoadError, load_base_model
from secfed.model.quantization import (
    SCHEMES,
    QuantizationError,
    base_identity,
    check_scheme,
)
from secfed.model.settings import LoraSettings

BASE = "ab" * 32


def test_unknown_scheme_is_a_clear_task_option_error() -> None:
    with pytest.raises(ValueError, match=r"fedit-lora task option quantization: unknown quantization 'nf3'"):
        FeditOptions.from_mapping({"quantization": "nf3"})
    with pytest.raises(QuantizationError, match="use one of"):
        check_scheme(4)
    assert FeditOptions.from_mapping({"quantization": "nf4"}).quantization == "nf4"


def test_identity_binds_the_scheme_and_leaves_full_precision_unchanged() -> None:
    """Attack: a federation mixing a 4-bit and a 16-bit base averages adapters trained against different
    functions. Each scheme (and no scheme) must give a different identity for the same weights, and the
    same weights with the same scheme the same identity everywhere."""
    assert base_identity(BASE, None) == BASE
    identities = {base_identity(BASE, check_scheme(s)) for s in SCHEMES}
    assert len(identities) == len(SCHEMES) and BASE not in identities
    assert base_identity(BASE, "nf4") == base_identity(BASE, "nf4")
    assert base_identity(BASE, "nf4") != base_identity("cd" * 32, "nf4")
    assert all(len(i) == 64 and int(i, 16) >= 0 for i in identities)


def test_a_cpu_host_gets_a_clear_error_not_a_slow_or_networked_fallback(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nf4 quantized base model \(QLoRA\).*only on a CUDA GPU"):
        load_base_model(tiny_model_dir, device="cpu", quantization="nf4")


@pytest.fixture(scope="module")
def quantized_federation(tiny_model_dir: Path) -> tuple[FeditServer, dict[str, Any]]:
    server = FeditServer({"model": str(tiny_model_dir), "quantization": "nf4", "train": {"local_steps": 1}})
    return server, server.task_config(0)


def test_the_instruction_names_the_scheme_and_its_identity(
    quantized_federation: tuple[FeditServer, dict[str, Any]],
) -> None:
    server, config = quantized_federation
    assert config["quantization"] == "nf4"
    assert config["base_hash"] == base_identity(server.base.base_hash, "nf4") != server.base.base_hash


def test_an_institution_without_a_gpu_refuses_a_quantized_round(
    quantized_federation: tuple[FeditServer, dict[str, Any]], tiny_model_dir: Path
) -> None:
    _server, config = quantized_federation
    client = FeditClient(
        "inst00", {"model": str(tiny_model_dir), "device": "cpu", "data": "builtin", "n_clients": 2}
    )
    ins = client.instruction_type.parse(config)
    with pytest.raises(Refused) as err:
        client._ensure_model(ins)
    assert err.value.category is RefusalCategory.POLICY and err.value.field == "quantization"
    assert "CUDA GPU" in str(err.value)


def test_a_full_precision_institution_refuses_a_quantized_identity(
    quantized_federation: tuple[FeditServer, dict[str, Any]], tiny_model_dir: Path
) -> None:
    """Attack: the server claims a full-precision round but names the quantized base (or the reverse), so
    adapters trained on two different bases would be averaged. The identity check refuses."""
    _server, config = quantized_federation
    client = FeditClient("inst00", {"model": str(tiny_model_dir), "data": "builtin", "n_clients": 2})
    ins = client.instruction_type.parse({**config, "quantization": None})
    with pytest.raises(Refused) as err:
        client._ensure_model(ins)
    assert err.value.field == "base_hash"


def test_lora_on_a_4bit_base_trains_and_keeps_the_adapter_layout(tiny_model_dir: Path) -> None:
    """The device-agnostic core of the loader on CPU (bitsandbytes' fallback kernels; the public loader
    refuses CPU): the base is 4-bit, LoRA's parameters alone train, and the adapter vector has the layout
    and size of a full-precision base's, so the same secure-aggregation spec carries it."""
    from secfed.model.loading import _load_directory
    from secfed.model.lora import adapter_to_vector, apply_lora

    settings = LoraSettings(r=4, target_modules=("q_proj", "v_proj"))
    quantized, _tok = _load_directory(tiny_model_dir, "tiny", torch.device("cpu"), torch.float32, "nf4")
    layer = quantized.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"
    peft = apply_lora(quantized, settings)
    reference = apply_lora(load_base_model(tiny_model_dir, device="cpu").model, settings)
    before = adapter_to_vector(peft)
    assert before.shape == adapter_to_vector(reference).shape
    trainable = [p for p in peft.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    ids = torch.randint(3, 200, (2, 12))
    peft.train()
    for _ in range(2):
        optimizer.zero_grad()
        peft(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    after = adapter_to_vector(peft)
    assert np.all(np.isfinite(after)) and not np.array_equal(before, after)


def test_dp_sgd_per_sample_gradients_are_exact_on_a_4bit_base(tiny_model_dir: Path) -> None:
    """DP-SGD over a QLoRA adapter: Opacus' per-sample hooks see the LoRA layers inside bitsandbytes'
    4-bit linear layers, and each row equals that example's own gradient (what the clipper bounds)."""
    from secfed.data.formats import Record
    from secfed.data.prompts import tokenize_example
    from secfed.dp.sgd import per_sample_gradients
    from secfed.model.loading import _load_directory
    from secfed.model.lora import apply_lora

    model, tokenizer = _load_directory(tiny_model_dir, "tiny", torch.device("cpu"), torch.float32, "nf4")
    peft = apply_lora(model, LoraSettings(r=4, dropout=0.0))  # deterministic rows to compare
    records = [Record(f"say {i}", "", f"answer {i} " * (i + 1), "qa") for i in range(3)]
    examples = [tokenize_example(r, tokenizer) for r in records]
    rows = per_sample_gradients(peft, examples, tokenizer.pad_token_id)
    for i, example in enumerate(examples):
        alone = per_sample_gradients(peft, [example], tokenizer.pad_token_id)[0]
        assert torch.allclose(rows[i], alone, rtol=1e-4, atol=1e-6)
    assert len({round(float(r.norm()), 6) for r in rows}) == len(rows)


def test_the_exported_adapter_belongs_to_the_quantized_base(
    quantized_federation: tuple[FeditServer, dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The federation's adapter was trained against the 4-bit base: its stamp is the federation's
    identity, so loading it onto the full-precision base is refused with how to load the right one."""
    from secfed.model.lora import AdapterError, load_adapter, read_adapter_meta

    server, config = quantized_federation
    server.export(server.initial_model(), tmp_path)
    meta = read_adapter_meta(tmp_path / "adapter")
    assert meta["base_hash"] == config["base_hash"] and meta["quantization"] == "nf4"
    with pytest.raises(AdapterError, match=r"with quantization 'nf4' \(QLoRA, on a GPU\)"):
        load_adapter(load_base_model(tiny_model_dir, device="cpu"), tmp_path / "adapter")


def test_a_server_cannot_relabel_a_full_precision_run_as_quantized(tiny_model_dir: Path) -> None:
    """Attack: after a full-precision round, the server sends quantization "nf4" with the full-precision
    base identity. Admitting it would train full precision while the signed instruction, the audit trail
    and the saved adapter say nf4. The loaded base's scheme must match the instruction's."""
    client = FeditClient("inst00", {"model": str(tiny_model_dir), "data": "builtin", "n_clients": 2})
    plain = FeditServer({"model": str(tiny_model_dir), "train": {"local_steps": 1}}).task_config(0)
    client._ensure_model(client.instruction_type.parse(plain))
    with pytest.raises(Refused) as err:
        client._ensure_model(client.instruction_type.parse({**plain, "quantization": "nf4"}))
    assert err.value.category is RefusalCategory.INCONSISTENCY and err.value.field == "quantization"


def test_an_outdated_quantization_package_is_a_load_error_not_a_crash(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers refuses an old bitsandbytes with ImportError; the institution must refuse the round
    (ModelLoadError -> Refused), not die with a traceback."""
    import transformers

    from secfed.model.loading import _load_directory

    def outdated(*_args: Any, **_kwargs: Any) -> Any:
        raise ImportError("Using bitsandbytes 4-bit quantization requires bitsandbytes>=0.46.1")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", outdated)
    with pytest.raises(ModelLoadError, match=r"needs a newer package: Using bitsandbytes"):
        _load_directory(tiny_model_dir, "tiny", torch.device("cpu"), torch.float32, "nf4")


def test_an_installed_bitsandbytes_stays_quiet_in_a_full_precision_run() -> None:
    """peft imports bitsandbytes whenever it is installed, and bitsandbytes then looks for a CPU kernel on
    the Hugging Face Hub: offline, two warnings on every run, quantized or not. secfed silences them
    (it never runs bitsandbytes on a CPU) and keeps the Hub offline."""
    code = (
        "import sys, secfed.model\n"
        "from secfed.model.lora import apply_lora\n"
        "from secfed.model.settings import LoraSettings\n"
        "from secfed.model.tiny import tiny_llama\n"
        "apply_lora(tiny_llama().model, LoraSettings())\n"
        "print('bitsandbytes' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True", "the premise: peft imported bitsandbytes"
    assert "kernels-community" not in out.stderr, out.stderr
