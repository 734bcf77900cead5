"""Log lines for operators: key=value or JSON, to stderr and optionally a rotated file.

What it defends: a log shipper needs one parseable object per line, and a client-supplied string (an
id, an error text) must not be able to break a line or forge another entry in either format; a log
file must not grow without bound; a log path that cannot be written is a clear error at start-up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from secfed import cli, logs

log = logging.getLogger("secfed.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Leave the "secfed" logger as the test found it (other tests capture its records)."""
    root = logging.getLogger("secfed")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    logs.configure()  # closes the file handlers this test opened
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers, level, propagate = saved
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = propagate


def test_json_lines_parse_and_keep_hostile_fields_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "secfed.log"
    logs.configure(line_format="json", file=path)
    forged = 'x"\n2026-01-01T00:00:00 level=info event=forged'
    logs.event(log, "client-joined", client=forged, round=3, ratio=0.5, path=tmp_path)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "client-joined" and first["client"] == forged
    assert first["round"] == 3 and first["ratio"] == 0.5 and first["path"] == str(tmp_path)
    assert first["level"] == "info" and first["logger"] == "secfed.test"
    assert second["event"] == "failed" and "RuntimeError: boom" in second["exc"]


def test_text_lines_keep_the_key_value_format_and_its_escaping(tmp_path: Path) -> None:
    path = tmp_path / "secfed.log"
    logs.configure(file=path)
    logs.event(log, "client-joined", client='a b"\nc')
    (line,) = path.read_text(encoding="utf-8").splitlines()
    assert " event=client-joined " in line and line.endswith('client="a b\\"\\nc"')


def test_the_log_file_rotates_and_keeps_the_stated_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "secfed.log"
    logs.configure(file=path, max_bytes=2048, backups=2)
    for i in range(200):
        logs.event(log, "tick", i=i, padding="x" * 40)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["secfed.log", "secfed.log.1", "secfed.log.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())


def test_reconfiguring_replaces_the_handlers_instead_of_doubling_them(tmp_path: Path) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    logs.configure(file=first)
    logs.configure(file=second)
    logs.event(log, "once")
    assert not first.read_text() and second.read_text().count("event=once") == 1


def test_a_log_path_that_cannot_be_written_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    code = cli.main(["--log-file", str(blocker / "secfed.log"), "certs", "check", str(tmp_path)])
    assert code == 2
    assert "cannot set up logging" in capsys.readouterr().err


def test_json_lines_stay_valid_json_whatever_a_field_holds(tmp_path: Path) -> None:
    """Found by an attacker review: NaN was written as ``NaN`` (not JSON) and a dict with non-string
    keys raised into the caller; a field named ``exc`` must not pose as the logged traceback."""
    path = tmp_path / "secfed.log"
    logs.configure(line_format="json", file=path)
    logs.event(log, "odd", ratio=float("nan"), table={1: "a"}, exc="not a traceback")
    (line,) = path.read_text(encoding="utf-8").splitlines()
    parsed = json.loads(line)
    assert parsed["ratio"] == "nan" and parsed["event"] == "odd" and "exc" in parsed
