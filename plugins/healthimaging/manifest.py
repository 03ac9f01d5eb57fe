"""Bulk-copy manifests: CSV or JSON Lines, one copy per row, validated before anything is copied.

Every error names the row (1-based, counting data rows; the CSV header is row 0), the column, what
was wrong and what is expected. A row with errors is rejected; the others go on. Nothing is read
from AWS here: checks against the data store belong to the dry run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from healthimaging import copiable_attributes as ca

#: The manifest columns, in the order a template shows them. ``source_image_set_id`` is required;
#: ``datastore_id`` is required unless the run gives a default data store.
COLUMNS: tuple[str, ...] = (
    "datastore_id",
    "source_image_set_id",
    "source_version_id",
    "destination_image_set_id",
    "destination_version_id",
    "series_instance_uids",
    "sop_instance_uids",
    "copiable_attributes",
    "copy_image_set_information",
    "force",
    "promote_to_primary",
    "label",
)
REQUIRED_COLUMNS = ("source_image_set_id",)
FORMATS = ("csv", "jsonl")
MAX_LABEL_LENGTH = 256
MAX_CELL_CHARACTERS = 16 * 1024 * 1024

_ID = re.compile(r"[0-9a-z]{32}")
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


@dataclass(frozen=True)
class RowError:
    """One problem with one manifest row."""

    row: int
    column: str | None
    problem: str
    expected: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.problem}; expected {self.expected}"


@dataclass
class ManifestRow:
    """A valid manifest row: one copy to make."""

    row: int
    datastore_id: str
    source_image_set_id: str
    source_version_id: str | None = None
    destination_image_set_id: str | None = None
    destination_version_id: str | None = None
    series_instance_uids: list[str] = field(default_factory=list)
    sop_instance_uids: list[str] = field(default_factory=list)
    copiable_attributes: str | None = None
    copy_image_set_information: str | None = None
    force: bool = False
    promote_to_primary: bool = False
    label: str | None = None

    @property
    def copy_key(self) -> str:
        """What makes two rows the same copy: data store, source and version, target and subset."""
        subset = self.copiable_attributes or self.copy_image_set_information or ""
        parts = [
            self.datastore_id, self.source_image_set_id, self.source_version_id or "latest",
            self.destination_image_set_id or "new", self.destination_version_id or "latest",
            ",".join(sorted(self.series_instance_uids)), ",".join(sorted(self.sop_instance_uids)),
            hashlib.sha256(subset.encode()).hexdigest()[:16], str(self.force), str(self.promote_to_primary),
        ]
        return "|".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidatedManifest:
    """The outcome of validation: valid rows, rejected rows with their errors, file-level errors."""

    rows: list[ManifestRow] = field(default_factory=list)
    rejected: list[tuple[int, dict[str, Any], list[RowError]]] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    total_rows: int = 0
    sha256: str = ""

    @property
    def errors(self) -> list[RowError]:
        return [error for _, _, errors in self.rejected for error in errors]


class ManifestError(ValueError):
    """The manifest as a whole is unusable: it holds no rows."""


def detect_format(name: str, data: bytes) -> str:
    """``csv`` or ``jsonl``, from the file name, else from the first non-blank character."""
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith((".csv", ".tsv")):
        return "csv"
    return "jsonl" if data.lstrip()[:1] == b"{" else "csv"


def _decode_lines(data: bytes) -> Iterator[tuple[int, str | None, str | None]]:
    """(physical line number, text, decoding problem) for each line; a bad line does not stop the rest."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            yield number, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield number, None, f"line {number} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})"


