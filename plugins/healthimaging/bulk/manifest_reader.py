"""Reading a manifest's bytes into raw rows, with every dimension bounded.

A manifest comes from spreadsheets, exports and other teams' scripts, so nothing in it is trusted:
the file's size, its lines, its rows, its CSV columns and fields and its JSON nesting are all
bounded. A problem confined to one line (not UTF-8, a NUL character, too long, not a JSON object)
rejects that row and the others go on; a problem that would make rows disappear or cannot be
pinned on one row (a CSV quote that never closes, a header of too many columns, too many rows) is
one :class:`ManifestError` naming the line. Time and memory are linear in the input: lines are read
one at a time and nothing is kept per line beyond the row it yields.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Collection, Iterator
from typing import Any

from healthimaging import bounded_json

#: The largest manifest read (a 100,000-row manifest of full rows is about 30 MB).
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
#: The longest line: room for a 260,000-character copiableAttributes escaped as CSV or JSON.
MAX_LINE_BYTES = 2 * 1024 * 1024
#: Data rows per manifest; split larger migrations into several manifests.
MAX_ROWS = 1_000_000
#: Physical lines per manifest (rows, blank lines and the lines of multi-line JSON cells).
MAX_LINES = 10_000_000
#: Columns of a CSV header (a manifest has 12).
MAX_COLUMNS = 64

#: Stands for a line that could not be read, inside the text handed to the CSV parser. A NUL can be
#: no real line's content: a line holding one is itself a line that could not be read.
_UNREADABLE = "\x00"
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_BOM = b"\xef\xbb\xbf"


class ManifestError(ValueError):
    """The manifest as a whole is unusable; the message says where and what to do."""


def detect_format(name: str, data: bytes) -> str:
    """``csv`` or ``jsonl``, from the file name, else from the first non-blank character."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv")):
        return "csv"
    return "jsonl" if data[:4096].lstrip().lstrip(_BOM)[:1] == b"{" else "csv"


def check_size(size: int, max_bytes: int | None = None) -> None:
    """Refuse a manifest larger than ``max_bytes`` (default :data:`MAX_MANIFEST_BYTES`), before it is
    read when its size is known first."""
    max_bytes = MAX_MANIFEST_BYTES if max_bytes is None else max_bytes
    if size > max_bytes:
        raise ManifestError(
            f"the manifest is {size:,} bytes; a manifest holds at most {max_bytes:,} bytes. "
            "Split it into several manifests."
        )


def physical_lines(data: bytes) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text, problem) of each line, one at a time; a line with a problem has no text.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r``. A line that is not UTF-8, holds a NUL character or
    is longer than :data:`MAX_LINE_BYTES` has a problem naming it; the others go on.
    """
    check_size(len(data))
    start = len(_BOM) if data.startswith(_BOM) else 0
    for number, match in enumerate(_LINE.finditer(data, start), start=1):
        if number > MAX_LINES:
            raise ManifestError(
                f"line {number:,}: the manifest has more than {MAX_LINES:,} lines; split it into several manifests"
            )
        raw = match.group().rstrip(b"\r\n")
        if len(raw) > MAX_LINE_BYTES:
            yield number, None, f"line {number} is {len(raw):,} bytes long (at most {MAX_LINE_BYTES:,})"
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield (
                number,
                None,
                f"line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})",
            )
            continue
        if "\x00" in text:
            yield number, None, f"line {number} holds a NUL character (at position {text.index(chr(0))})"
            continue
        yield number, text, None


def read_raw_rows(
    data: bytes,
    fmt: str,
    *,
    columns: Collection[str],
    required: Collection[str] = (),
    multiline_columns: Collection[str] = (),
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, raw row, problem) for each data row; raises :class:`ManifestError` for the file.

    ``columns`` are the known CSV columns; only ``multiline_columns`` (JSON documents) may span lines.
    """
    rows = _jsonl_rows(data) if fmt == "jsonl" else _csv_rows(data, columns, required, multiline_columns)
    for row, raw, problem in rows:
        if row > MAX_ROWS:
            raise ManifestError(
                f"row {row:,}: the manifest has more than {MAX_ROWS:,} rows; split it into several manifests"
            )
        yield row, raw, problem


