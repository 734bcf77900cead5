"""Removing the masks from a sum of masked inputs: one definition for the server and for verifiers.

Given the survivors' self-mask seeds ``b_u`` and the dropped clients' mask keys ``s_d``, the sum of
the survivors' masked inputs becomes the sum of their inputs: each survivor's ``PRG(b_u)`` is
subtracted, and the pair masks between a dropped client and a survivor (which the survivor added, but
which its dropped partner never cancelled) are undone. The server runs it after reconstructing the
secrets from shares; a client verifying a stage's sum (:meth:`ClientSession.verify_sum`) runs the
same arithmetic on the secrets the server reveals, after checking each against its commitment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from secfed.crypto.agreement import AgreementError, agree, private_from_bytes
from secfed.crypto.prg import MaskAccumulator, Stream
from secfed.secagg import derive
from secfed.secagg.config import SessionConfig
from secfed.secagg.errors import Phase, UnmaskError
from secfed.secagg.graph import Neighbourhood


def remove_masks(
    total: NDArray[np.unsignedinteger],
    config: SessionConfig,
    session_id: bytes,
    *,
    survivors: Sequence[str],
    b_seeds: Mapping[str, bytes],
    mask_keys: Mapping[str, bytes],
    pk_mask: Mapping[str, bytes],
    graph: Neighbourhood,
) -> None:
    """Unmask ``total`` (the ring sum of the survivors' masked inputs) in place.

    ``mask_keys`` holds the raw mask private key of every dropped client (U2 minus the survivors),
    ``pk_mask`` every U2 member's advertised mask public key.
    """
    spec = config.spec
    n, bits, spec_hash = spec.total_length, spec.ring_bits, spec.spec_hash()
    streams = [
        Stream(b_seeds[v], session_id, derive.self_label(v, spec_hash, n, bits), -1) for v in survivors
    ]
    alive = frozenset(survivors)
    for u, raw_key in mask_keys.items():
        private = private_from_bytes(raw_key)
        pos_u = config.position(u)
        for v in sorted(graph.neighbours(u, alive), key=config.position):
            try:
                seed = agree(private, pk_mask[v])
            except AgreementError as exc:
                raise UnmaskError(Phase.UNMASK, f"pair key agreement failed: {exc}", client_id=v) from exc
            v_first = config.position(v) < pos_u
            low, high = (v, u) if v_first else (u, v)
            # v added +PRG when it came first in roster order, -PRG otherwise: undo that.
            streams.append(
                Stream(
                    seed, session_id, derive.pair_label(low, high, spec_hash, n, bits), -1 if v_first else 1
                )
            )
    MaskAccumulator(total).add_all(streams)
