"""Coreset selection (FedHDS) in which the server sees only secure-aggregated sums.

Per round, for the sampled cohort (docs/design-notes.md section 4):

1. ``features``: last-token hidden states of chosen layers, indices carried end to end.
2. ``space``: a public random projection seeded by the round, then federated PCA from summed
   statistics (stage ``coreset-pca``); the grid's range comes from the same sums.
3. ``local``: HDBSCAN on each client, weighted centroids (never leave the client).
4. ``grid``/``server``: occupancy flags per cell (``coreset-occupancy``) suppress cells of fewer than
   ``min_cohort`` institutions; counts and coordinate sums of the allowed cells
   (``coreset-histogram``) are clustered by the server (HDBSCAN, merged down to the budget).
5. ``election``: one anonymous representative per global cluster (``coreset-election-<k>``).
6. ``client``: each winner trains on its record nearest the cluster centre.

Every client-to-server message is a vector to be *summed*, with a public :class:`Layout`; every
server-to-client message is a public JSON-able broadcast. :func:`next_stage` is the whole server,
:class:`CoresetClient` the whole client, :func:`run_secure` an in-memory run where SecAgg is a plain
sum. :mod:`secfed.coreset.baselines` holds the INSECURE plaintext FedHDS and random baselines.
"""

from secfed.coreset.client import ClientSelection, CoresetClient, LocalView
from secfed.coreset.config import CoresetConfig
from secfed.coreset.election import SeededSlots, SlotSource
from secfed.coreset.layout import CohortSum, Contribution, Layout, SegmentInfo, sum_contributions
from secfed.coreset.pipeline import ClientData, SecureRun, run_secure
from secfed.coreset.server import SELECTION_STAGE, Selection, StagePlan, next_stage

__all__ = [
    "SELECTION_STAGE",
    "ClientData",
    "ClientSelection",
    "CohortSum",
    "Contribution",
    "CoresetClient",
    "CoresetConfig",
    "Layout",
    "LocalView",
    "SecureRun",
    "SeededSlots",
    "SegmentInfo",
    "Selection",
    "SlotSource",
    "StagePlan",
    "next_stage",
    "run_secure",
    "sum_contributions",
]
