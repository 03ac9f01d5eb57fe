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
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from healthimaging import bounded_json
from healthimaging.bulk.manifest_reader import ManifestError, detect_format, read_raw_rows
from healthimaging.copy import copiable_attributes as ca
from healthimaging.copy import dicom_uid
from healthimaging.copy.request import COPY_ARGUMENTS, REPLACED_BY_COPY_IMAGE_SET_INFORMATION, CopyRequest
from healthimaging.copy.service_model import pattern

#: The manifest columns, in the order a template shows them. ``source_image_set_id`` is required;
#: ``datastore_id`` is required unless the run gives a default data store.
COLUMNS: tuple[str, ...] = (*COPY_ARGUMENTS, "label")
_COLUMN_SET = frozenset(COLUMNS)
REQUIRED_COLUMNS = ("source_image_set_id",)
FORMATS = ("csv", "jsonl")
#: Columns whose value is a JSON document: only these may span lines in a CSV manifest.
JSON_COLUMNS = ("copiable_attributes", "copy_image_set_information")
MAX_LABEL_LENGTH = 256
#: The longest value of any column (copiableAttributes, the longest legitimate one, is at most 260,000).
MAX_CELL_CHARACTERS = 1024 * 1024
#: What is kept of a rejected row for its ledger record and report (all else is in the error message).
REJECTED_KEPT_COLUMNS = ("datastore_id", "source_image_set_id", "label")

_ID = re.compile(pattern("ImageSetId"))  # botocore's model: data store and image set ids alike
_VERSION = re.compile(r"[1-9][0-9]{0,18}")
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}
#: Text no ledger can store: NUL (PostgreSQL refuses it) and UTF-16 surrogates without a partner
#: (JSON's ``"\ud800"``; they cannot be encoded as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem with one manifest row."""

    row: int
    column: str | None
    problem: str
    expected: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: {self.problem}; expected {self.expected}"


@dataclass(slots=True)
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
            self.datastore_id,
            self.source_image_set_id,
            self.source_version_id or "latest",
            self.destination_image_set_id or "new",
            self.destination_version_id or "latest",
            ",".join(sorted(self.series_instance_uids)),
            ",".join(sorted(self.sop_instance_uids)),
            hashlib.sha256(subset.encode()).hexdigest()[:16],
            str(self.force),
            str(self.promote_to_primary),
        ]
        return "|".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def request(self) -> CopyRequest:
        """The copy this row asks for."""
        return CopyRequest.from_mapping(self.to_dict())


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


def validate_manifest(
    data: bytes, name: str = "manifest.csv", *, default_datastore_id: str | None = None
) -> ValidatedManifest:
    """Read and validate a whole manifest. Raises ManifestError when the file itself is unusable."""
    result = ValidatedManifest(sha256=hashlib.sha256(data).hexdigest())
    fmt = detect_format(name, data)
    first_seen: dict[str, int] = {}
    for row, raw, problem in read_raw_rows(
        data, fmt, columns=COLUMNS, required=REQUIRED_COLUMNS, multiline_columns=JSON_COLUMNS
    ):
        result.total_rows += 1
        if problem:
            expected = (
                "a header naming known columns"
                if problem.startswith("not read")
                else "a UTF-8 line holding one row"
                if fmt == "csv"
                else "one JSON object per line"
            )
            # The same few problems repeat over thousands of rows: one string each keeps memory flat.
            result.rejected.append((row, {}, [RowError(row, None, sys.intern(problem), expected)]))
            continue
        valid, errors = validate_row(row, raw, default_datastore_id=default_datastore_id)
        if valid is not None:
            key = valid.copy_key
            previous = first_seen.get(key)
            if previous is not None:
                errors.append(
                    RowError(
                        row,
                        None,
                        f"duplicates row {previous} (same source, version, target and subset)",
                        "each copy listed once",
                    )
                )
            else:
                first_seen[key] = row
        if errors:
            result.rejected.append((row, kept_of_rejected(raw), errors))
        else:
            result.rows.append(valid)
    if result.total_rows == 0:
        raise ManifestError("the manifest has no rows" + (" (only a header)" if fmt == "csv" and data.strip() else ""))
    return result


def kept_of_rejected(raw: dict[str, Any]) -> dict[str, str]:
    """What a rejected row keeps of its raw values: a few columns, shortened and made storable."""
    kept = {}
    for column in REJECTED_KEPT_COLUMNS:
        value = raw.get(column)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            kept[column] = storable_text(str(value))[:MAX_LABEL_LENGTH]
    return kept


