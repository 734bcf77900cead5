"""The base model, its LoRA adapter and local training, strictly offline.

Importing this package defaults ``HF_HUB_OFFLINE`` to 1 (an explicit setting is respected) before any
Hugging Face library is imported through it: secfed never downloads weights at run time, and the
environment variable makes the hub client fail fast instead of trying the network. Every load also
passes ``local_files_only=True``, which is the guarantee that holds even if the hub was imported first.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# bitsandbytes (the qlora extra), which peft imports whenever it is installed, looks for an optional CPU
# kernel on the Hugging Face Hub when it is imported; offline (above) it only logs two warnings. secfed
# never runs bitsandbytes on a CPU (secfed.model.quantization refuses it), so they would only alarm users
# of every run, quantized or not.
for _noisy in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
