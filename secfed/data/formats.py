"""Instruction records and the loaders that read them from an institution's files.

Each institution brings its own data, so the loader is the first thing an operator meets when
something is wrong with it. It therefore validates every record, collects the problems (up to
``MAX_REPORTED``) instead of stopping at the first, and names each by file, line (or row) and field, so
one run tells the operator everything to fix. Two common layouts are accepted: Databricks Dolly
(``instruction, context, response, category``) and Stanford Alpaca (``instruction, input, output``);
data whose columns have other names is read through ``columns=`` (e.g. ``{"instruction": "question"}``).

Institutions keep their data where their tools put it, and asking them to convert it first is one more
step that can lose or mangle records, so these containers are read as they are:

* ``.json`` (a list of objects) and ``.jsonl`` (one object per line): the Dolly and Alpaca releases;
* ``.csv`` with a header row: exports from spreadsheets, databases and electronic record systems;
* ``.parquet``: tables taken from a data lake or warehouse;
* a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose
  ``train`` split is used): data already prepared with Hugging Face tools.

pyarrow and ``datasets`` are imported only when a Parquet file or a ``datasets`` directory is read:
every CLI command imports this module, and those imports cost seconds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "MAX_REPORTED",
    "SUPPORTED_FORMATS",
    "UNCATEGORIZED",
    "DataFileNotFoundError",
    "DataFormatError",
    "FormatIssue",
    "Record",
    "load_records",
    "records_from_dataset",
]

#: Category given to records that carry none, so partitioning by category always has a key.
UNCATEGORIZED = "uncategorized"
#: A broken file can have thousands of bad records; listing the first few is enough to act on.
MAX_REPORTED = 20
#: secfed's names for a record's fields: the keys ``columns=`` may map to the data's own column names.
FIELDS = ("instruction", "context", "response", "category")
#: Said in every "cannot read this path" error, so the operator learns what to convert to.
SUPPORTED_FORMATS = (
    ".json (a list of objects), .jsonl, .csv (with a header row), .parquet, "
    "or a directory written by datasets' save_to_disk"
)

# Column names tried for each field when ``columns=`` does not map it: Dolly's name, then Alpaca's.
_DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction",),
    "context": ("context", "input"),
    "response": ("response", "output"),
    "category": ("category",),
}
_REQUIRED = frozenset({"instruction", "response"})
# Files that ``save_to_disk`` writes at the top of its directory (dataset_dict.json for a DatasetDict).
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
# How many column names an error lists; wide tables would otherwise bury the message.
_MAX_LISTED_COLUMNS = 20


@dataclass(frozen=True)
class Record:
    """One instruction-tuning example, independent of the file layout it came from.

    Frozen and hashable so partitions can be checked as multisets and records used as dict keys.
    ``source`` says where the record came from (``file:line`` for JSONL, ``file:row`` for CSV with the
    header as row 1, ``file:[i]`` for a JSON list, Parquet or ``datasets`` row index) so later errors
    and evaluation reports can point back at the original data.
    """

    instruction: str
    context: str
    response: str
    category: str
    source: str = ""

    def __post_init__(self) -> None:
        # An empty category would make category-based partitions put unlabelled records in a group
        # whose name is invisible in logs; give it a readable name once, here.
        if not self.category:
            object.__setattr__(self, "category", UNCATEGORIZED)


@dataclass(frozen=True)
class FormatIssue:
    """One problem with one record: where it is, which field, and what is wrong."""

    location: str
    field: str
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.location}: {self.field}: {self.problem}"
            if self.field
            else f"{self.location}: {self.problem}"
        )


class DataFormatError(ValueError):
    """An institution's data file cannot be used as it is.

    With one problem, ``str()`` is ``FILE:LINE: FIELD: problem``. With several, the first line gives the
    count and each following line one problem, so the whole list can be fixed in one pass.
    """

    def __init__(self, issues: Iterable[FormatIssue], *, total: int | None = None, what: str = "") -> None:
        self.issues: tuple[FormatIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("DataFormatError needs at least one issue")
        self.total = max(total if total is not None else len(self.issues), len(self.issues))
        super().__init__(self._render(what))

    def _render(self, what: str) -> str:
        if self.total == 1:
            return str(self.issues[0])
        where = f" in {what}" if what else ""
        lines = [f"{self.total} problems{where}:"]
        lines += [f"  {issue}" for issue in self.issues]
        if self.total > len(self.issues):
            lines.append(f"  ... and {self.total - len(self.issues)} more")
        return "\n".join(lines)


class DataFileNotFoundError(DataFormatError, FileNotFoundError):
    """The data path does not exist.

    A :class:`DataFormatError` (so one ``except ValueError`` handles every bad-data case) that is also
    a ``FileNotFoundError``, which is what :func:`load_records` raised for a missing file before.
    """


@dataclass(frozen=True)
class _Layout:
    """Which column names each field is read from: the Dolly/Alpaca defaults, overridden by ``columns=``.

    ``mapped`` keeps only the user's own mapping (field -> column), because only those columns are
    promised to exist: a default name may legitimately be absent (Alpaca has no ``category``).
    """

    names: Mapping[str, tuple[str, ...]]
    mapped: Mapping[str, str]


_DEFAULT_LAYOUT = _Layout(_DEFAULT_NAMES, {})


def _layout(columns: Mapping[str, str] | None, where: str) -> _Layout:
    """Check the user's field -> column mapping before reading anything, so a typo fails fast."""
    if columns is None:
        return _DEFAULT_LAYOUT
    if not isinstance(columns, Mapping):
        raise ValueError(
            f"{where}: columns must map secfed fields to column names, got {_type_name(columns)}"
        )
    names = dict(_DEFAULT_NAMES)
    for field, column in columns.items():
        if field not in _DEFAULT_NAMES:
            raise ValueError(
                f"{where}: columns: unknown secfed field {field!r}; the fields are {', '.join(FIELDS)}"
            )
        if not isinstance(column, str) or not column:
            raise ValueError(
                f"{where}: columns: {field!r} must map to a column name, got {column!r} "
                f"({_type_name(column)})"
            )
        names[field] = (column,)
    return _Layout(names, dict(columns))


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _column_list(available: Iterable[str]) -> str:
    """The data's column names for an error message, repr'd so stray spaces in a header show."""
    names = list(dict.fromkeys(available))
    if not names:
        return "no columns"
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED_COLUMNS])
    more = f", ... ({len(names) - _MAX_LISTED_COLUMNS} more)" if len(names) > _MAX_LISTED_COLUMNS else ""
    return f"columns {shown}{more}"


