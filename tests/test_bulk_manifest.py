"""Fast unit tests of bulk-copy manifests (validation, every bad-manifest case naming its row and column),
their registration in the ledger, and the reports. No emulator, no Airflow database."""

from __future__ import annotations

import csv
import io
import json

import pytest

from healthimaging.bulk import report
from healthimaging.bulk.engine import register_manifest
from healthimaging.bulk.ledger import Ledger, engine_for
from healthimaging.bulk.manifest import COLUMNS, ManifestError, RowError, template, validate_manifest
from healthimaging.bulk.run import BulkCopyRunError, prepare, verdict

DATASTORE = "d" * 32
A, B, C, E = "a" * 32, "b" * 32, "c" * 32, "e" * 32
SERIES, SOP = "1.2.840.1", "1.2.840.1.1"


def csv_bytes(rows: list[dict], header: list[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header or list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def jsonl_bytes(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def errors_by_row(validated) -> dict[int, list[str]]:
    return {row: [str(e) for e in errors] for row, _, errors in validated.rejected}


def accounted(validated) -> None:
    """Every data row is either valid or rejected, once."""
    numbers = sorted([r.row for r in validated.rows] + [row for row, _, _ in validated.rejected])
    assert numbers == list(range(1, validated.total_rows + 1))


# ------------------------------------------------------------------------------------------ valid input


def test_a_valid_csv_manifest_reads_every_column():
    copiable = {"SchemaVersion": "1.1", "Study": {"Series": {SERIES: {"Instances": {SOP: {}}}}}}
    data = csv_bytes(
        [
            {"datastore_id": DATASTORE, "source_image_set_id": A, "label": "new"},
            {
                "source_image_set_id": B,
                "source_version_id": "2",
                "destination_image_set_id": C,
                "destination_version_id": "3",
                "copiable_attributes": json.dumps(copiable),
                "force": "yes",
                "promote_to_primary": "0",
                "label": "merge",
            },
            {"source_image_set_id": C, "sop_instance_uids": f"{SOP};{SOP}.2", "series_instance_uids": "[]"},
        ]
    )
    validated = validate_manifest(data, "m.csv", default_datastore_id=E)
    assert validated.total_rows == 3 and not validated.rejected
    first, merge, subset = validated.rows
    assert (first.row, first.datastore_id, first.label) == (1, DATASTORE, "new")
    assert merge.datastore_id == E  # the run's default data store
    assert (merge.source_version_id, merge.destination_image_set_id, merge.destination_version_id) == ("2", C, "3")
    assert (
        json.loads(merge.copiable_attributes) == copiable and merge.force is True and merge.promote_to_primary is False
    )
    assert subset.sop_instance_uids == [SOP, f"{SOP}.2"]


def test_byte_order_mark_crlf_and_blank_lines_are_tolerated():
    data = b"\xef\xbb\xbf" + f"source_image_set_id,label\r\n\r\n{A},x\r\n   \r\n{B},y\r\n".encode()
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert [(r.row, r.source_image_set_id) for r in validated.rows] == [(1, A), (2, B)]
    assert validated.total_rows == 2


def test_jsonl_is_detected_from_the_content_and_accepts_native_types():
    data = jsonl_bytes([{"source_image_set_id": A, "force": True, "sop_instance_uids": [SOP]}, ""])
    validated = validate_manifest(data, "manifest-without-suffix", default_datastore_id=DATASTORE)
    assert (
        validated.total_rows == 1 and validated.rows[0].force is True and validated.rows[0].sop_instance_uids == [SOP]
    )


def test_template_round_trips():
    data = template([{"datastore_id": DATASTORE, "source_image_set_id": A}]).encode()
    assert validate_manifest(data).rows[0].source_image_set_id == A


# ------------------------------------------------------------------------------------------ bad manifests


def test_missing_required_column_rejects_every_row_naming_the_column():
    data = f"datastore_id,label\n{DATASTORE},x\n{DATASTORE},y\n".encode()
    validated = validate_manifest(data, "m.csv")
    assert validated.total_rows == 2 and not validated.rows
    for row, messages in errors_by_row(validated).items():
        assert messages == [
            f"row {row}: not read: the header lacks the required columns ['source_image_set_id']; "
            "expected a header naming known columns"
        ]
    accounted(validated)


def test_unknown_csv_column_rejects_every_row_naming_the_column():
    data = f"source_image_set_id,colour\n{A},red\n{B},blue\n".encode()
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert sorted(errors_by_row(validated)) == [1, 2]
    for row, (message,) in errors_by_row(validated).items():
        assert message.startswith(f"row {row}: not read: the header has unknown columns ['colour']")
    accounted(validated)


def test_repeated_csv_column_rejects_every_row():
    data = f"source_image_set_id,source_image_set_id\n{A},{B}\n".encode()
    (message,) = errors_by_row(validate_manifest(data, "m.csv", default_datastore_id=DATASTORE))[1]
    assert "the header repeats columns ['source_image_set_id']" in message


def test_unknown_jsonl_key_is_rejected_on_its_row():
    data = jsonl_bytes([{"source_image_set_id": A}, {"source_image_set_id": B, "colour": "red"}])
    validated = validate_manifest(data, "m.jsonl", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [1]
    (message,) = errors_by_row(validated)[2]
    assert message.startswith("row 2: unknown columns ['colour']; expected only datastore_id, source_image_set_id")


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        (
            "source_image_set_id",
            "XYZ",
            "row 1, column source_image_set_id: 'XYZ' is not an id; expected 32 characters of 0-9 and a-z",
        ),
        (
            "source_image_set_id",
            "",
            "row 1, column source_image_set_id: is empty; expected a 32-character image set id ([0-9a-z]{32})",
        ),
        ("source_image_set_id", A.upper(), f"row 1, column source_image_set_id: '{A.upper()}' is not an id"),
        (
            "datastore_id",
            "short",
            "row 1, column datastore_id: 'short' is not a data store id; expected 32 characters of 0-9 and a-z",
        ),
        ("destination_image_set_id", A + "0", f"row 1, column destination_image_set_id: '{A}0' is not an id"),
        ("destination_image_set_id", A, "row 1, column destination_image_set_id: is the source image set"),
        (
            "source_version_id",
            "0",
            "row 1, column source_version_id: '0' is not a version id; expected a whole number from 1",
        ),
        (
            "destination_version_id",
            "2",
            "row 1, column destination_version_id: is set without destination_image_set_id",
        ),
        ("sop_instance_uids", "1.2.x", "row 1, column sop_instance_uids: '1.2.x' is not a DICOM UID"),
        ("series_instance_uids", "[1.2", "row 1, column series_instance_uids: cannot be read as a list of UIDs"),
        ("force", "maybe", "row 1, column force: 'maybe' is not a boolean; expected true or false"),
        ("promote_to_primary", "2", "row 1, column promote_to_primary: '2' is not a boolean"),
        ("label", "x" * 300, "row 1, column label: is 300 characters long; expected at most 256 characters"),
        ("copiable_attributes", "{not json", "row 1, column copiable_attributes: is not valid JSON"),
        (
            "copiable_attributes",
            '{"SchemaVersion": "1.1"}',
            "row 1, column copiable_attributes: does not follow the copiableAttributes schema",
        ),
        ("copy_image_set_information", "[]", "row 1, column copy_image_set_information:"),
    ],
)
def test_a_bad_cell_is_rejected_naming_its_row_and_column(column, value, expected):
    row = {"datastore_id": DATASTORE, "source_image_set_id": A, column: value}
    validated = validate_manifest(csv_bytes([row]), "m.csv")
    assert not validated.rows
    (message,) = errors_by_row(validated)[1]
    assert message.startswith(expected), message


def test_every_error_of_every_row_is_reported():
    data = csv_bytes(
        [
            {"source_image_set_id": A},
            {"datastore_id": "nope", "source_image_set_id": "also-bad", "force": "perhaps"},
            {"source_image_set_id": B},
        ]
    )
    validated = validate_manifest(data, "m.csv")  # no default data store
    assert [r.row for r in validated.rows] == []  # rows 1 and 3 lack a data store
    errors = {(e.row, e.column) for e in validated.errors}
    assert errors == {
        (1, "datastore_id"),
        (2, "datastore_id"),
        (2, "source_image_set_id"),
        (2, "force"),
        (3, "datastore_id"),
    }
    assert all(isinstance(e, RowError) and e.expected for e in validated.errors)


def test_bad_json_lines_are_rejected_by_row():
    data = (
        f'{{"source_image_set_id": "{A}"}}\n'
        '{"source_image_set_id": \n'
        "[1, 2]\n"
        "\n"
        f'{{"source_image_set_id": "{B}", "force": "true"}}\n'
    ).encode()
    validated = validate_manifest(data, "m.jsonl", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [1, 4]  # the blank line is not a row
    errors = errors_by_row(validated)
    assert errors[2] == [
        "row 2: not valid JSON (Expecting value: line 1 column 25 (char 24)); expected one JSON object per line"
    ]
    assert errors[3] == ["row 3: a JSON list, not an object; expected one JSON object per line"]
    accounted(validated)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", "the manifest has no rows"),
        ("blank.csv", b"\n \n", "the manifest has no rows"),
        ("header.csv", template().encode(), "the manifest has no rows (only a header)"),
        ("empty.jsonl", b"\n\n", "the manifest has no rows"),
    ],
)
def test_an_empty_manifest_is_an_error_for_the_whole_file(name, data, message):
    with pytest.raises(ManifestError) as excinfo:
        validate_manifest(data, name)
    assert str(excinfo.value) == message


def test_duplicate_rows_are_rejected_naming_the_first():
    data = csv_bytes(
        [
            {"source_image_set_id": A},
            {"source_image_set_id": B},
            {"source_image_set_id": A, "label": "again"},  # a label does not make it another copy
            {"source_image_set_id": A, "source_version_id": "1"},  # a pinned version is another copy
            {"source_image_set_id": B, "force": "no"},
        ]
    )
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [1, 2, 4]
    assert errors_by_row(validated) == {
        3: ["row 3: duplicates row 1 (same source, version, target and subset); expected each copy listed once"],
        5: ["row 5: duplicates row 2 (same source, version, target and subset); expected each copy listed once"],
    }


def test_non_utf8_bytes_reject_only_their_row():
    data = (
        csv_bytes([{"source_image_set_id": A}])
        + f"{DATASTORE},{B},,,,,,,,,,caf".encode()
        + b"\xe9\n"
        + f"{DATASTORE},{C},,,,,,,,,,ok\n".encode()
    )
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [1, 3]
    assert errors_by_row(validated) == {
        2: ["row 2: line 3 is not valid UTF-8 (byte 0xe9 at position 78); expected a UTF-8 line holding one row"]
    }


def test_non_utf8_bytes_in_jsonl():
    data = (
        jsonl_bytes([{"source_image_set_id": A}]) + b'{"source_image_set_id": "' + B.encode() + b'", "label": "\xff"}\n'
    )
    validated = validate_manifest(data, "m.jsonl", default_datastore_id=DATASTORE)
    assert errors_by_row(validated) == {
        2: ["row 2: line 2 is not valid UTF-8 (byte 0xff at position 70); expected one JSON object per line"]
    }
    accounted(validated)


def test_non_utf8_csv_header_rejects_every_row():
    data = b"source_image_set_id,lab\xe9l\n" + f"{A},x\n{B},y\n".encode()
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert validated.total_rows == 2 and not validated.rows
    for row, (message,) in errors_by_row(validated).items():
        assert message.startswith(
            f"row {row}: not read: the CSV header cannot be read (line 1 is not valid UTF-8 (byte 0xe9"
        )


def test_a_row_with_the_wrong_number_of_fields():
    data = f"source_image_set_id,label\n{A},x,extra\n{B},y\n".encode()
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert errors_by_row(validated) == {
        1: ["row 1: has 3 fields but the header has 2; expected a UTF-8 line holding one row"]
    }


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_300000_character_copiable_attributes_is_rejected_without_echoing_it(fmt):
    huge = "x" * 300_000
    rows = [
        {"datastore_id": DATASTORE, "source_image_set_id": A, "copiable_attributes": huge},
        {"datastore_id": DATASTORE, "source_image_set_id": B},
    ]
    data = csv_bytes(rows) if fmt == "csv" else jsonl_bytes(rows)
    validated = validate_manifest(data, f"m.{fmt}")
    assert [r.row for r in validated.rows] == [2]
    (message,) = errors_by_row(validated)[1]
    assert message.startswith(
        "row 1, column copiable_attributes: is 300,000 characters long; the service accepts at most 260,000"
    )
    assert len(message) < 300


def test_a_long_but_valid_copiable_attributes_cell_is_read():
    """Over csv's default 131,072-character field limit, under the service's 260,000."""
    instances = {f"1.2.840.1.{i}": {} for i in range(9000)}
    copiable = json.dumps(
        {"SchemaVersion": "1.1", "Study": {"Series": {SERIES: {"Instances": instances}}}}, separators=(",", ":")
    )
    assert 131_072 < len(copiable) < 260_000
    validated = validate_manifest(
        csv_bytes([{"source_image_set_id": A, "copiable_attributes": copiable}]),
        "m.csv",
        default_datastore_id=DATASTORE,
    )
    assert (
        not validated.rejected
        and len(json.loads(validated.rows[0].copiable_attributes)["Study"]["Series"][SERIES]["Instances"]) == 9000
    )


# ------------------------------------------------------------------------------------------ registration


@pytest.fixture
def ledger(tmp_path):
    return Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))


