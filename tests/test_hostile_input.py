"""Hostile and careless input: each probe of the bad-input issue, as a test.

Manifest content that once crashed validation or the ledger (deep JSON, lone surrogates, NUL, huge
fields), CSV quoting that made rows vanish, headers whose checks cost out of proportion, formula
cells in the report CSVs, the ledger connection's URI forms and report paths built from run ids.
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
import uuid
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from healthimaging import bounded_json
from healthimaging.bulk import manifest_reader, report
from healthimaging.bulk.engine import register_manifest
from healthimaging.bulk.ledger import Ledger, LedgerConnectionError, engine_for, url_from_connection
from healthimaging.bulk.manifest import MAX_CELL_CHARACTERS, ManifestError, validate_manifest
from healthimaging.bulk.run import BulkCopyRunError, report_folder, safe_name

DATASTORE = "d" * 32
A = "a" * 32
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def ids(count: int) -> list[str]:
    return [f"{n:032x}" for n in range(1, count + 1)]


def csv_manifest(lines: list[str], header: str = "source_image_set_id,label") -> bytes:
    return (header + "\n" + "".join(line + "\n" for line in lines)).encode()


def only_error(validated) -> str:
    (row,) = validated.rejected
    return "; ".join(str(e) for e in row[2])


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ledger(request, tmp_path) -> Ledger:
    if request.param == "sqlite":
        return Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))
    try:
        return Ledger(engine_for(POSTGRES_URL))
    except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has PostgreSQL
        pytest.skip(f"PostgreSQL is not reachable: {exc}")


# ------------------------------------------------------------------------------------------ content that crashed


@pytest.mark.parametrize("levels", [40, 1000, 100_000])
def test_deeply_nested_json_is_a_row_rejection_not_a_recursion_error(levels):
    line = (
        json.dumps({"source_image_set_id": A, "label": "x"})[:-1]
        + ', "copiable_attributes": '
        + "[" * levels
        + "]" * levels
        + "}"
    )
    validated = validate_manifest((line + "\n").encode(), "m.jsonl", default_datastore_id=DATASTORE)
    assert validated.total_rows == 1 and not validated.rows
    assert "nests deeper than 32 levels" in only_error(validated)


def test_deep_json_inside_a_csv_cell_is_rejected_for_its_column():
    cell = '"' + ("[" * 5000 + "]" * 5000) + '"'
    validated = validate_manifest(
        csv_manifest([f"{A},{cell}"], "source_image_set_id,copiable_attributes"), default_datastore_id=DATASTORE
    )
    assert "column copiable_attributes" in only_error(validated) and "nests deeper" in only_error(validated)


def test_bounded_json_measures_depth_without_recursing():
    assert bounded_json.depth(1) == 0 and bounded_json.depth([]) == 1 and bounded_json.depth({"a": [{}]}) == 3
    nested: list = []
    for _ in range(50_000):
        nested = [nested]
    assert bounded_json.depth(nested) == 50_001


@pytest.mark.parametrize(
    "label, problem",
    [
        ("\\ud800", "holds an unpaired UTF-16 surrogate (U+D800)"),
        ("ok\\udfffok", "holds an unpaired UTF-16 surrogate (U+DFFF)"),
        ("a\\u0000b", "holds a NUL character"),
    ],
)
def test_text_no_ledger_can_store_is_a_row_rejection(any_ledger, label, problem):
    line = '{"source_image_set_id": "%s", "label": "%s"}\n' % (A, label)
    validated = validate_manifest(
        line.encode() + b'{"source_image_set_id": "%s"}\n' % ids(1)[0].encode(),
        "m.jsonl",
        default_datastore_id=DATASTORE,
    )
    assert [r.row for r in validated.rows] == [2]
    assert f"row 1, column label: {problem}" in only_error(validated)
    run_id = uuid.uuid4().hex
    registered = register_manifest(
        any_ledger, dag_id="hostile", run_id=run_id, manifest_uri="m.jsonl", validated=validated, batch_size=10
    )
    assert (registered.total_rows, registered.pending, registered.rejected) == (2, 1, 1)
    stored = {r["row_number"]: r for r in any_ledger.run_rows("hostile", run_id, validated.sha256)}
    assert stored[1]["status"] == "rejected" and "\ufffd" in stored[1]["label"]


def test_a_nul_in_a_csv_line_rejects_that_row_only(any_ledger):
    data = csv_manifest([f"{A},a\x00b", f"{ids(1)[0]},fine"])
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [2]
    assert only_error(validated).startswith("row 1: line 2 holds a NUL character")
    run_id = uuid.uuid4().hex
    register_manifest(
        any_ledger, dag_id="hostile", run_id=run_id, manifest_uri="m.csv", validated=validated, batch_size=10
    )
    assert sorted(r["status"] for r in any_ledger.run_rows("hostile", run_id, validated.sha256)) == [
        "pending",
        "rejected",
    ]


def test_a_field_over_16_mib_is_a_row_rejection_naming_its_line():
    data = csv_manifest([f'{A},"{"x" * (17 * 1024 * 1024)}"', f"{ids(1)[0]},fine"])
    validated = validate_manifest(data, "m.csv", default_datastore_id=DATASTORE)
    assert [r.row for r in validated.rows] == [2]
    assert only_error(validated).startswith("row 1: line 2 is 17,825,827 bytes long (at most 2,097,152)")


def test_a_cell_over_the_cell_limit_is_rejected_for_its_column():
    label = "y" * (MAX_CELL_CHARACTERS + 1)
    validated = validate_manifest(
        json.dumps({"source_image_set_id": A, "label": label}).encode(), "m.jsonl", default_datastore_id=DATASTORE
    )
    assert f"column label: is {MAX_CELL_CHARACTERS + 1:,} characters long" in only_error(validated)


def test_json_lines_that_are_not_objects_are_rejected_each():
    data = b'[1, 2]\n"text"\n42\nnull\n{"source_image_set_id": "%s"}\n' % A.encode()
    validated = validate_manifest(data, "m.jsonl", default_datastore_id=DATASTORE)
    assert validated.total_rows == 5 and [r.row for r in validated.rows] == [5]
    assert [str(errors[0]).split(";")[0] for _, _, errors in validated.rejected] == [
        "row 1: a JSON list, not an object",
        "row 2: a JSON str, not an object",
        "row 3: a JSON int, not an object",
        "row 4: a JSON NoneType, not an object",
    ]


# ------------------------------------------------------------------------------------------ rows that vanished


def test_a_stray_quote_refuses_the_manifest_naming_its_line():
    lines = [f"{i},label {i}" for i in ids(10)]
    lines[2] = f'{ids(10)[2]},"label with a stray quote'
    with pytest.raises(ManifestError) as excinfo:
        validate_manifest(csv_manifest(lines), "m.csv", default_datastore_id=DATASTORE)
    message = str(excinfo.value)
    assert message.startswith("line 4: a quoted field (column label) opens on this line and runs to line 11")
    assert "stray quote" in message


def test_a_quoted_field_may_span_lines_only_in_a_json_column_holding_json():
    document = json.dumps(
        {"SchemaVersion": "1.1", "Study": {"Series": {"1.2.3": {"Instances": {"1.2.3.4": {}}}}}}, indent=2
    )
    cell = '"' + document.replace('"', '""') + '"'
    validated = validate_manifest(
        csv_manifest([f"{A},{cell}", f"{ids(1)[0]},"], "source_image_set_id,copiable_attributes"),
        default_datastore_id=DATASTORE,
    )
    assert validated.total_rows == 2 and not validated.rejected
    broken = '"{\n""SchemaVersion"": \n' + f"{ids(2)[1]},\n"
    with pytest.raises(
        ManifestError, match=r"^line 2: a quoted field \(column copiable_attributes\) opens on this line"
    ):
        validate_manifest(
            csv_manifest([f"{A},{broken}"], "source_image_set_id,copiable_attributes"), default_datastore_id=DATASTORE
        )


def test_a_quote_left_open_at_the_end_refuses_the_manifest():
    with pytest.raises(
        ManifestError, match=r"^line 3: a quoted field \(column label\) opens on this line and runs to line 4"
    ):
        validate_manifest(
            csv_manifest([f"{A},ok", f'{ids(1)[0]},"open', "more"]), "m.csv", default_datastore_id=DATASTORE
        )


def test_a_quoted_field_larger_than_the_parser_limit_is_one_error_naming_the_line():
    tail = "".join(f"{'z' * 1000}\n" for _ in range(3000))  # 3 MB inside one open quote: past the field limit
    with pytest.raises(ManifestError, match=r"^line \d+: field larger than field limit"):
        validate_manifest(csv_manifest([f'{A},"{tail}']), "m.csv", default_datastore_id=DATASTORE)


def test_every_physical_line_of_a_csv_is_a_row_or_blank():
    lines = [f"{i},l" for i in ids(6)] + ["", "   ", f'{A},"quoted, with comma"', 'x"y,inner quote']
    validated = validate_manifest(csv_manifest(lines), "m.csv", default_datastore_id=DATASTORE)
    assert validated.total_rows == 8
    assert sorted([r.row for r in validated.rows] + [n for n, _, _ in validated.rejected]) == list(range(1, 9))


# ------------------------------------------------------------------------------------------ cost in proportion


def test_a_header_with_too_many_columns_is_one_error():
    header = ",".join(f"column_{i}" for i in range(100_000))  # 1.2 MB: within a line's limit
    with pytest.raises(ManifestError, match=r"^line 1: the CSV header has 100,000 columns; a manifest has at most 64"):
        validate_manifest(csv_manifest([A], header), "m.csv")


def test_a_repeated_column_is_found_in_one_pass():
    header = ",".join(["source_image_set_id"] * 64)
    validated = validate_manifest(csv_manifest([",".join([A] * 64)], header), "m.csv", default_datastore_id=DATASTORE)
    assert "the header repeats columns ['source_image_set_id']" in only_error(validated)


def test_an_unknown_header_costs_memory_in_proportion_to_the_file():
    header = ",".join(f"unknown_column_{i}" for i in range(60))
    data = csv_manifest([",".join(["x"] * 60)] * 20_000, header)
    tracemalloc.start()
    try:
        validated = validate_manifest(data, "m.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert validated.total_rows == 20_000 and not validated.rows
    message = str(validated.rejected[0][2][0])
    assert "unknown columns ['unknown_column_0'" in message and "and 55 more" in message and len(message) < 600
    assert peak < 4 * len(data), (peak, len(data))  # was hundreds of times the file's size


def test_size_row_and_line_limits_are_errors_naming_what_to_do(monkeypatch):
    monkeypatch.setattr(manifest_reader, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(
        ManifestError, match=r"the manifest is 1,0\d\d bytes; a manifest holds at most 100 bytes\. Split it"
    ):
        validate_manifest(csv_manifest([A] * 30, "source_image_set_id"), "m.csv")
    monkeypatch.setattr(manifest_reader, "MAX_MANIFEST_BYTES", 10**9)
    monkeypatch.setattr(manifest_reader, "MAX_ROWS", 5)
    with pytest.raises(ManifestError, match=r"^row 6: the manifest has more than 5 rows; split it"):
        validate_manifest(csv_manifest(ids(9), "source_image_set_id"), "m.csv", default_datastore_id=DATASTORE)
    monkeypatch.setattr(manifest_reader, "MAX_LINES", 7)
    with pytest.raises(ManifestError, match=r"^line 8: the manifest has more than 7 lines"):
        validate_manifest(b"\n" * 20 + A.encode(), "m.jsonl")


def test_a_manifest_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from healthimaging.bulk import storage

    big = tmp_path / "big.csv"
    with big.open("wb") as handle:  # sparse: 600 MB that were never written
        handle.truncate(600 * 1024 * 1024)
    with pytest.raises(ManifestError, match=r"the manifest is 629,145,600 bytes; a manifest holds at most 536,870,912"):
        storage.read_bytes(str(big), max_bytes=manifest_reader.MAX_MANIFEST_BYTES)


# ------------------------------------------------------------------------------------------ reports


@pytest.mark.parametrize("value", ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_report_csv_cells_that_start_a_formula_get_an_apostrophe(value):
    row = {
        "row_number": 3,
        "label": value,
        "source_image_set_id": value,
        "status": "rejected",
        "message": value,
        "attempts": 0,
    }
    (parsed,) = list(csv.DictReader(io.StringIO(report.to_csv([row]), newline="")))
    assert parsed["label"] == parsed["source_image_set_id"] == parsed["message"] == "'" + value
    assert parsed["row_number"] == "3" and parsed["attempts"] == "0"  # numbers are left as they are
    summary = report.summarize(
        [{**row, "error_code": value}], dag_id="d", run_id="r", manifest_uri="m", manifest_sha256="s", total_rows=1
    )
    assert json.loads(report.report_files([row], summary)["report.json"])["errors"] == {value: 1}  # JSON stays exact


def test_report_csv_keeps_line_breaks_inside_their_cell():
    rows = [
        {"row_number": 1, "message": "a\rb"},
        {"row_number": 2, "message": "c\nd"},
        {"row_number": 3, "message": "e\r\nf"},
    ]
    parsed = list(csv.DictReader(io.StringIO(report.to_csv(rows), newline="")))
    assert [(r["row_number"], r["message"]) for r in parsed] == [("1", "a\rb"), ("2", "c\nd"), ("3", "e\r\nf")]


def test_report_csv_leaves_ordinary_text_alone():
    (parsed,) = list(csv.DictReader(io.StringIO(report.to_csv([{"label": "study 12 = good", "message": "a-b"}]))))
    assert (parsed["label"], parsed["message"]) == ("study 12 = good", "a-b")


# ------------------------------------------------------------------------------------------ the ledger connection


def airflow_connection(value: str):
    from airflow.models.connection import Connection

    if value.startswith("{"):
        return Connection.from_json(value, conn_id="healthimaging_ledger")
    return Connection(conn_id="healthimaging_ledger", uri=value)


@pytest.mark.parametrize(
    "value",
    [
        "sqlite:////var/ledgers/ledger.sqlite3",
        "sqlite://%2Fvar%2Fledgers%2Fledger.sqlite3",
        "sqlite://localhost/var/ledgers/ledger.sqlite3",
        '{"conn_type": "sqlite", "host": "/var/ledgers/ledger.sqlite3"}',
        '{"conn_type": "sqlite", "schema": "/var/ledgers/ledger.sqlite3"}',
    ],
)
def test_every_sqlite_form_airflow_accepts_names_the_same_file(value):
    assert str(url_from_connection(airflow_connection(value))) == "sqlite:////var/ledgers/ledger.sqlite3"


@pytest.mark.parametrize(
    "value, problem",
    [
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
        ("sqlite:///ledger.sqlite3", "relative to each worker's directory"),
        ('{"conn_type": "sqlite", "host": "/a.db", "schema": "b.db"}', "gives the SQLite file twice"),
        ("postgres://user:secret@db.example:5432", "names no database"),
        ("mysql://db.example/ledger", "has type 'mysql'; use postgres or sqlite"),
    ],
)
def test_a_ledger_connection_that_cannot_be_used_is_an_error_naming_it(value, problem):
    with pytest.raises(LedgerConnectionError) as excinfo:
        url_from_connection(airflow_connection(value))
    assert "connection 'healthimaging_ledger'" in str(excinfo.value) and problem in str(excinfo.value)
    assert "secret" not in str(excinfo.value)


def test_the_postgres_uri_form_resolves_with_its_database():
    url = url_from_connection(airflow_connection("postgres://copier:pw@db.example:5433/ledger"))
    assert url.render_as_string(hide_password=False) == "postgresql+psycopg2://copier:pw@db.example:5433/ledger"


def test_a_sqlite_uri_ledger_is_a_file_not_memory(tmp_path):
    url = url_from_connection(airflow_connection(f"sqlite:///{tmp_path}/uri-ledger.sqlite3"))
    Ledger(engine_for(url)).take_manifest("m.csv", "0" * 64, "d", "r")
    assert (tmp_path / "uri-ledger.sqlite3").stat().st_size > 0


# ------------------------------------------------------------------------------------------ report paths


@pytest.mark.parametrize(
    "run_id, expected",
    [
        ("..", "_.."),
        (".", "_."),
        ("", "_"),
        ("manual__2026-12-04T01:00:00+00:00", "manual__2026-12-04T01_00_00+00_00"),
        ("../../etc", "_.._.._etc"),
        ("a/b\\c", "a_b_c"),
        ("ünï", "_n_"),
        (".hidden", "_.hidden"),
    ],
)
def test_run_ids_become_one_harmless_path_segment(run_id, expected):
    assert safe_name(run_id) == expected


def test_a_long_run_id_keeps_a_digest():
    long = safe_name("x" * 500)
    assert len(long) == 120 and long != safe_name("x" * 499) and "/" not in long


@pytest.mark.parametrize("run_id", ["..", "../..", "../../../tmp/evil", "/", "manual__..//.."])
def test_report_folders_stay_inside_the_root(report_root, run_id):
    folder = report_folder({}, "healthimaging_bulk_copy", run_id, manifest_uri="s3://b/../../x.csv")
    assert folder.resolve().is_relative_to(report_root.resolve())
    assert folder.parent.parent.parent == report_root.resolve()


@pytest.mark.parametrize("chosen", ["/tmp", "../elsewhere", "sub/../../.."])
def test_a_report_folder_param_outside_the_root_is_refused(report_root, chosen):
    with pytest.raises(
        BulkCopyRunError, match=r"report_folder .* is outside the report folder .*\[healthimaging\] report_folder"
    ):
        report_folder({"report_folder": chosen}, "d", "r")


def test_a_report_folder_param_inside_the_root_is_used(report_root):
    assert report_folder({"report_folder": "team-a"}, "d", "r") == report_root.resolve() / "team-a" / "d" / "r"
    inside = report_root / "abs"
    assert report_folder({"report_folder": str(inside)}, "d", "r") == inside.resolve() / "d" / "r"


def test_a_symbolic_link_out_of_the_root_is_refused(report_root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (report_root / "d").mkdir()
    (report_root / "d" / "r").symlink_to(outside)
    with pytest.raises(BulkCopyRunError, match="leads outside"):
        report_folder({}, "d", "r")


def test_connection_like_objects_without_an_id_name_the_default():
    conn = SimpleNamespace(conn_type="sqlite", host="", schema="", extra_dejson={})
    with pytest.raises(LedgerConnectionError, match="connection 'healthimaging_ledger' names no SQLite file"):
        url_from_connection(conn)