def _missing_mapped(location: str, field: str, column: str, available: Iterable[str]) -> FormatIssue:
    return FormatIssue(
        location,
        column,
        f"column not found (columns= maps {field!r} to it); the data has {_column_list(available)}",
    )


def _column_issues(
    location: str, available: Sequence[str], layout: _Layout, *, hint: str = ""
) -> list[FormatIssue]:
    """Problems with a table's columns as a whole, found once from its header instead of on every row.

    A mapped column must exist; a required field needs one of its names. A CSV without a header row
    shows up here too: its first record is taken as the header and has no ``instruction`` column.
    """
    present = set(available)
    issues = [
        _missing_mapped(location, field, column, available)
        for field, column in layout.mapped.items()
        if column not in present
    ]
    for field in FIELDS:
        names = layout.names[field]
        if field in _REQUIRED and field not in layout.mapped and not present.intersection(names):
            alternatives = " or ".join(repr(n) for n in names[1:])
            alias = f" (or Alpaca {alternatives})" if alternatives else ""
            issues.append(
                FormatIssue(
                    location,
                    field,
                    f"no such column{alias}; the data has {_column_list(available)}{hint}; "
                    "name the right one with columns=",
                )
            )
    return issues


def _used_columns(available: Sequence[str], layout: _Layout) -> list[str]:
    """The columns a table loader needs to read: every field's names that the table has."""
    present = set(available)
    wanted = [name for field in FIELDS for name in layout.names[field] if name in present]
    return list(dict.fromkeys(wanted))


def _text_field(
    row: Mapping[str, Any], names: tuple[str, ...], *, required: bool
) -> tuple[str, str, str | None]:
    """Read the first present of ``names``; returns (field name used, value, problem or None).

    Missing or ``null`` optional fields read as ``""``: Alpaca files routinely store ``"input": ""``
    or omit it, and some exports write ``null``.
    """
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if not isinstance(value, str):
                return name, "", f"must be a string, got {_type_name(value)}"
            if required and not value.strip():
                return name, "", "empty"
            return name, value, None
    if required:
        alternatives = " or ".join(repr(n) for n in names[1:])
        hint = f" (or Alpaca {alternatives})" if alternatives else ""
        return names[0], "", f"missing or not a string{hint}"
    return names[0], "", None