def _jsonl_rows(data: bytes) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    row = 0
    for _, text, problem in physical_lines(data):
        if text is not None and not text.strip():
            continue
        row += 1
        if problem:
            yield row, None, problem
            continue
        try:
            value = bounded_json.loads(text)
        except ValueError as exc:
            yield row, None, f"not valid JSON ({_shorten(str(exc), 200)})"
            continue
        if not isinstance(value, dict):
            yield row, None, f"a JSON {type(value).__name__}, not an object"
            continue
        yield row, value, None


def _csv_rows(
    data: bytes, columns: Collection[str], required: Collection[str], multiline_columns: Collection[str]
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    unreadable: list[str] = []  # the problems of the lines the parser has consumed since the last record

    def lines() -> Iterator[str]:
        for _, text, problem in physical_lines(data):
            if problem:
                unreadable.append(problem)
                yield _UNREADABLE + "\n"
            else:
                yield text + "\n"

    # A single-line field is at most a line long; only a quoted field spanning lines reaches the
    # limit, and that is refused below. The limit is process-wide: it is only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(lines())
    header: list[str] | None = None
    header_problem: str | None = None
    row = 0
    last_line = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ManifestError(
                f"line {last_line + 1}: {exc}; a quoted field probably opens on this line and never "
                "closes. Close the quote (write a quote inside a field as two quotes)"
            ) from None
        first_line, last_line = last_line + 1, reader.line_num
        problems, unreadable[:] = list(unreadable), []
        if last_line > first_line:
            _refuse_stray_multiline(record, header, first_line, last_line, multiline_columns)
        if not record or all(not cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            problem = (
                f"the CSV header cannot be read ({problems[0]})"
                if problems
                else _header_problem(header, columns, required, first_line)
            )
            header_problem = f"not read: {problem}" if problem else None
            continue
        row += 1
        if header_problem:
            yield row, None, header_problem  # one string shared by every row: memory stays flat
        elif problems:
            yield row, None, problems[0]
        elif len(record) != len(header):
            yield row, None, f"has {len(record)} fields but the header has {len(header)}"
        else:
            yield row, dict(zip(header, record)), None


def _refuse_stray_multiline(
    record: list[str], header: list[str] | None, first_line: int, last_line: int, multiline_columns: Collection[str]
) -> None:
    """A record spanning lines is kept only if each cell spanning lines is a JSON column holding JSON."""
    for index, cell in enumerate(record):
        if "\n" not in cell:
            continue
        column = header[index] if header is not None and index < len(header) else None
        if column in multiline_columns:
            try:
                bounded_json.loads(cell)
                continue
            except ValueError:
                pass
        where = (
            f"field {index + 1}"
            if not column
            else f"column {column}"
            if column.isidentifier()
            else f"column {_shorten(repr(column), 40)}"
        )
        raise ManifestError(
            f"line {first_line}: a quoted field ({where}) opens on this line and runs to line {last_line}, taking "
            f"{last_line - first_line} following lines with it; a stray quote? Close it, or write a quote inside a "
            "field as two quotes. Only JSON columns may span lines."
        )


def _header_problem(header: list[str], columns: Collection[str], required: Collection[str], line: int) -> str | None:
    """What is wrong with a CSV header (every row is then rejected with it), or None; linear in its size."""
    if len(header) > MAX_COLUMNS:
        raise ManifestError(
            f"line {line}: the CSV header has {len(header):,} columns; a manifest has at most "
            f"{MAX_COLUMNS} (the columns are {', '.join(columns)})"
        )
    unknown = [h for h in header if h not in columns]
    if unknown:
        return f"the header has unknown columns {_names(unknown)} (the columns are {', '.join(columns)})"
    duplicated = sorted(h for h, count in Counter(header).items() if count > 1)
    if duplicated:
        return f"the header repeats columns {_names(duplicated)}"
    missing = [c for c in required if c not in header]
    if missing:
        return f"the header lacks the required columns {missing}"
    return None


def _names(names: list[str], shown: int = 5) -> str:
    """A list of column names for a message: at most ``shown`` of them, each shortened."""
    listed = "[" + ", ".join(_shorten(repr(n), 40) for n in names[:shown]) + "]"
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