def bad_manifest_bytes() -> bytes:
    """Every row-level problem in one JSON Lines manifest, plus two valid rows."""
    return (
        jsonl_bytes(
            [
                {"source_image_set_id": A, "label": "ok"},
                {"source_image_set_id": "not-an-id"},
                '{"source_image_set_id": ',
                {"source_image_set_id": A, "label": "duplicate"},
                {"source_image_set_id": C, "copiable_attributes": "y" * 300_000},
                {"source_image_set_id": B, "colour": "red"},
                {"source_image_set_id": E, "label": "second ok"},
            ]
        )
        + b'{"source_image_set_id": "'
        + C.encode()
        + b'", "label": "\xfe"}\n'
    )


def test_prepare_records_every_row_in_the_ledger(ledger, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_bytes(bad_manifest_bytes())
    prepared = prepare(
        ledger,
        dag_id="d",
        run_id="r",
        params={"manifest": str(manifest), "default_datastore_id": DATASTORE, "batch_size": 1},
    )
    assert prepared["total_rows"] == 8 and prepared["rejected"] == 6 and prepared["batches"] == [0, 1]
    rows = {r["row_number"]: r for r in ledger.run_rows("d", "r")}
    assert sorted(rows) == list(range(1, 9))
    assert {n: r["status"] for n, r in rows.items()} == {
        1: "pending",
        2: "rejected",
        3: "rejected",
        4: "rejected",
        5: "rejected",
        6: "rejected",
        7: "pending",
        8: "rejected",
    }
    assert rows[2]["message"].startswith("row 2, column source_image_set_id: 'not-an-id' is not an id")
    assert rows[3]["message"].startswith("row 3: not valid JSON")
    assert (
        rows[4]["message"]
        == "row 4: duplicates row 1 (same source, version, target and subset); expected each copy listed once"
    )
    assert rows[5]["message"].startswith("row 5, column copiable_attributes: is 300,000 characters long")
    assert rows[6]["message"].startswith("row 6: unknown columns ['colour']")
    assert rows[8]["message"].startswith("row 8: line 8 is not valid UTF-8")
    assert all(r["error_code"] == "InvalidManifestRow" for r in rows.values() if r["status"] == "rejected")
    assert rows[4]["label"] == "duplicate" and rows[5]["source_image_set_id"] == C
    # Preparing again (a retry of the task) changes nothing.
    assert prepare(
        ledger,
        dag_id="d",
        run_id="r",
        params={"manifest": str(manifest), "default_datastore_id": DATASTORE, "batch_size": 1},
    )["batches"] == [0, 1]
    assert len(ledger.run_rows("d", "r")) == 8


def test_strict_mode_fails_before_copying_and_accounts_for_every_row(ledger, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_bytes(bad_manifest_bytes())
    with pytest.raises(BulkCopyRunError) as excinfo:
        prepare(
            ledger,
            dag_id="d",
            run_id="r",
            params={"manifest": str(manifest), "default_datastore_id": DATASTORE, "strict": True},
        )
    assert str(excinfo.value).startswith(
        "strict mode: 6 of 8 manifest rows are invalid (first: row 2, column "
        "source_image_set_id: 'not-an-id' is not an id"
    )
    assert ledger.status_counts("d", "r") == {"rejected": 6, "skipped": 2}
    skipped = [r for r in ledger.run_rows("d", "r") if r["status"] == "skipped"]
    assert {r["error_code"] for r in skipped} == {"StrictMode"} and all(r["batch"] is None for r in skipped)


def test_rows_an_earlier_run_copied_are_skipped(ledger):
    validated = validate_manifest(
        csv_bytes([{"source_image_set_id": A}, {"source_image_set_id": B}]), "m.csv", default_datastore_id=DATASTORE
    )
    register_manifest(ledger, dag_id="d", run_id="first", manifest_uri="m.csv", validated=validated, batch_size=10)
    ledger.update(
        "d", "first", validated.sha256, 1, status="succeeded", destination_image_set_id=C, destination_version_id="1"
    )
    again = register_manifest(
        ledger, dag_id="d", run_id="second", manifest_uri="m.csv", validated=validated, batch_size=10
    )
    assert (again.pending, again.skipped, again.batches) == (1, 1, [0])
    skipped = ledger.run_rows("d", "second")[0]
    assert (skipped["status"], skipped["error_code"], skipped["destination_image_set_id"]) == (
        "skipped",
        "AlreadyCopied",
        C,
    )
    assert skipped["message"] == "copied by run first (row 1)"
    forced = register_manifest(
        ledger, dag_id="d", run_id="third", manifest_uri="m.csv", validated=validated, batch_size=10, skip_copied=False
    )
    assert (forced.pending, forced.skipped) == (2, 0)


@pytest.mark.parametrize("owner_lease_expired", [True, False])
def test_a_new_run_takes_over_the_copies_a_dead_engine_left_in_flight(ledger, owner_lease_expired):
    """The old run's engine holds rows 1 and 2 in flight; whether the new run takes them over depends on its
    lease alone (not on the old Airflow run's state, which nobody may have ended after a kill)."""
    validated = validate_manifest(
        csv_bytes([{"source_image_set_id": s} for s in (A, B, C)]), "m.csv", default_datastore_id=DATASTORE
    )
    register_manifest(ledger, dag_id="d", run_id="old", manifest_uri="m.csv", validated=validated, batch_size=10)
    ledger.acquire_lease("old-engine", dag_id="d", run_id="old", batch=0, seconds=-1 if owner_lease_expired else 60)
    ledger.update(
        "d",
        "old",
        validated.sha256,
        1,
        status="submitted",
        destination_image_set_id=E,
        destination_version_id="1",
        submitted_at=10.0,
        attempts=1,
        copy_kind="new",
        plan_json='{"plan": 1}',
        claim="old-engine",
    )
    ledger.update(
        "d",
        "old",
        validated.sha256,
        2,
        status="submitting",
        claimed_at=20.0,
        sent_at=21.0,
        plan_json='{"plan": 2}',
        claim="old-engine",
    )

    registered = register_manifest(
        ledger, dag_id="d", run_id="new", manifest_uri="m.csv", validated=validated, batch_size=10
    )

    new = {r["row_number"]: r for r in ledger.run_rows("d", "new")}
    old = {r["row_number"]: r for r in ledger.run_rows("d", "old")}
    assert registered.batches == [0] and all(r["batch"] == 0 for r in new.values())
    if owner_lease_expired:
        assert (new[1]["status"], new[1]["destination_image_set_id"], new[1]["submitted_at"], new[1]["plan_json"]) == (
            "submitted",
            E,
            10.0,
            '{"plan": 1}',
        )
        assert (new[2]["status"], new[2]["claimed_at"], new[2]["sent_at"], new[2]["plan_json"]) == (
            "submitting",
            20.0,
            21.0,
            '{"plan": 2}',
        )
        assert (
            new[1]["claim"] is None and new[2]["claim"] is None
        )  # the new run's engine takes them over and reconciles
        assert new[3]["status"] == "pending"
        assert [(old[n]["status"], old[n]["error_code"], old[n]["message"]) for n in (1, 2)] == [
            ("skipped", "ResumedByLaterRun", "resumed by run new (row 1)"),
            ("skipped", "ResumedByLaterRun", "resumed by run new (row 2)"),
        ]
        assert old[3]["status"] == "pending"  # never sent: nothing to take over
        assert not ledger.renew_lease("old-engine")  # revoked: the old engine can never send again
    else:  # a live engine keeps its copies; the new run's rows wait for the source
        assert [r["status"] for r in new.values()] == ["pending"] * 3
        assert [old[n]["status"] for n in (1, 2, 3)] == ["submitted", "submitting", "pending"]
        assert ledger.renew_lease("old-engine")


def test_throttles_are_added_to_by_the_row_s_owner_and_by_no_one_else(ledger):
    """A fenced write adds to the stored throttles (``throttles = throttles + n``): a row held by a later owner
    keeps what an earlier one stored, and an owner that lost the row adds nothing."""
    validated = validate_manifest(csv_bytes([{"source_image_set_id": A}]), "m.csv", default_datastore_id=DATASTORE)
    register_manifest(ledger, dag_id="d", run_id="r", manifest_uri="m.csv", validated=validated, batch_size=10)
    (row,) = ledger.run_rows("d", "r")
    assert row["throttles"] == 0  # the column's default on a new row
    ledger.update("d", "r", validated.sha256, 1, status="submitting", claim="first")
    assert ledger.fenced_update(row["id"], "first", add={"throttles": 2}, attempts=1)
    ledger.update("d", "r", validated.sha256, 1, claim="second")  # taken over
    assert not ledger.fenced_update(row["id"], "first", add={"throttles": 5})
    assert ledger.fenced_update(row["id"], "second", add={"throttles": 3}, attempts=2)
    (row,) = ledger.run_rows("d", "r")
    assert (row["throttles"], row["attempts"]) == (5, 2)


def test_a_missing_manifest_names_the_path(ledger, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file on this worker"):
        prepare(ledger, dag_id="d", run_id="r", params={"manifest": str(tmp_path / "nope.csv")})


def test_an_empty_manifest_fails_prepare_with_the_reason(ledger, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(BulkCopyRunError, match=r"manifest .*empty.csv: the manifest has no rows"):
        prepare(ledger, dag_id="d", run_id="r", params={"manifest": str(tmp_path / "empty.csv")})
    assert ledger.run_rows("d", "r") == []


# ------------------------------------------------------------------------------------------ reports


def ledger_row(number: int, status: str, **fields) -> dict:
    base = {
        "row_number": number,
        "label": f"row {number}",
        "datastore_id": DATASTORE,
        "source_image_set_id": A,
        "status": status,
        "error_code": None,
        "message": None,
        "submitted_at": None,
        "completed_at": None,
    }
    return {**base, **fields}


def test_summary_counts_throughput_latency_and_errors():
    rows = [ledger_row(n, "succeeded", submitted_at=100.0 + n, completed_at=100.0 + n + n) for n in range(1, 11)]
    rows += [
        ledger_row(
            11, "failed", error_code="COPY_FAILED", message="INVALID_REQUEST: x", submitted_at=105.0, completed_at=130.0
        ),
        ledger_row(12, "rejected", error_code="InvalidManifestRow"),
        ledger_row(13, "skipped", error_code="AlreadyCopied"),
    ]
    summary = report.summarize(
        rows,
        dag_id="d",
        run_id="r",
        manifest_uri="m.csv",
        manifest_sha256="s",
        total_rows=13,
        tolerated_failure_percent=10,
    )
    assert summary["counts"] == {
        "succeeded": 10,
        "failed": 1,
        "rejected": 1,
        "skipped": 1,
        "planned": 0,
        "unfinished": 0,
        "accountedFor": 13,
    }
    assert summary["allRowsAccountedFor"] is True
    assert summary["failurePercent"] == pytest.approx(100 / 11, abs=1e-3)
    assert summary["throughput"]["wallSeconds"] == 29.0  # first submission at 101, last completion at 130
    assert summary["throughput"]["copiesPerSecond"] == pytest.approx(10 / 29, abs=1e-4)
    latency = summary["latencySeconds"]
    assert (
        latency["max"] == 10.0
        and latency["p50"] == pytest.approx(5.5)
        and latency["p50"] <= latency["p90"] <= latency["p99"] <= 10
    )
    assert summary["errors"] == {"COPY_FAILED": 1, "InvalidManifestRow": 1}
    assert verdict({**summary, "reportFolder": "/r"}) is None  # 9.09% failed, 10% tolerated


def test_report_files_one_csv_per_outcome():
    rows = [
        ledger_row(1, "succeeded"),
        ledger_row(2, "failed", error_code="ValidationException", message="bad, really"),
    ]
    summary = report.summarize(rows, dag_id="d", run_id="r", manifest_uri="m", manifest_sha256="s", total_rows=2)
    files = report.report_files(rows, summary)
    assert sorted(files) == ["failed.csv", "rejected.csv", "report.json", "skipped.csv", "succeeded.csv"]
    failed = list(csv.DictReader(io.StringIO(files["failed.csv"])))
    assert [(r["row_number"], r["error_code"], r["message"]) for r in failed] == [
        ("2", "ValidationException", "bad, really")
    ]
    assert list(csv.DictReader(io.StringIO(files["rejected.csv"]))) == []
    assert json.loads(files["report.json"])["counts"]["failed"] == 1
    dry = report.summarize(
        [ledger_row(1, "planned")],
        dag_id="d",
        run_id="r",
        manifest_uri="m",
        manifest_sha256="s",
        total_rows=1,
        dry_run=True,
    )
    assert sorted(report.report_files([ledger_row(1, "planned")], dry)) == [
        "failed.csv",
        "plan.csv",
        "rejected.csv",
        "report.json",
        "skipped.csv",
    ]


@pytest.mark.parametrize(
    ("failed", "succeeded", "tolerated", "fails"),
    [
        (1, 3, 30, False),
        (1, 3, 10, True),
        (1, 3, 25, False),
        (0, 4, 0, False),
        (1, 0, 99.9, True),
    ],
)
def test_verdict_follows_the_tolerated_failure_percent(failed, succeeded, tolerated, fails):
    rows = [ledger_row(n, "failed", error_code="COPY_FAILED") for n in range(failed)]
    rows += [ledger_row(100 + n, "succeeded") for n in range(succeeded)]
    summary = report.summarize(
        rows,
        dag_id="d",
        run_id="r",
        manifest_uri="m",
        manifest_sha256="s",
        total_rows=len(rows),
        tolerated_failure_percent=tolerated,
    )
    reason = verdict({**summary, "reportFolder": "/reports"})
    assert (reason is not None) == fails
    if fails:
        assert reason.startswith(f"{failed} copies failed") and "failed.csv in /reports" in reason


def test_a_dry_run_counts_failures_among_the_rows_checked():
    rows = [ledger_row(1, "failed", error_code="ForceRequired")] + [ledger_row(n, "planned") for n in (2, 3, 4)]
    summary = report.summarize(
        rows,
        dag_id="d",
        run_id="r",
        manifest_uri="m",
        manifest_sha256="s",
        total_rows=4,
        dry_run=True,
        tolerated_failure_percent=30,
    )
    assert summary["failurePercent"] == 25.0 and verdict(summary) is None
    assert summary["counts"]["planned"] == 3 and summary["allRowsAccountedFor"]


def test_verdict_fails_a_run_whose_rows_were_all_rejected_or_unfinished():
    rejected = report.summarize(
        [ledger_row(1, "rejected")], dag_id="d", run_id="r", manifest_uri="m", manifest_sha256="s", total_rows=1
    )
    assert verdict(rejected).startswith("all 1 manifest rows were rejected")
    unfinished = report.summarize(
        [ledger_row(1, "pending")], dag_id="d", run_id="r", manifest_uri="m", manifest_sha256="s", total_rows=1
    )
    assert unfinished["allRowsAccountedFor"] is False
    assert verdict(unfinished).startswith("1 rows did not finish")