def _parse_row(row: object, location: str, layout: _Layout = _DEFAULT_LAYOUT) -> Record | list[FormatIssue]:
    """Validate one raw record; unknown extra fields are ignored so richer exports still load."""
    if not isinstance(row, Mapping):
        return [FormatIssue(location, "record", f"must be a JSON object, got {_type_name(row)}")]
    issues: list[FormatIssue] = []
    values: dict[str, str] = {}
    for key in FIELDS:
        used, value, problem = _text_field(row, layout.names[key], required=key in _REQUIRED)
        if problem is not None:
            issues.append(FormatIssue(location, used, problem))
        values[key] = value
    if issues:
        return issues
    return Record(source=location, **values)


class _Collector:
    """Accumulates records and issues; keeps the first ``MAX_REPORTED`` issues but counts them all.

    It also notes every key seen in object rows: JSON has no header, so whether a mapped column exists
    at all is only known after the rows are read.
    """

    def __init__(self, layout: _Layout = _DEFAULT_LAYOUT) -> None:
        self.layout = layout
        self.records: list[Record] = []
        self.issues: list[FormatIssue] = []
        self.total = 0
        self.keys: dict[str, None] = {}

    def add_issue(self, issue: FormatIssue) -> None:
        self.total += 1
        if len(self.issues) < MAX_REPORTED:
            self.issues.append(issue)

    def add(self, row: object, location: str) -> None:
        if self.layout.mapped and isinstance(row, Mapping):
            self.keys.update(dict.fromkeys(k for k in row if isinstance(k, str)))
        parsed = _parse_row(row, location, self.layout)
        if isinstance(parsed, Record):
            self.records.append(parsed)
        else:
            for issue in parsed:
                self.add_issue(issue)

    def result(self, what: str) -> list[Record]:
        # A mapped column that no row has is one mistake in the mapping, not a problem on every row.
        if self.keys:
            absent = [
                _missing_mapped(what, field, column, self.keys)
                for field, column in self.layout.mapped.items()
                if column not in self.keys
            ]
            if absent:
                raise DataFormatError(absent, what=what)
        if self.total:
            raise DataFormatError(self.issues, total=self.total, what=what)
        return self.records


def _empty(location: str, problem: str) -> DataFormatError:
    """A source with no records: almost always the wrong file or a failed export, so it is an error."""
    return DataFormatError([FormatIssue(location, "", problem)])


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFormatError([FormatIssue(str(path), "", f"cannot read: {err.strerror or err}")]) from None
    try:
        # utf-8-sig: files saved by spreadsheet tools and some editors start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError([FormatIssue(f"{path}:{line}", "", "not valid UTF-8 text")]) from None


def _check_limit(max_records: int | None) -> None:
    if max_records is not None and max_records < 0:
        raise ValueError(f"max_records must be >= 0 or None, got {max_records}")


def _load_jsonl(path: Path, layout: _Layout, max_records: int | None) -> list[Record]:
    """One JSON object per line; bad lines are reported and the rest still checked."""
    text = _read_text(path)
    if not text.strip():
        raise _empty(str(path), "empty file: no records")
    out = _Collector(layout)
    entries = 0
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and other characters that
    # splitlines() treats as line breaks, which would cut a valid record in two.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if max_records is not None and entries >= max_records:
            break
        entries += 1
        location = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            out.add_issue(FormatIssue(location, "", f"invalid JSON: {err.msg} (column {err.colno})"))
            continue
        out.add(row, location)
    return out.result(str(path))


def _load_json(path: Path, layout: _Layout, max_records: int | None) -> list[Record]:
    """A JSON list of objects, as the Dolly and Alpaca releases ship."""
    text = _read_text(path)
    if not text.strip():
        raise _empty(str(path), "empty file: no records")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            [FormatIssue(f"{path}:{err.lineno}", "", f"invalid JSON: {err.msg} (column {err.colno})")]
        ) from None
    if not isinstance(rows, list):
        raise DataFormatError(
            [
                FormatIssue(
                    f"{path}:1", "", f"top level must be a JSON list of objects, got {_type_name(rows)}"
                )
            ]
        )
    if not rows:
        raise _empty(str(path), "no records (the JSON list is empty)")
    if max_records is not None:
        rows = rows[:max_records]
    out = _Collector(layout)
    for i, row in enumerate(rows):
        out.add(row, f"{path}:[{i}]")
    return out.result(str(path))


