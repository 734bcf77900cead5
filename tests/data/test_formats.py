"""Loading Dolly/Alpaca files: valid layouts parse, every broken record is reported by file, line, field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from secfed.data.formats import MAX_REPORTED, DataFormatError, Record, load_records, records_from_dataset

DOLLY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dolly15k-shepherd10"


def _dolly_dir() -> Path:
    # Not a skip: CI provides the data, and a silently skipped check would hide a broken checkout.
    if not (DOLLY / "client_0.json").is_file():
        pytest.fail(
            f"reference data missing: expected the Dolly split in {DOLLY} (shared/data next to the repo)"
        )
    return DOLLY


def _write_jsonl(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_dolly_json_parses(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": ""},
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    records = load_records(path)
    assert records == [
        Record("Name a colour.", "", "Blue.", "open_qa", source=f"{path}:[0]"),
        Record("Summarise.", "A long text.", "Short.", "uncategorized", source=f"{path}:[1]"),
    ]


def test_alpaca_jsonl_parses_and_ignores_blank_lines_and_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": 7})
        + "\n\n"
        + json.dumps({"instruction": "Translate.", "input": "Hallo", "output": "Hello", "category": "mt"})
        + "\n",
        encoding="utf-8",
    )
    records = load_records(str(path))
    assert [(r.instruction, r.context, r.response, r.category) for r in records] == [
        ("Add 2 and 3.", "", "5", "uncategorized"),
        ("Translate.", "Hallo", "Hello", "mt"),
    ]
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]


def test_max_records(tmp_path: Path) -> None:
    rows = [{"instruction": f"q{i}", "response": f"a{i}"} for i in range(10)]
    jsonl = _write_jsonl(tmp_path / "m.jsonl", rows)
    as_json = tmp_path / "m.json"
    as_json.write_text(json.dumps(rows), encoding="utf-8")
    assert [r.instruction for r in load_records(jsonl, max_records=3)] == ["q0", "q1", "q2"]
    assert len(load_records(as_json, max_records=4)) == 4
    assert load_records(as_json, max_records=0) == []


def test_missing_response_names_file_line_field(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "data.jsonl", [{"instruction": "ok", "response": "fine"}, {"instruction": "x"}]
    )
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}:2: response: missing or not a string")
    assert len(err.value.issues) == 1


def test_non_string_instruction(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": 42, "response": "r"}]), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"data\.json:\[0\]: instruction: must be a string, got int"):
        load_records(path)


def test_empty_instruction_and_wrong_types(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(
        json.dumps(
            [{"instruction": "  ", "response": "r"}, {"instruction": "i", "response": "r", "category": 3}, 5]
        ),
        encoding="utf-8",
    )
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.splitlines()[0] == f"3 problems in {path}:"
    assert f"{path}:[0]: instruction: empty" in text
    assert f"{path}:[1]: category: must be a string, got int" in text
    assert f"{path}:[2]: record: must be a JSON object, got int" in text


def test_bad_json_line_in_jsonl_and_all_errors_collected(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"instruction": "a", "response": "b"}),
        json.dumps({"instruction": "a"}),
        '{"instruction": "a", "response": ',
        json.dumps({"instruction": ["a"], "output": "b"}),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.splitlines()[0] == f"3 problems in {path}:"
    assert f"{path}:2: response: missing or not a string" in text
    assert f"{path}:3: invalid JSON" in text
    assert f"{path}:4: instruction: must be a string, got list" in text
    assert [i.location for i in err.value.issues] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_json_syntax_error_reports_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(
        '[\n  {"instruction": "a", "response": "b"},\n  {"instruction": "a" "response": "b"}\n]\n'
    )
    with pytest.raises(DataFormatError, match=r"data\.json:3: invalid JSON"):
        load_records(path)


def test_json_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"instruction": "a", "response": "b"}), encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"data\.json:1: top level must be a JSON list of objects, got object"
    ):
        load_records(path)


def test_error_list_is_capped_but_counts_everything(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "many.jsonl", [{"instruction": "i"}] * 50)
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    assert len(err.value.issues) == MAX_REPORTED
    assert err.value.total == 50
    assert str(err.value).splitlines()[0] == f"50 problems in {path}:"
    assert "... and 30 more" in str(err.value)


def test_unsupported_suffix_and_bad_encoding(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("instruction,response\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"unsupported file type '\.csv'"):
        load_records(csv)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"instruction": "a", "response": "b"}\n{"instruction": "caf\xe9", "response": "b"}\n')
    with pytest.raises(DataFormatError, match=r"latin\.jsonl:2: not valid UTF-8"):
        load_records(latin)


def test_line_separator_inside_a_jsonl_string_is_not_a_line_break(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_text(
        json.dumps({"instruction": "a\u2028b", "response": "c"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert load_records(path)[0].instruction == "a\u2028b"


def test_records_from_dataset_list_and_hf_dataset() -> None:
    rows = [
        {"instruction": "i", "input": "c", "output": "o"},
        {"instruction": "j", "response": "r", "category": "k"},
    ]
    records = records_from_dataset(rows, name="mine")
    assert [(r.context, r.response, r.category, r.source) for r in records] == [
        ("c", "o", "uncategorized", "mine:[0]"),
        ("", "r", "k", "mine:[1]"),
    ]
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {"instruction": "i", "context": "", "response": "r", "category": "a"},
            {"instruction": "j", "context": "", "response": "", "category": "b"},
        ]
    )
    with pytest.raises(DataFormatError, match=r"hf:\[1\]: response: empty"):
        records_from_dataset(ds, name="hf")
    assert len(records_from_dataset(ds.select([0]))) == 1


def test_real_dolly_client_and_test_split_load() -> None:
    base = _dolly_dir()
    client = load_records(base / "client_0.json")
    test = load_records(base / "test.json")
    assert len(client) == 1493
    assert len(test) == 80
    assert all(r.instruction and r.response and r.category for r in client + test)
    assert client[0].source.endswith("client_0.json:[0]")
