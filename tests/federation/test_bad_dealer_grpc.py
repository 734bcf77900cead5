"""Over real mutual-TLS gRPC: a round an inconsistent dealing broke at unmask completes in the retry.

The dealer-fault proof travels in the retry's RoundStart; every member checks it against its CA and
re-releases its input only into the first survivors minus the proven dealer. Before, the retry was
refused by the no-differencing rule and the run stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.federation.support import rounds_log, start_federation
from tests.secagg.support import corrupt_dealing

pytestmark = pytest.mark.timeout(120)


def test_the_retry_after_a_proven_dealer_completes_over_the_wire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = start_federation(tmp_path, 5, rounds=1, max_attempts=2)
    dealer = "inst04"
    with corrupt_dealing(monkeypatch, None, dealer, kind="b", victims=None, signed=True):
        for i in range(5):
            fed.start_client(f"inst{i:02d}")
        reason = fed.finish()
    assert reason == "completed 1 rounds"
    (record,) = rounds_log(fed)
    assert record["contributors"] == ["inst00", "inst01", "inst02", "inst03"]
    for cid, holder in fed.clients.items():
        if cid != dealer:
            assert holder.error is None and holder.report is not None
            assert holder.report.rounds_completed == [0]
