"""Loading institution data (JSON, JSONL, CSV, Parquet, datasets directories): valid layouts parse, every
broken record is reported by file, line or row, and field."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from secfed.data.formats import (
    MAX_REPORTED,
    DataFileNotFoundError,
    DataFormatError,
    Record,
    load_records,
    records_from_dataset,
)

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
    txt = tmp_path / "data.txt"
    txt.write_text("instruction,response\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"unsupported file type '\.txt'"):
        load_records(txt)
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


# --- CSV, Parquet and datasets directories -------------------------------------------------------------

DOLLY_ROWS: list[dict[str, Any]] = [
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "open_qa"},
    {"instruction": "Summarise.", "context": "Line one,\nline two.", "response": "Short.", "category": ""},
]
EXPECTED = [
    ("Name a colour.", "", "Blue.", "open_qa"),
    ("Summarise.", "Line one,\nline two.", "Short.", "uncategorized"),
]


def _fields(records: Sequence[Record]) -> list[tuple[str, str, str, str]]:
    return [(r.instruction, r.context, r.response, r.category) for r in records]


def _write_csv(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], encoding: str = "utf-8"
) -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_dict_csv(path: Path, rows: Sequence[Mapping[str, str]]) -> Path:
    header = list(rows[0])
    return _write_csv(path, header, [[row[h] for h in header] for row in rows])


def _write_parquet(path: Path, rows: Sequence[Mapping[str, Any]], schema: Any = None) -> Path:
    pq.write_table(pa.Table.from_pylist(list(rows), schema=schema), path)
    return path


def _save_dataset(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    from datasets import Dataset

    Dataset.from_list(list(rows)).save_to_disk(str(path))
    return path


def _save_dataset_dict(path: Path, splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_list(list(rows)) for name, rows in splits.items()}).save_to_disk(
        str(path)
    )
    return path


def test_csv_parses_with_header_as_row_one(tmp_path: Path) -> None:
    # utf-8-sig: the BOM a spreadsheet writes must not end up in the first column's name.
    path = _write_csv(
        tmp_path / "d.csv",
        ["instruction", "context", "response", "category"],
        [list(DOLLY_ROWS[0].values()), [], list(DOLLY_ROWS[1].values()), ["", "", "", ""]],
        encoding="utf-8-sig",
    )
    records = load_records(path)
    assert _fields(records) == EXPECTED
    # Row 3 is blank, row 4 holds a field spanning two lines (still one row), row 5 is all-empty.
    assert [r.source for r in records] == [f"{path}:2", f"{path}:4"]


def test_csv_alpaca_columns_and_max_records(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "a.csv",
        ["instruction", "input", "output"],
        [[f"q{i}", f"c{i}", f"a{i}"] for i in range(5)],
    )
    assert _fields(load_records(path, max_records=2)) == [
        ("q0", "c0", "a0", "uncategorized"),
        ("q1", "c1", "a1", "uncategorized"),
    ]
    assert load_records(path, max_records=0) == []


def test_csv_errors_name_file_row_and_field(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "bad.csv",
        ["instruction", "response"],
        [["ok", "fine"], ["x", " "], ["only one field"], ["", "r"]],
    )
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.splitlines()[0] == f"3 problems in {path}:"
    assert f"{path}:3: response: empty" in text
    assert f"{path}:4: row: has 1 fields, the header has 2" in text
    assert f"{path}:5: instruction: empty" in text


def test_csv_without_header_names_the_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "noheader.csv"
    path.write_text("What is 2+2?,4\nWhat is 3+3?,6\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.splitlines()[0] == f"2 problems in {path}:"
    assert f"{path}:1: instruction: no such column; the data has columns 'What is 2+2?', '4'" in text
    assert f"{path}:1: response: no such column (or Alpaca 'output')" in text
    assert "first row must be a header" in text


def test_csv_empty_file_and_header_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"empty\.csv:1: no header row"):
        load_records(empty)
    header_only = _write_csv(tmp_path / "h.csv", ["instruction", "response"], [])
    with pytest.raises(DataFormatError, match=r"h\.csv: no records after the header row"):
        load_records(header_only)


def test_csv_malformed_record_names_its_row(tmp_path: Path) -> None:
    # The csv module refuses fields over its size limit; the error must say where, not leak csv.Error.
    big = "x" * (csv.field_size_limit() + 1)
    path = _write_csv(tmp_path / "big.csv", ["instruction", "response"], [["a", "b"], ["a", big]])
    with pytest.raises(DataFormatError, match=r"big\.csv:3: malformed CSV: field larger than field limit"):
        load_records(path)


def test_parquet_parses_and_reads_row_indices(tmp_path: Path) -> None:
    path = _write_parquet(tmp_path / "d.parquet", [{**row, "extra": 1} for row in DOLLY_ROWS])
    records = load_records(path)
    assert _fields(records) == EXPECTED
    assert [r.source for r in records] == [f"{path}:[0]", f"{path}:[1]"]
    assert len(load_records(path, max_records=1)) == 1


def test_parquet_errors_name_file_row_and_field(tmp_path: Path) -> None:
    rows = [
        {"instruction": "a", "output": "1", "input": None},
        {"instruction": None, "output": "2", "input": "c"},
        {"instruction": "b", "output": "", "input": None},
    ]
    path = _write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.splitlines()[0] == f"2 problems in {path}:"
    assert f"{path}:[1]: instruction: missing or not a string" in text
    assert f"{path}:[2]: output: empty" in text
    typed = _write_parquet(tmp_path / "typed.parquet", [{"instruction": "a", "response": 5}])
    with pytest.raises(DataFormatError, match=r"typed\.parquet:\[0\]: response: must be a string, got int"):
        load_records(typed)


def test_parquet_unreadable_empty_and_missing_column(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataFormatError, match=r"garbage\.parquet: not a readable Parquet file"):
        load_records(garbage)
    schema = pa.schema([("instruction", pa.string()), ("response", pa.string())])
    empty = _write_parquet(tmp_path / "empty.parquet", [], schema=schema)
    with pytest.raises(DataFormatError, match=r"empty\.parquet: no rows"):
        load_records(empty)
    no_response = _write_parquet(tmp_path / "nr.parquet", [{"instruction": "a", "answer": "b"}])
    with pytest.raises(DataFormatError) as err:
        load_records(no_response)
    assert str(err.value).startswith(f"{no_response}: response: no such column (or Alpaca 'output')")
    assert "'answer'" in str(err.value)


def test_saved_dataset_directory_parses(tmp_path: Path) -> None:
    path = _save_dataset(tmp_path / "ds", DOLLY_ROWS)
    records = load_records(path)
    assert _fields(records) == EXPECTED
    assert [r.source for r in records] == [f"{path}:[0]", f"{path}:[1]"]
    assert len(load_records(str(path), max_records=1)) == 1


def test_saved_dataset_errors_name_directory_row_and_field(tmp_path: Path) -> None:
    path = _save_dataset(
        tmp_path / "bad",
        [{"instruction": "a", "response": "b"}, {"instruction": "c", "response": ""}],
    )
    with pytest.raises(DataFormatError, match=rf"^{_re(path)}:\[1\]: response: empty$"):
        load_records(path)
    empty = tmp_path / "empty"
    from datasets import Dataset

    Dataset.from_dict({"instruction": [], "response": []}).save_to_disk(str(empty))
    with pytest.raises(DataFormatError, match=rf"^{_re(empty)}: no rows$"):
        load_records(empty)


def test_dataset_dict_uses_train_split(tmp_path: Path) -> None:
    path = _save_dataset_dict(
        tmp_path / "dd",
        {"test": [{"instruction": "t", "response": "t"}], "train": [{"instruction": "tr", "response": ""}]},
    )
    with pytest.raises(DataFormatError, match=rf"^{_re(path / 'train')}:\[0\]: response: empty$"):
        load_records(path)
    good = _save_dataset_dict(tmp_path / "good", {"train": DOLLY_ROWS, "test": DOLLY_ROWS[:1]})
    records = load_records(good)
    assert _fields(records) == EXPECTED
    assert records[0].source == f"{good / 'train'}:[0]"


def test_dataset_dict_with_empty_splits(tmp_path: Path) -> None:
    # datasets.load_from_disk cannot load a DatasetDict with any empty split; only train is needed.
    empty: list[dict[str, Any]] = []
    path = _save_dataset_dict(tmp_path / "dd", {"train": DOLLY_ROWS, "test": empty})
    assert _fields(load_records(path)) == EXPECTED
    empty_train = _save_dataset_dict(tmp_path / "et", {"train": empty, "test": DOLLY_ROWS})
    with pytest.raises(DataFormatError, match=rf"^{_re(empty_train / 'train')}: no rows$"):
        load_records(empty_train)


def test_dataset_dict_without_train_lists_its_splits(tmp_path: Path) -> None:
    path = _save_dataset_dict(
        tmp_path / "dd",
        {"validation": DOLLY_ROWS, "test": DOLLY_ROWS},
    )
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    text = str(err.value)
    assert text.startswith(f"{path}: a DatasetDict with splits ")
    assert "'validation'" in text and "'test'" in text and "no 'train' split" in text
    # The hint points at a split directory that really loads.
    hinted = Path(text.rsplit("e.g. ", 1)[1])
    assert _fields(load_records(hinted)) == EXPECTED


def test_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataFormatError) as err:
        load_records(tmp_path / "plain")
    assert str(err.value).startswith(f"{tmp_path / 'plain'}: a directory, but not one written by datasets")
    assert "supported: .json" in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_info.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"^{_re(broken)}: not a readable datasets directory"):
        load_records(broken)


def _re(path: Path) -> str:
    import re

    return re.escape(str(path))


# --- column mapping ------------------------------------------------------------------------------------

QA_ROWS = [
    {"question": "Name a colour.", "passage": "", "answer": "Blue.", "topic": "open_qa"},
    {"question": "Summarise.", "passage": "Line one,\nline two.", "answer": "Short.", "topic": ""},
]
QA_COLUMNS = {"instruction": "question", "context": "passage", "response": "answer", "category": "topic"}


def _qa_json(path: Path) -> Path:
    path.write_text(json.dumps(QA_ROWS), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "write",
    [
        _qa_json,
        lambda p: _write_jsonl(p.with_suffix(".jsonl"), QA_ROWS),
        lambda p: _write_dict_csv(p.with_suffix(".csv"), QA_ROWS),
        lambda p: _write_parquet(p.with_suffix(".parquet"), QA_ROWS),
        lambda p: _save_dataset(p.with_suffix(""), QA_ROWS),
    ],
    ids=["json", "jsonl", "csv", "parquet", "datasets"],
)
def test_column_mapping_applies_to_every_format(tmp_path: Path, write: Any) -> None:
    path = write(tmp_path / "qa.json")
    assert _fields(load_records(path, columns=QA_COLUMNS)) == EXPECTED
    with pytest.raises(DataFormatError, match=r"instruction: (missing|no such column)"):
        load_records(path)


def test_mapping_overrides_one_field_and_keeps_aliases_for_the_rest(tmp_path: Path) -> None:
    rows = [{"question": "q", "instruction": "ignored", "input": "c", "output": "o"}]
    path = _write_dict_csv(tmp_path / "m.csv", rows)
    assert _fields(load_records(path, columns={"instruction": "question"})) == [
        ("q", "c", "o", "uncategorized")
    ]
    as_json = _write_jsonl(tmp_path / "m.jsonl", rows)
    assert _fields(load_records(as_json, columns={"instruction": "question"})) == [
        ("q", "c", "o", "uncategorized")
    ]
    # Once mapped, the default name is not a fallback: the mapped column is what the user said to read.
    partial = _write_jsonl(tmp_path / "p.jsonl", [*rows, {"instruction": "i", "output": "o"}])
    with pytest.raises(DataFormatError, match=rf"^{_re(partial)}:2: question: missing or not a string$"):
        load_records(partial, columns={"instruction": "question"})


def test_mapping_unknown_field_is_refused(tmp_path: Path) -> None:
    path = _qa_json(tmp_path / "qa.json")
    with pytest.raises(ValueError, match=rf"^{_re(path)}: columns: unknown secfed field 'questoin'") as err:
        load_records(path, columns={"questoin": "question"})
    assert "instruction, context, response, category" in str(err.value)
    with pytest.raises(ValueError, match=rf"^{_re(path)}: columns: 'response' must map to a column name"):
        load_records(path, columns={"response": ""})


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet", ""])
def test_mapping_to_an_absent_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"qa{suffix}"
    if suffix == ".json":
        _qa_json(path)
    elif suffix == ".jsonl":
        _write_jsonl(path, QA_ROWS)
    elif suffix == ".csv":
        _write_dict_csv(path, QA_ROWS)
    elif suffix == ".parquet":
        _write_parquet(path, QA_ROWS)
    else:
        _save_dataset(path, QA_ROWS)
    columns = {**QA_COLUMNS, "response": "reply"}
    with pytest.raises(DataFormatError) as err:
        load_records(path, columns=columns)
    assert len(err.value.issues) == 1
    assert str(err.value).startswith(f"{path}")
    assert (
        ": reply: column not found (columns= maps 'response' to it); the data has columns 'question'"
        in str(err.value)
    )


# --- paths that cannot be read -------------------------------------------------------------------------


def test_missing_path_is_a_value_error_naming_the_formats(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(ValueError) as err:
        load_records(path)
    assert isinstance(err.value, DataFileNotFoundError)
    # Still a FileNotFoundError, as load_records raised for a missing file before.
    assert isinstance(err.value, FileNotFoundError)
    assert str(err.value).startswith(f"{path}: no such file or directory; supported: .json")
    assert ".parquet" in str(err.value) and "save_to_disk" in str(err.value)


def test_unsupported_suffix_lists_the_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataFormatError) as err:
        load_records(path)
    assert str(err.value) == (
        f"{path}: unsupported file type '.xlsx'; supported: .json (a list of objects), .jsonl, "
        ".csv (with a header row), .parquet, or a directory written by datasets' save_to_disk"
    )


def test_empty_json_and_jsonl_are_errors(tmp_path: Path) -> None:
    empty_list = tmp_path / "e.json"
    empty_list.write_text("[]", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"e\.json: no records \(the JSON list is empty\)"):
        load_records(empty_list)
    for name in ("z.json", "z.jsonl"):
        blank = tmp_path / name
        blank.write_text("\n \n", encoding="utf-8")
        with pytest.raises(DataFormatError, match=rf"^{_re(blank)}: empty file: no records$"):
            load_records(blank)


def test_importing_formats_does_not_import_pyarrow_or_datasets() -> None:
    # Every CLI command imports this module; pyarrow and datasets take seconds to import.
    code = (
        "import sys, secfed.data.formats; "
        "print(sorted(m for m in ('pyarrow', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
