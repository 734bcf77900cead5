"""The base model, its LoRA adapter and local training, strictly offline.

Importing this package defaults ``HF_HUB_OFFLINE`` to 1 (an explicit setting is respected) before any
Hugging Face library is imported through it: secfed never downloads weights at run time, and the
environment variable makes the hub client fail fast instead of trying the network. Every load also
passes ``local_files_only=True``, which is the guarantee that holds even if the hub was imported first.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