def read_raw_rows(data: bytes, fmt: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, raw row, problem) for each data row of the manifest; raises ManifestError for the file."""
    if fmt == "jsonl":
        row = 0
        for _, text, problem in _decode_lines(data):
            if text is not None and not text.strip():
                continue
            row += 1
            if problem:
                yield row, None, problem
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield row, None, f"not valid JSON ({exc})"
                continue
            if not isinstance(value, dict):
                yield row, None, f"a JSON {type(value).__name__}, not an object"
                continue
            yield row, value, None
        return
    lines = list(_decode_lines(data))
    header_line = next(((n, t, p) for n, t, p in lines if t is None or t.strip()), None)
    if header_line is None:
        return
    # Decode line by line so that one bad line is one rejected row; quoted fields spanning lines
    # are rejoined by the csv module from the decoded text.
    good = "\n".join(t if t is not None else "\x00BAD\x00" for _, t, _ in lines)
    # A cell may legitimately hold a 260,000-character copiableAttributes (csv's default limit is
    # 131,072); longer cells are read too, so that validation names them instead of csv failing.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARACTERS))
    reader = csv.reader(io.StringIO(good))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    # A header that is not UTF-8 cannot name the columns: every row is rejected with that problem.
    header_problem = f"the CSV header is not valid UTF-8 ({header_line[2]})" if header_line[2] else _header_problem(header)
    bad_lines = {n: p for n, _, p in lines if p}
    row = 0
    for record in reader:
        if not record or all(not cell.strip() for cell in record):
            continue
        row += 1
        if header_problem:
            yield row, None, f"not read: {header_problem}"
            continue
        if any("\x00BAD\x00" in cell for cell in record):
            line = reader.line_num
            yield row, None, bad_lines.get(line) or next(iter(bad_lines.values()), "not valid UTF-8")
            continue
        if len(record) != len(header):
            yield row, None, f"has {len(record)} fields but the header has {len(header)}"
            continue
        yield row, dict(zip(header, record)), None


def _header_problem(header: list[str]) -> str | None:
    """What is wrong with a CSV header (every row is then rejected with it), or None."""
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        return f"the header has unknown columns {unknown} (the columns are {', '.join(COLUMNS)})"
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        return f"the header repeats columns {duplicated}"
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        return f"the header lacks the required columns {missing}"
    return None


def validate_manifest(data: bytes, name: str = "manifest.csv", *, default_datastore_id: str | None = None) -> ValidatedManifest:
    """Read and validate a whole manifest. Raises ManifestError when the file itself is unusable."""
    result = ValidatedManifest(sha256=hashlib.sha256(data).hexdigest())
    fmt = detect_format(name, data)
    first_seen: dict[str, int] = {}
    for row, raw, problem in read_raw_rows(data, fmt):
        result.total_rows += 1
        if problem:
            expected = ("a header naming known columns" if problem.startswith("not read") else
                        "a UTF-8 line holding one row" if fmt == "csv" else "one JSON object per line")
            result.rejected.append((row, {}, [RowError(row, None, problem, expected)]))
            continue
        valid, errors = validate_row(row, raw, default_datastore_id=default_datastore_id)
        if valid is not None:
            key = valid.copy_key
            previous = first_seen.get(key)
            if previous is not None:
                errors.append(RowError(row, None, f"duplicates row {previous} (same source, version, target and subset)",
                                       "each copy listed once"))
            else:
                first_seen[key] = row
        if errors:
            result.rejected.append((row, raw, errors))
        else:
            result.rows.append(valid)
    if result.total_rows == 0:
        raise ManifestError("the manifest has no rows" + (" (only a header)" if fmt == "csv" and data.strip() else ""))
    return result


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    text = str(value).strip()
    return text or None


def _uid_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return None
            return [str(v).strip() for v in parsed] if isinstance(parsed, list) else None
        return [part.strip() for part in re.split(r"[;|\s]+", text) if part.strip()]
    return None


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def validate_row(row: int, raw: dict[str, Any], *, default_datastore_id: str | None = None) -> tuple[ManifestRow | None, list[RowError]]:
    """A ManifestRow, or None and the errors naming each bad column."""
    errors: list[RowError] = []

    def fail(column: str | None, problem: str, expected: str) -> None:
        errors.append(RowError(row, column, problem, expected))

    unknown = sorted(set(raw) - set(COLUMNS))
    if unknown:
        fail(None, f"unknown columns {unknown}", f"only {', '.join(COLUMNS)}")

    def identifier(column: str, required: bool = False) -> str | None:
        value = _text(raw.get(column))
        if value is None:
            if required:
                fail(column, "is empty", "a 32-character image set id ([0-9a-z]{32})")
            return None
        if not _ID.fullmatch(value):
            fail(column, f"{_show(value)} is not an id", "32 characters of 0-9 and a-z")
            return None
        return value

    def version(column: str) -> str | None:
        value = _text(raw.get(column))
        if value is None:
            return None
        if not _VERSION.fullmatch(value):
            fail(column, f"{_show(value)} is not a version id", "a whole number from 1, such as 1 or 2")
            return None
        return value

    datastore_id = _text(raw.get("datastore_id")) or default_datastore_id
    if datastore_id is None:
        fail("datastore_id", "is empty and the run gives no default data store", "a 32-character data store id")
    elif not _ID.fullmatch(datastore_id):
        fail("datastore_id", f"{_show(datastore_id)} is not a data store id", "32 characters of 0-9 and a-z")
    source = identifier("source_image_set_id", required=True)
    source_version = version("source_version_id")
    destination = identifier("destination_image_set_id")
    destination_version = version("destination_version_id")
    if destination_version and not destination:
        fail("destination_version_id", "is set without destination_image_set_id", "a destination image set id beside it")
    if source and destination and source == destination:
        fail("destination_image_set_id", "is the source image set", "a different image set, or empty for a new one")

    uid_lists = {}
    for column in ("series_instance_uids", "sop_instance_uids"):
        uids = _uid_list(raw.get(column))
        if uids is None:
            fail(column, "cannot be read as a list of UIDs", "UIDs separated by ';' or a JSON list")
            uids = []
        bad = [u for u in uids if not _UID.fullmatch(u) or len(u) > 64]
        if bad:
            fail(column, f"{_show(bad[0])} is not a DICOM UID", "digits and dots, at most 64 characters")
        uid_lists[column] = uids

    copiable = _text(raw.get("copiable_attributes"))
    if copiable is not None:
        try:
            copiable = ca.to_json(ca.parse_copiable_attributes(copiable, argument="copiable_attributes"))
        except ca.CopyRequestError as exc:
            fail("copiable_attributes", str(exc).removeprefix("copiable_attributes "), "the copiableAttributes schema as JSON")
            copiable = None
    information = _text(raw.get("copy_image_set_information"))
    if information is not None:
        try:
            ca.parse_copy_image_set_information(information)
        except ca.CopyRequestError as exc:
            fail("copy_image_set_information", str(exc).removeprefix("copy_image_set_information "),
                 "the AWS CLI's --copy-image-set-information JSON")
            information = None
        else:
            clash = [c for c in ("source_version_id", "destination_image_set_id", "destination_version_id",
                                 "copiable_attributes", "series_instance_uids", "sop_instance_uids") if _text(raw.get(c))]
            if clash:
                fail("copy_image_set_information", f"is given together with {', '.join(clash)}",
                     "either copy_image_set_information or the separate columns")
    if copiable and (uid_lists["series_instance_uids"] or uid_lists["sop_instance_uids"]):
        fail("copiable_attributes", "is given together with series_instance_uids/sop_instance_uids", "one way to name the subset")

    flags = {}
    for column in ("force", "promote_to_primary"):
        value = _boolean(raw.get(column))
        if value is None:
            fail(column, f"{_show(raw.get(column))} is not a boolean", "true or false (or 1/0, yes/no)")
        flags[column] = bool(value)
    label = _text(raw.get("label"))
    if label is not None and len(label) > MAX_LABEL_LENGTH:
        fail("label", f"is {len(label)} characters long", f"at most {MAX_LABEL_LENGTH} characters")
    if errors:
        return None, errors
    return ManifestRow(
        row=row, datastore_id=datastore_id, source_image_set_id=source, source_version_id=source_version,
        destination_image_set_id=destination, destination_version_id=destination_version,
        series_instance_uids=uid_lists["series_instance_uids"], sop_instance_uids=uid_lists["sop_instance_uids"],
        copiable_attributes=copiable, copy_image_set_information=information, force=flags["force"],
        promote_to_primary=flags["promote_to_primary"], label=label,
    ), []


def _show(value: Any, limit: int = 40) -> str:
    """A value quoted for an error message, shortened: never a whole 300,000-character cell."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "...'"


def template(rows: Iterable[dict[str, Any]] = ()) -> str:
    """A CSV manifest with the header (and the given rows)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()
