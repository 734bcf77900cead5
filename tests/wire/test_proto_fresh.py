"""The committed generated modules are exactly what scripts/gen-proto makes from the committed .proto.

Fails when someone edits proto/secfed/proto/v1/federation.proto without regenerating (or hand-edits a
generated module). The fix is always the same: run scripts/gen-proto and commit its output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "secfed" / "proto" / "v1" / "federation.proto"
GENERATED = ("federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py")
PACKAGE = Path("secfed") / "proto" / "v1"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen-proto")
    run = subprocess.run(
        [str(ROOT / "scripts" / "gen-proto"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return out / PACKAGE


@pytest.mark.parametrize("name", GENERATED)
def test_generated_module_is_up_to_date(regenerated: Path, name: str) -> None:
    committed = (ROOT / PACKAGE / name).read_bytes()
    fresh = (regenerated / name).read_bytes()
    assert committed == fresh, f"{PACKAGE / name} is stale: run scripts/gen-proto and commit the result"


def test_contract_is_versioned_and_loads_on_the_pinned_runtime() -> None:
    assert "package secfed.v1;" in PROTO.read_text(encoding="utf-8")
    from secfed.proto.v1 import federation_pb2 as pb
    from secfed.proto.v1 import federation_pb2_grpc as pb_grpc

    assert pb.DESCRIPTOR.package == "secfed.v1"
    service = pb.DESCRIPTOR.services_by_name["Federation"]
    assert {m.name for m in service.methods} == {"Join", "Poll", "Upload", "Download", "Heartbeat"}
    upload, download = service.methods_by_name["Upload"], service.methods_by_name["Download"]
    assert upload.client_streaming and not upload.server_streaming
    assert download.server_streaming and not download.client_streaming
    assert hasattr(pb_grpc, "FederationStub") and hasattr(pb_grpc, "add_FederationServicer_to_server")
