"""Instruction records and the loaders that read them from an institution's files.

Each institution brings its own data, so the loader is the first thing an operator meets when
something is wrong with it. It therefore validates every record, collects the problems (up to
``MAX_REPORTED``) instead of stopping at the first, and names each by file, line and field, so one run
tells the operator everything to fix. Two common layouts are accepted: Databricks Dolly
(``instruction, context, response, category``) and Stanford Alpaca (``instruction, input, output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_REPORTED",
    "UNCATEGORIZED",
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


@dataclass(frozen=True)
class Record:
    """One instruction-tuning example, independent of the file layout it came from.

    Frozen and hashable so partitions can be checked as multisets and records used as dict keys.
    ``source`` says where the record came from (``file:line`` for JSONL, ``file:[i]`` for a JSON list)
    so later errors and evaluation reports can point back at the original data.
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


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


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


def _parse_row(row: object, location: str) -> Record | list[FormatIssue]:
    """Validate one raw record; unknown extra fields are ignored so richer exports still load."""
    if not isinstance(row, Mapping):
        return [FormatIssue(location, "record", f"must be a JSON object, got {_type_name(row)}")]
    issues: list[FormatIssue] = []
    values: dict[str, str] = {}
    specs = {
        "instruction": (("instruction",), True),
        "context": (("context", "input"), False),
        "response": (("response", "output"), True),
        "category": (("category",), False),
    }
    for key, (names, required) in specs.items():
        used, value, problem = _text_field(row, names, required=required)
        if problem is not None:
            issues.append(FormatIssue(location, used, problem))
        values[key] = value
    if issues:
        return issues
    return Record(source=location, **values)


class _Collector:
    """Accumulates records and issues; keeps the first ``MAX_REPORTED`` issues but counts them all."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.issues: list[FormatIssue] = []
        self.total = 0

    def add_issue(self, issue: FormatIssue) -> None:
        self.total += 1
        if len(self.issues) < MAX_REPORTED:
            self.issues.append(issue)

    def add(self, row: object, location: str) -> None:
        parsed = _parse_row(row, location)
        if isinstance(parsed, Record):
            self.records.append(parsed)
        else:
            for issue in parsed:
                self.add_issue(issue)

    def result(self, what: str) -> list[Record]:
        if self.total:
            raise DataFormatError(self.issues, total=self.total, what=what)
        return self.records


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        # utf-8-sig: files saved by spreadsheet tools and some editors start with a BOM.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError([FormatIssue(f"{path}:{line}", "", "not valid UTF-8 text")]) from None


def _check_limit(max_records: int | None) -> None:
    if max_records is not None and max_records < 0:
        raise ValueError(f"max_records must be >= 0 or None, got {max_records}")


def load_records(path: Path | str, *, max_records: int | None = None) -> list[Record]:
    """Read instruction records from a ``.json`` list or a ``.jsonl`` file (one object per line).

    ``max_records`` reads only the first entries (the rest of a JSONL file is not even parsed), which
    keeps smoke runs on large files fast. Raises :class:`DataFormatError` listing every problem found
    (up to ``MAX_REPORTED``), or ``FileNotFoundError`` when the file is absent.
    """
    _check_limit(max_records)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise DataFormatError(
            [FormatIssue(str(path), "", f"unsupported file type {suffix or '(none)'!r}; use .json or .jsonl")]
        )
    text = _read_text(path)
    out = _Collector()
    if suffix == ".jsonl":
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
    if max_records is not None:
        rows = rows[:max_records]
    for i, row in enumerate(rows):
        out.add(row, f"{path}:[{i}]")
    return out.result(str(path))


def records_from_dataset(dataset: Any, *, name: str = "dataset") -> list[Record]:
    """Convert a ``datasets.Dataset`` (or any iterable of dicts) with Dolly or Alpaca columns.

    Same validation as :func:`load_records`; each record's source is ``name:[i]``. Lets an operator
    who already has data in the Hugging Face format use it without exporting a file first.
    """
    out = _Collector()
    for i, row in enumerate(dataset):
        out.add(row, f"{name}:[{i}]")
    return out.result(name)
