"""The client-side masking of Flower's SecAgg+, done with Flower's own primitives, for side-by-side timing.

It mirrors the masking stage of ``flwr.client.mod.secaggplus_mod`` (quantise, private mask, one
key agreement and one pairwise mask per neighbour, modular reduction) with the default ranges of
Flower's SecAgg+ workflow. Only the arithmetic is reproduced, not Flower's messaging. Imported lazily:
``flwr`` is an optional dependency (the ``bench`` extra).
"""

from __future__ import annotations

import os
import time

import numpy as np

FLOWER_MOD_RANGE = 2**32
FLOWER_QUANT_RANGE = 2**22
FLOWER_CLIP = 8.0


def flower_client_mask_seconds(vector: np.ndarray, n_neighbours: int) -> float:
    """Seconds for one client to quantise and mask ``vector`` against ``n_neighbours`` peers, Flower's way."""
    try:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import generate_key_pairs
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "--compare flower needs the optional 'flwr' package: pip install 'secfed[bench]'"
        ) from exc

    own_private, _ = generate_key_pairs()
    peer_publics = [generate_key_pairs()[1] for _ in range(n_neighbours)]
    rd_seed = os.urandom(32)
    my_id = n_neighbours // 2
    start = time.perf_counter()
    params = quantize([vector], FLOWER_CLIP, FLOWER_QUANT_RANGE)
    dims = [a.shape for a in params]
    params = parameters_addition(params, pseudo_rand_gen(rd_seed, FLOWER_MOD_RANGE, dims))
    for peer_id, public in enumerate(peer_publics):
        shared = generate_shared_key(own_private, public)
        pairwise = pseudo_rand_gen(shared, FLOWER_MOD_RANGE, dims)
        if my_id > peer_id:
            params = parameters_addition(params, pairwise)
        else:
            params = parameters_subtraction(params, pairwise)
    parameters_mod(params, FLOWER_MOD_RANGE)
    return time.perf_counter() - start