def storable_text(text: str) -> str:
    """The text with what no ledger can store (NUL, lone surrogates) replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def _unstorable(value: Any) -> str | None:
    """Why a raw value (nested JSON included) cannot be stored, or None."""
    if isinstance(value, str):  # the common case, without the walk
        found = _UNSTORABLE.search(value)
        return None if found is None else _unstorable_reason(found.group())
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and (found := _UNSTORABLE.search(item)):
            return _unstorable_reason(found.group())
    return None


def _unstorable_reason(character: str) -> str:
    return (
        "holds a NUL character"
        if character == "\x00"
        else f"holds an unpaired UTF-16 surrogate (U+{ord(character):04X})"
    )


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
                parsed = bounded_json.loads(text)
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


def validate_row(
    row: int, raw: dict[str, Any], *, default_datastore_id: str | None = None
) -> tuple[ManifestRow | None, list[RowError]]:
    """A ManifestRow, or None and the errors naming each bad column."""
    errors: list[RowError] = []

    def fail(column: str | None, problem: str, expected: str) -> None:
        errors.append(RowError(row, column, problem, expected))

    unknown = sorted(set(raw) - set(COLUMNS))
    if unknown:
        fail(None, f"unknown columns {_show(unknown, 200)}", f"only {', '.join(COLUMNS)}")
    for column, value in raw.items():
        if column not in _COLUMN_SET or not isinstance(value, (str, dict, list)):
            continue
        if (problem := _unstorable(value)) is not None:
            fail(column, problem, "text without NUL characters or unpaired surrogates")
        elif isinstance(value, str) and len(value) > MAX_CELL_CHARACTERS:
            fail(column, f"is {len(value):,} characters long", f"at most {MAX_CELL_CHARACTERS:,} characters")

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
        fail(
            "destination_version_id", "is set without destination_image_set_id", "a destination image set id beside it"
        )
    if source and destination and source == destination:
        fail("destination_image_set_id", "is the source image set", "a different image set, or empty for a new one")

    uid_lists = {}
    for column in ("series_instance_uids", "sop_instance_uids"):
        uids = _uid_list(raw.get(column))
        if uids is None:
            fail(column, "cannot be read as a list of UIDs", "UIDs separated by ';' or a JSON list")
            uids = []
        bad = [u for u in uids if not dicom_uid.is_uid(u)]
        if bad:
            fail(column, f"{_show(bad[0])} is not a DICOM UID", dicom_uid.DESCRIPTION)
        uid_lists[column] = uids

    copiable = _text(raw.get("copiable_attributes"))
    if copiable is not None:
        try:
            copiable = ca.to_json(ca.parse_copiable_attributes(copiable, argument="copiable_attributes"))
        except ca.CopyRequestError as exc:
            fail(
                "copiable_attributes",
                str(exc).removeprefix("copiable_attributes "),
                "the copiableAttributes schema as JSON",
            )
            copiable = None
    information = _text(raw.get("copy_image_set_information"))
    if information is not None:
        try:
            ca.parse_copy_image_set_information(information)
        except ca.CopyRequestError as exc:
            fail(
                "copy_image_set_information",
                str(exc).removeprefix("copy_image_set_information "),
                "the AWS CLI's --copy-image-set-information JSON",
            )
            information = None
        else:
            clash = [c for c in REPLACED_BY_COPY_IMAGE_SET_INFORMATION if _text(raw.get(c))]
            if clash:
                fail(
                    "copy_image_set_information",
                    f"is given together with {', '.join(clash)}",
                    "either copy_image_set_information or the separate columns",
                )
    if copiable and (uid_lists["series_instance_uids"] or uid_lists["sop_instance_uids"]):
        fail(
            "copiable_attributes",
            "is given together with series_instance_uids/sop_instance_uids",
            "one way to name the subset",
        )

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
        row=row,
        datastore_id=datastore_id,
        source_image_set_id=source,
        source_version_id=source_version,
        destination_image_set_id=destination,
        destination_version_id=destination_version,
        series_instance_uids=uid_lists["series_instance_uids"],
        sop_instance_uids=uid_lists["sop_instance_uids"],
        copiable_attributes=copiable,
        copy_image_set_information=information,
        force=flags["force"],
        promote_to_primary=flags["promote_to_primary"],
        label=label,
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