def _csv_rows(path: Path, out: _Collector) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) for each CSV record after the header, with the header as row 1.

    Rows are counted as records, not lines, so a quoted field spanning lines does not shift the numbers
    a spreadsheet shows. A malformed record is reported to ``out`` and ends the file: after it the
    reader's idea of where records start cannot be trusted.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    rowno = 0
    while True:
        rowno += 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            out.add_issue(FormatIssue(f"{path}:{rowno}", "", f"malformed CSV: {err}"))
            return
        yield rowno, cells


def _load_csv(path: Path, layout: _Layout, max_records: int | None) -> list[Record]:
    """A CSV export whose first row names the columns; every cell reads as text."""
    out = _Collector(layout)
    rows = _csv_rows(path, out)
    first = next(rows, None)
    if first is None or not any(cell.strip() for cell in first[1]):
        if out.total:
            return out.result(str(path))
        raise _empty(f"{path}:1", "no header row: a CSV file needs one naming its columns, then records")
    header = first[1]
    issues = _column_issues(
        f"{path}:1", header, layout, hint=" (the first row must be a header naming the columns)"
    )
    if issues:
        raise DataFormatError(issues, what=str(path))
    entries = 0
    has_records = False
    for rowno, cells in rows:
        # Spreadsheets export trailing empty rows as ",,,"; skip them as JSONL skips blank lines.
        if not any(cell.strip() for cell in cells):
            continue
        has_records = True
        if max_records is not None and entries >= max_records:
            break
        entries += 1
        location = f"{path}:{rowno}"
        if len(cells) != len(header):
            out.add_issue(
                FormatIssue(location, "row", f"has {len(cells)} fields, the header has {len(header)}")
            )
            continue
        out.add(dict(zip(header, cells, strict=True)), location)
    if not has_records and not out.total:
        raise _empty(str(path), "no records after the header row")
    return out.result(str(path))


