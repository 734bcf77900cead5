"""The coordinator's TensorBoard curves (``[tensorboard] logdir``): the event files hold exactly the
per-round cohort aggregates, at the round as global step, and nothing when the section is absent.

The files are read back without the ``tensorboard`` package: the TFRecord framing is parsed here (and
its CRC-32C checked with an implementation of our own), the records decoded with tensorboardX's
``Event`` message. ``simple_value`` is a float32, so expected values are rounded to float32 first.
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from secfed.fl.curves import eval_segments, loss_segments
from secfed.secagg.messages import AggregateResult
from secfed.tomlconfig import ConfigFileError
from server import runtime
from server.config import ServerConfig, load_server_config
from server.runtime import FederationServer
from server.tensorboard import TensorBoardCurves
from tests.federation.support import Federation, provision_kits, server_config

ROSTER = ("inst00", "inst01", "inst02")


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path) -> list[bytes]:
    """The records of one TFRecord file: length (u64 LE), its masked CRC, data, the data's masked CRC."""
    raw = path.read_bytes()
    out, at = [], 0
    while at < len(raw):
        header = raw[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", raw[at + 8 : at + 12])
        data = raw[at + 12 : at + 12 + length]
        (data_crc,) = struct.unpack("<I", raw[at + 12 + length : at + 16 + length])
        assert len(data) == length, "a torn record"
        assert header_crc == _masked(header) and data_crc == _masked(data)
        out.append(data)
        at += 16 + length
    return out


def _event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.rglob("events.out.tfevents.*"))


def _all_scalars(logdir: Path) -> list[tuple[str, int, float]]:
    """Every scalar of every event file in ``logdir`` as (tag, step, value), in the order written."""
    out = []
    for path in _event_files(logdir):
        for data in _records(path):
            event = Event.FromString(data)
            out += [(v.tag, int(event.step), v.simple_value) for v in event.summary.value]
    return out


def _scalars(logdir: Path) -> dict[tuple[str, int], float]:
    """The last value of each (tag, step), what TensorBoard's plot ends on at that step."""
    return {(tag, step): value for tag, step, value in _all_scalars(logdir)}


def _f32(value: float) -> float:
    return float(np.float32(value))


def _result(
    contributors: tuple[str, ...],
    dropped: tuple[str, ...],
    losses: list[tuple[float, float]],
    evals: tuple[float, ...] = (),
) -> AggregateResult:
    """A decoded cohort sum as the coordinator hands it over: a toy vector plus, if given, the loss
    and evaluation segments."""
    values: dict[str, np.ndarray] = {"x": np.arange(4, dtype=np.float64)}
    parts = [loss_segments(first, last) for first, last in losses] + [eval_segments(e) for e in evals]
    for part in parts:  # summed as secure aggregation would
        for name, segment in part.items():
            values[name] = values.get(name, np.zeros(1)) + segment
    return AggregateResult(b"s" * 16, contributors, dropped, np.zeros(4, dtype=np.uint64), values)


def test_the_crc_of_the_reader_checks_the_standard_vector() -> None:
    assert _crc32c(b"123456789") == 0xE3069283  # CRC-32C's published check value


def test_rounds_aborts_and_refusals_become_scalars_at_their_round(tmp_path: Path) -> None:
    curves = TensorBoardCurves(tmp_path / "tb")
    model = np.zeros(4, dtype=np.float32)
    first = _result(ROSTER, ("inst03",), [(2.0, 1.5), (3.5, 1.25), (1.0, 0.5)], evals=(2.5, 2.0, 1.25))
    curves.round_completed(0, first, model, 0.0, {"advertise": 0.25, "unmask": 1.5}, [])
    curves.client_refused(1, "inst03", "policy")
    curves.attempt_aborted(1, 1, "below threshold")
    curves.client_refused(1, "inst04", "budget")
    curves.round_completed(1, _result((*ROSTER[:2], "inst04"), (), []), model, 0.0, {"compute": 2.0}, [])
    curves.close()

    assert _scalars(tmp_path / "tb") == {
        ("round/seconds", 0): 1.75,  # the phases' seconds, as FederationMetrics reports it
        ("round/contributors", 0): 3.0,
        ("round/dropped", 0): 1.0,
        ("phase_seconds/advertise", 0): 0.25,
        ("phase_seconds/unmask", 0): 1.5,
        # The cohort mean: the secure sums divided by the count of contributors that sent a loss.
        ("loss/train_first", 0): _f32((2.0 + 3.5 + 1.0) / 3),
        ("loss/train_last", 0): _f32((1.5 + 1.25 + 0.5) / 3),
        ("loss/eval", 0): _f32((2.5 + 2.0 + 1.25) / 3),  # the received adapter, on held-out records
        ("refusals", 1): 2.0,  # cumulative: the round's second refusal ends the step on 2
        ("attempts/aborted", 1): 1.0,
        ("round/seconds", 1): 2.0,
        ("round/contributors", 1): 3.0,
        ("round/dropped", 1): 0.0,
        ("phase_seconds/compute", 1): 2.0,
        # round 1's sum carries no loss: no loss point rather than a made-up one
    }
    # Cohort aggregates only: no institution is named anywhere in the files.
    raw = b"".join(path.read_bytes() for path in _event_files(tmp_path / "tb"))
    assert not any(cid.encode() in raw for cid in (*ROSTER, "inst03", "inst04"))