def _load_parquet(path: Path, layout: _Layout, max_records: int | None) -> list[Record]:
    """A Parquet table; only the columns in use are read, in batches, so wide or large tables stay cheap."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    def unreadable(err: Exception) -> DataFormatError:
        return DataFormatError([FormatIssue(str(path), "", f"not a readable Parquet file: {err}")])

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise unreadable(err) from None
    if table.metadata.num_rows == 0:
        raise _empty(str(path), "no rows")
    names: list[str] = list(table.schema_arrow.names)
    issues = _column_issues(str(path), names, layout)
    if issues:
        raise DataFormatError(issues, what=str(path))
    out = _Collector(layout)
    index = 0
    try:
        for batch in table.iter_batches(columns=_used_columns(names, layout)):
            for row in batch.to_pylist():
                if max_records is not None and index >= max_records:
                    return out.result(str(path))
                out.add(row, f"{path}:[{index}]")
                index += 1
    except (pa.ArrowException, OSError) as err:
        raise unreadable(err) from None
    return out.result(str(path))


def _load_saved_dataset(path: Path, layout: _Layout, max_records: int | None) -> list[Record]:
    """A ``save_to_disk`` directory: a ``Dataset``, or a ``DatasetDict`` from which ``train`` is taken."""
    if not any((path / marker).is_file() for marker in _DATASET_MARKERS):
        raise DataFormatError(
            [
                FormatIssue(
                    str(path),
                    "",
                    "a directory, but not one written by datasets' save_to_disk (it has no "
                    f"{', '.join(_DATASET_MARKERS)}); supported: {SUPPORTED_FORMATS}",
                )
            ]
        )
    where = _train_split(path) if (path / "dataset_dict.json").is_file() else path
    if _saved_without_rows(where):
        raise _empty(str(where), "no rows")
    import datasets
    import pyarrow as pa

    try:
        loaded = datasets.load_from_disk(str(where))
    except (OSError, ValueError, LookupError, pa.ArrowException) as err:
        raise DataFormatError(
            [FormatIssue(str(where), "", f"not a readable datasets directory: {err}")]
        ) from None
    return _dataset_records(loaded, str(where), layout, max_records)


def _train_split(path: Path) -> Path:
    """The directory of a saved ``DatasetDict``'s ``train`` split, found from its ``dataset_dict.json``.

    Only that split is loaded: the others are not used, and ``datasets`` cannot load a dict at all when
    any split is empty. Without a ``train`` split there is no safe guess, so the splits are listed.
    """
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataFormatError(
            [FormatIssue(str(path), "", f"not a readable datasets directory: dataset_dict.json: {err}")]
        ) from None
    names = [str(s) for s in splits] if isinstance(splits, list) else []
    if "train" not in names:
        example = f"; pass one split's directory instead, e.g. {path / names[0]}" if names else ""
        raise DataFormatError(
            [
                FormatIssue(
                    str(path),
                    "",
                    f"a DatasetDict with splits {', '.join(repr(s) for s in names) or '(none)'} "
                    f"but no 'train' split{example}",
                )
            ]
        )
    return path / "train"


def _saved_without_rows(path: Path) -> bool:
    """Whether ``save_to_disk`` wrote no data files (an empty dataset), which ``datasets`` fails to load.

    Anything unexpected answers False and is left to ``datasets.load_from_disk`` to report.
    """
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("_data_files") == []


def _dataset_records(dataset: Any, where: str, layout: _Layout, max_records: int | None) -> list[Record]:
    """Validate a loaded ``datasets.Dataset``, reading only the columns in use."""
    if len(dataset) == 0:
        raise _empty(where, "no rows")
    names: list[str] = list(dataset.column_names)
    issues = _column_issues(where, names, layout)
    if issues:
        raise DataFormatError(issues, what=where)
    dataset = dataset.select_columns(_used_columns(names, layout))
    if max_records is not None:
        dataset = dataset.select(range(min(max_records, len(dataset))))
    out = _Collector(layout)
    for i, row in enumerate(dataset):
        out.add(row, f"{where}:[{i}]")
    return out.result(where)


_Loader = Callable[[Path, _Layout, int | None], list[Record]]
_LOADERS: dict[str, _Loader] = {
    ".json": _load_json,
    ".jsonl": _load_jsonl,
    ".csv": _load_csv,
    ".parquet": _load_parquet,
}


def load_records(
    path: Path | str,
    *,
    max_records: int | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read instruction records from a data file or a ``datasets`` directory (see the module docstring).

    The format is chosen by suffix (``.json``, ``.jsonl``, ``.csv``, ``.parquet``) or, for a directory,
    by the files ``save_to_disk`` writes. ``columns`` maps secfed's fields (:data:`FIELDS`) to the
    data's own column names, e.g. ``{"instruction": "question", "response": "answer"}``; fields it
    leaves out keep the Dolly/Alpaca names. ``max_records`` reads only the first entries (the rest of a
    JSONL, CSV or Parquet file is not even parsed), which keeps smoke runs on large files fast.

    Raises :class:`DataFormatError` (a ``ValueError``) listing every problem found (up to
    ``MAX_REPORTED``), by file, line or row, and field; :class:`DataFileNotFoundError` (also a
    ``FileNotFoundError``) when the path is absent; ``ValueError`` for a bad ``columns`` mapping.
    """
    _check_limit(max_records)
    path = Path(path)
    layout = _layout(columns, str(path))
    if path.is_dir():
        return _load_saved_dataset(path, layout, max_records)
    if not path.exists():
        raise DataFileNotFoundError(
            [FormatIssue(str(path), "", f"no such file or directory; supported: {SUPPORTED_FORMATS}")]
        )
    suffix = path.suffix.lower()
    loader = _LOADERS.get(suffix)
    if loader is None:
        raise DataFormatError(
            [
                FormatIssue(
                    str(path),
                    "",
                    f"unsupported file type {suffix or '(none)'!r}; supported: {SUPPORTED_FORMATS}",
                )
            ]
        )
    return loader(path, layout, max_records)


def records_from_dataset(dataset: Any, *, name: str = "dataset") -> list[Record]:
    """Convert a ``datasets.Dataset`` (or any iterable of dicts) with Dolly or Alpaca columns.

    Same validation as :func:`load_records`; each record's source is ``name:[i]``. Lets an operator
    who already has data in the Hugging Face format use it without exporting a file first.
    """
    out = _Collector()
    for i, row in enumerate(dataset):
        out.add(row, f"{name}:[{i}]")
    return out.result(name)