def test_counters_are_cumulative_over_the_run(tmp_path: Path) -> None:
    curves = TensorBoardCurves(tmp_path)
    curves.client_refused(0, "inst00", "policy")
    curves.attempt_aborted(0, 1, "timeout")
    curves.client_refused(2, "inst01", "policy")
    curves.attempt_aborted(2, 1, "timeout")
    curves.attempt_aborted(2, 2, "timeout")
    curves.close()
    assert _all_scalars(tmp_path) == [
        ("refusals", 0, 1.0),
        ("attempts/aborted", 0, 1.0),
        ("refusals", 2, 2.0),
        ("attempts/aborted", 2, 2.0),
        ("attempts/aborted", 2, 3.0),
    ]


def test_nothing_is_written_after_close(tmp_path: Path) -> None:
    """A late event (the tick thread racing the server's stop) must not reopen a second event file."""
    curves = TensorBoardCurves(tmp_path)
    curves.close()
    curves.round_completed(
        0, _result(ROSTER, (), []), np.zeros(4, dtype=np.float32), 0.0, {"unmask": 1.0}, []
    )
    curves.attempt_aborted(0, 1, "late")
    curves.close()  # idempotent
    assert len(_event_files(tmp_path)) == 1 and _all_scalars(tmp_path) == []


# -- configuration ----------------------------------------------------------------------------------
_SERVER = '[server]\nkit = "k"\nroster = ["a","b","c"]\n'


def test_logdir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy" / "server.toml"
    path.parent.mkdir()
    path.write_text(_SERVER + '[tensorboard]\nlogdir = "state/tb"\n')
    assert load_server_config(path).tensorboard_dir == tmp_path / "deploy" / "state" / "tb"
    path.write_text(_SERVER + '[tensorboard]\nlogdir = "/srv/curves"\n')
    assert load_server_config(path).tensorboard_dir == Path("/srv/curves")


@pytest.mark.parametrize("section", ["", "[tensorboard]\n"])
def test_an_absent_section_or_logdir_turns_the_curves_off(tmp_path: Path, section: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(_SERVER + section)
    assert load_server_config(path).tensorboard_dir is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[tensorboard]\nlogdir = "tb"\nflush_secs = 5\n', r"tensorboard: unknown key\(s\) \['flush_secs'\]"),
        ('[tensorboard]\nlog_dir = "tb"\n', r"tensorboard: unknown key\(s\) \['log_dir'\]"),
        ("[tensorboard]\nlogdir = 3\n", r"tensorboard\.logdir: must be a str"),
        ('[tensorboard]\nlogdir = ""\n', r"tensorboard\.logdir: must name a directory"),
    ],
)
def test_a_bad_tensorboard_section_names_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(_SERVER + text)
    with pytest.raises(ConfigFileError, match=match) as err:
        load_server_config(path)
    assert str(path) in str(err.value)


def test_a_missing_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were not installed
    config = ServerConfig(listen="127.0.0.1:0", kit=tmp_path, state_db=tmp_path / "s", roster=ROSTER)
    assert runtime._tensorboard(config) is None
    with pytest.raises(ValueError, match=r"pip install 'secfed\[tensorboard\]'"):
        runtime._tensorboard(dataclasses.replace(config, tensorboard_dir=tmp_path / "tb"))
    assert not (tmp_path / "tb").exists()


# -- the server --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_kits(tmp_path_factory.mktemp("tb"), 3)


@pytest.mark.timeout(120)
def test_a_federation_writes_its_rounds_and_closes_the_file_on_stop(pki: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(
        server_config(pki, tmp_path / "run", ROSTER, rounds=2), tensorboard_dir=tmp_path / "tb"
    )
    fed = Federation(pki, FederationServer.start(config))
    for cid in ROSTER:
        fed.start_client(cid)
    assert fed.finish() == "completed 2 rounds"
    written = _all_scalars(tmp_path / "tb")  # after stop(): every record is whole and its CRCs check
    rounds = [(tag, step) for tag, step, _ in written if tag.startswith("round/")]
    assert len(rounds) == len(set(rounds)) == 3 * 2  # each completed round once, never again
    scalars = _scalars(tmp_path / "tb")
    assert scalars[("round/contributors", 0)] == scalars[("round/contributors", 1)] == 3.0
    assert scalars[("round/dropped", 0)] == scalars[("round/dropped", 1)] == 0.0
    assert scalars[("phase_seconds/unmask", 1)] >= 0.0
    assert not any(tag.startswith("loss/") for tag, _ in scalars)  # the toy task reports no loss
    assert fed.server.tensorboard is not None and fed.server.tensorboard.closed  # stop() closed it


def test_without_the_section_the_server_writes_no_event_file(pki: Path, tmp_path: Path) -> None:
    server = FederationServer.start(server_config(pki, tmp_path / "run", ROSTER, rounds=1))
    try:
        assert server.tensorboard is None
    finally:
        server.stop()
    assert _event_files(tmp_path) == [] and _event_files(pki) == []
