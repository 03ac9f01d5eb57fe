"""End to end: the bulk-copy DAGs run with ``dag.test()`` against the HealthImaging emulator.

Each test has its own emulator, its own ledger (a SQLite file under tmp_path, or PostgreSQL where the
test says so) and its own report folder. Copies last 50 ms in the emulator and batches poll every
0.2 s, so a run takes a few seconds; the rate limit is raised unless the test is about it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa

from healthimaging.bulk import engine as bulk_copy
from healthimaging.bulk.engine import BatchCopyEngine, BulkCopySettings
from healthimaging.bulk.ledger import Ledger, copies, engine_for, manifests
from healthimaging.bulk.manifest import template
from healthimaging.bulk.rate_limit import SharedTokenBucket
from healthimaging.bulk.run import MAX_BATCHES, prepare
from healthimaging_emulator.exceptions import ValidationException
from stack.processes import free_port
from tests.bulk_helpers import (
    BULK_DAG_ID,
    FAST,
    SCHEDULED_DAG_ID,
    Run,
    accounted,
    bulk_conf,
    copy_calls,
    document,
    image_set_ids,
    load_dag,
    run_dag,
    seed,
    series_copies,
    write_manifest,
)

MISSING = "f" * 32  # a well-formed image set id that no data store holds
POSTGRES = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
PROGRESS = re.compile(
    r"batch (\d+): (\d+)/(\d+) rows done \((\d+) succeeded, (\d+) failed, (\d+) in flight\), "
    r"([\d.]+) rows/s, ETA (\d+s|unknown)"
)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def postgres_ledger(monkeypatch) -> Ledger:
    """The ledger in PostgreSQL (database ``test``); tests key their rows by their own data store and run ids."""
    try:
        engine = engine_for(POSTGRES_URL)
    except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has it
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    monkeypatch.setenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", json.dumps(POSTGRES))
    return Ledger(engine)


def asset_events(name: str) -> list[tuple[str, dict[str, Any]]]:
    """(asset URI, extra) of the events of the asset called ``name``, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = (
            sa.select(AssetModel.uri, AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name)
            .order_by(AssetEvent.id)
        )
        return [(uri, dict(extra)) for uri, extra in session.execute(query)]


# ------------------------------------------------------------------------------------------ the trigger form


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        (
            {"default_datastore_id": "NOT-A-DATASTORE"},
            "Invalid input for param default_datastore_id: 'NOT-A-DATASTORE' does not match",
        ),
        (
            {"tolerated_failure_percent": 150},
            "Invalid input for param tolerated_failure_percent: 150 is greater than the maximum of 100",
        ),
        (
            {"copies_per_second": 0},
            "Invalid input for param copies_per_second: 0 is less than or equal to the minimum of 0",
        ),
        (
            {"max_copies_in_flight": 0},
            "Invalid input for param max_copies_in_flight: 0 is less than the minimum of 1",
        ),
        ({"dry_run": "yes"}, "Invalid input for param dry_run: 'yes' is not of type 'boolean'"),
        ({"manifest": ""}, "Invalid input for param manifest: '' should be non-empty"),
    ],
)
def test_the_trigger_form_rejects_bad_input_before_anything_runs(bulk_dag, ledger, conf, problem):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as excinfo:
        bulk_dag.test(run_conf={"manifest": "/nowhere.csv", **conf})
    assert str(excinfo.value).startswith(problem)
    with ledger.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(copies)).scalar_one() == 0


def test_the_manifest_is_required(bulk_dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param manifest: No value passed"):
        bulk_dag.test(run_conf={})


# ------------------------------------------------------------------------------------------ the whole story


def test_bulk_copy_end_to_end_with_faults_a_killed_batch_and_failures(
    bulk_dag, ledger, emulator_connection, bulk_logs, tmp_path, monkeypatch, capfd
):
    """Throttling, an internal error, a lost response, COPY_FAILED, NotFound and ValidationException, a
    batch whose engine dies right after CopyImageSet was accepted (the task is retried and resumes),
    rejected rows, a subset copy waiting for another copy of its source; then lineage, logs, report
    and the Asset event."""
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 8)
    sop_uid = sorted(next(iter(document(client, datastore_id, ids[0])["Study"]["Series"].values()))["Instances"])[0]
    rows = [
        {"source_image_set_id": ids[0], "label": "engine dies after sending"},  # 1
        {"source_image_set_id": ids[1], "label": "throttled"},  # 2
        {"source_image_set_id": ids[2], "label": "internal error"},  # 3
        {"source_image_set_id": ids[3], "label": "lost response"},  # 4
        {"source_image_set_id": ids[4], "label": "copy failed"},  # 5
        {"source_image_set_id": MISSING, "label": "no such source"},  # 6
        {"source_image_set_id": ids[5], "label": "service says invalid"},  # 7
        {"source_image_set_id": "not-an-id", "label": "bad id"},  # 8
        {"source_image_set_id": ids[1], "label": "duplicate of row 2"},  # 9
        {"source_image_set_id": ids[0], "sop_instance_uids": sop_uid, "label": "subset of row 1's source"},  # 10
    ]
    manifest = write_manifest(tmp_path / "copies.csv", rows)
    before = image_set_ids(client, datastore_id)

    # CopyImageSet's calls in order: row 1; row 2 throttled then accepted; row 3 a 500 then (reconciled:
    # nothing took effect) accepted; row 4 accepted but the answer lost; row 5 accepted, then COPY_FAILED.
    emulator.configure(
        script={"CopyImageSet": ["none", "throttle", "none", "internal_error", "none", "lost_response", "copy_failed"]}
    )
    real_copy_image_set = emulator.backend.copy_image_set

    def copy_image_set(**params):
        if params["sourceImageSetId"] == ids[5]:
            raise ValidationException("copiableAttributes selects nothing this image set can copy (injected).")
        return real_copy_image_set(**params)

    monkeypatch.setattr(emulator.backend, "copy_image_set", copy_image_set)
    real_submit = bulk_copy.submit_copy
    sent = []

    def submit_then_die_once(*args, **kwargs):
        accepted = real_submit(*args, **kwargs)
        sent.append(accepted.destination_image_set_id)
        if len(sent) == 1:  # the copy is accepted, the ledger never hears of it
            raise RuntimeError("the triggerer died")
        return accepted

    monkeypatch.setattr(bulk_copy, "submit_copy", submit_then_die_once)

    run = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id, tolerated_failure_percent=40), ledger)
    output = capfd.readouterr()

    # --- the run: 3 failures of 8 copies attempted (37.5%) are tolerated at 40%
    assert run.state == "success", run.tis
    assert run.tis[("copy_batch", 0)] == ("success", 2)  # failed once, retried once
    batch_events = [event for task, _, event in run.events if task == "copy_batch"]
    assert batch_events == [
        "running",
        "deferred",
        "running",
        "up_for_retry",
        "running",
        "deferred",
        "running",
        "success",
    ]
    report = run.report
    assert report["counts"] == {
        "succeeded": 5,
        "failed": 3,
        "rejected": 2,
        "skipped": 0,
        "planned": 0,
        "unfinished": 0,
        "accountedFor": 10,
    }
    accounted(report)
    assert report["failurePercent"] == 37.5 and report["toleratedFailurePercent"] == 40
    assert report["errors"] == {
        "COPY_FAILED": 1,
        "ResourceNotFoundException": 1,
        "ValidationException": 1,
        "InvalidManifestRow": 2,
    }

    # --- exactly one new image set per copy sent: rows 1-5 and 10 (row 5's copy failed, but it exists)
    after = image_set_ids(client, datastore_id)
    assert len(after - before) == 6
    assert len(series_copies(client, datastore_id, ids[0])) == 3  # the source, the copy (row 1) and the subset (row 10)
    for source in ids[1:5]:
        assert len(series_copies(client, datastore_id, source)) == 2, source
    counters = copy_calls(emulator)
    assert counters["faults"] == {"throttle": 1, "internal_error": 1, "lost_response": 1, "copy_failed": 1}
    assert counters["errors"] == {"ThrottlingException": 1, "InternalServerException": 1, "ValidationException": 1}
    assert counters["succeeded"] == 6  # accepted copies, the lost response included

    # --- the ledger: every column of the lineage
    status = {r["row_number"]: r["status"] for r in run.rows}
    assert status == {
        1: "succeeded",
        2: "succeeded",
        3: "succeeded",
        4: "succeeded",
        5: "failed",
        6: "failed",
        7: "failed",
        8: "rejected",
        9: "rejected",
        10: "succeeded",
    }
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    for row in run.rows:
        assert (row["dag_id"], row["run_id"], row["manifest_uri"], row["manifest_sha256"]) == (
            BULK_DAG_ID,
            run.run_id,
            str(manifest),
            digest,
        )
        assert row["label"] == rows[row["row_number"] - 1]["label"]
    for number in (1, 2, 3, 4, 10):
        row = run.row(number)
        assert row["datastore_id"] == datastore_id and row["source_version_id"] == "1"
        assert row["destination_image_set_id"] in after - before and row["destination_version_id"] == "1"
        assert row["destination_image_set_arn"].endswith(
            f"datastore/{datastore_id}/imageset/{row['destination_image_set_id']}"
        )
        assert row["copy_kind"] == ("subset" if number == 10 else "new")
        assert row["force"] is False and row["promote_to_primary"] is False
        assert row["error_code"] is None and row["message"] is None and row["verified"] is True
        assert row["attempts"] == (2 if number == 3 else 1), number  # throttling is no attempt; the 500 is
        assert row["throttles"] == (1 if number == 2 else 0), number  # row 2's throttled call, resent
        assert 0 < row["submitted_at"] <= row["completed_at"]
    assert run.row(1)["destination_image_set_id"] == sent[0]  # the copy the dead engine sent, found again
    assert run.row(10)["claimed_at"] >= run.row(1)["completed_at"]  # taken only once row 1's copy was over
    failed = {number: (run.row(number)["error_code"], run.row(number)["message"]) for number in (5, 6, 7)}
    assert failed[5] == ("COPY_FAILED", "INTERNAL_FAILURE: Copy failed due to an injected fault.")
    assert failed[6] == (
        "ResourceNotFoundException",
        f"Image set {MISSING} does not exist in datastore {datastore_id}.",
    )
    assert failed[7] == (
        "ValidationException",
        "copiableAttributes selects nothing this image set can copy (injected).",
    )
    assert run.row(5)["destination_image_set_id"] and run.row(5)["completed_at"] and run.row(6)["attempts"] == 0

    # --- the report files
    assert sorted(p.name for p in run.folder.iterdir()) == [
        "failed.csv",
        "rejected.csv",
        "report.json",
        "skipped.csv",
        "succeeded.csv",
    ]
    assert {(r["row_number"], r["error_code"], r["message"]) for r in run.csv("failed.csv")} == {
        (str(n), code, message) for n, (code, message) in failed.items()
    }
    assert sorted(int(r["row_number"]) for r in run.csv("succeeded.csv")) == [1, 2, 3, 4, 10]
    rejected = {r["row_number"]: r["message"] for r in run.csv("rejected.csv")}
    assert rejected["8"].startswith("row 8, column source_image_set_id: 'not-an-id' is not an id")
    assert rejected["9"].startswith("row 9: duplicates row 2")
    assert report["throughput"]["copiesPerSecond"] > 0 and report["throughput"]["wallSeconds"] > 0
    latency = report["latencySeconds"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]

    # --- one JSON log line per state change
    by_row: dict[int, list[str]] = {}
    for line in bulk_logs.states(run.run_id):
        if line["event"] == "copy_state":
            by_row.setdefault(line["row"], []).append(line["status"])
            assert line["dag_id"] == BULK_DAG_ID and line["datastore_id"] == datastore_id
    assert by_row == {
        1: ["submitting", "submitted", "succeeded"],
        2: ["submitting", "submitted", "succeeded"],
        3: ["submitting", "submitted", "succeeded"],
        4: ["submitting", "submitted", "succeeded"],
        5: ["submitting", "submitted", "failed"],
        6: ["submitting", "failed"],
        7: ["submitting", "failed"],
        10: ["submitting", "submitted", "succeeded"],
    }
    reconciled = [line for line in bulk_logs.states(run.run_id) if line["event"] == "copy_reconciled"]
    assert [(line["row"], line["outcome"]) for line in reconciled] == [(1, "took_effect")]
    assert any("CopyImageSet throttled; retrying" in m for m in bulk_logs.messages)
    assert any("InternalServerException" in m and "no copy took effect; retrying" in m for m in bulk_logs.messages)

    # --- progress: rows done / total, rate, ETA
    progress = [PROGRESS.search(m) for m in bulk_logs.messages]
    progress = [m for m in progress if m]
    assert progress and progress[-1].group(2, 3, 4, 5, 6) == ("8", "8", "5", "3", "0")
    assert all(m.group(8) for m in progress)

    # --- no patient data anywhere
    patients = set()
    for image_set_id in ids[:6]:
        dicom = document(client, datastore_id, image_set_id)["Patient"]["DICOM"]
        patients |= {dicom["PatientName"], dicom["PatientID"]}
    assert patients and all(len(value) >= 8 for value in patients)
    written = "\n".join(
        [*bulk_logs.messages, output.out, output.err, json.dumps(run.rows, default=str)]
        + [p.read_text() for p in run.folder.iterdir()]
    )
    assert not [value for value in patients if value in written]

    # --- the Asset event of the data store, summarizing the run
    ((uri, extra),) = asset_events(f"healthimaging-datastore-{datastore_id}")
    assert uri == f"healthimaging://datastore/{datastore_id}"
    assert extra["run_id"] == run.run_id and extra["manifest"] == str(manifest) and extra["dry_run"] is False
    assert extra["counts"]["succeeded"] == 5 and extra["counts"]["failed"] == 3


# ------------------------------------------------------------------------------------------ exactly once, resume


def test_a_rerun_skips_the_rows_already_copied_on_postgresql(bulk_dag, postgres_ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 3)
    manifest = write_manifest(
        tmp_path / "copies.csv", [{"source_image_set_id": i, "label": f"copy {n}"} for n, i in enumerate(ids)]
    )
    conf = bulk_conf(tmp_path, manifest, datastore_id)
    try:
        first = run_dag(bulk_dag, conf, postgres_ledger)
        assert first.state == "success" and [r["status"] for r in first.rows] == ["succeeded"] * 3
        assert str(postgres_ledger.engine.url).startswith("postgresql") and first.report["ledger"].startswith(
            "postgresql"
        )
        calls = copy_calls(emulator)["calls"]

        second = run_dag(bulk_dag, conf, postgres_ledger)

        assert second.state == "success" and second.run_id != first.run_id
        assert copy_calls(emulator)["calls"] == calls
        assert len(image_set_ids(client, datastore_id)) == 6
        assert second.report["counts"]["skipped"] == 3 and second.report["counts"]["succeeded"] == 0
        accounted(second.report)
        skipped = second.csv("skipped.csv")
        assert [(r["row_number"], r["error_code"], r["message"]) for r in skipped] == [
            (str(n), "AlreadyCopied", f"copied by run {first.run_id} (row {n})") for n in (1, 2, 3)
        ]
        assert [r["destination_image_set_id"] for r in skipped] == [r["destination_image_set_id"] for r in first.rows]
    finally:
        with postgres_ledger.engine.begin() as db:
            db.execute(copies.delete().where(copies.c.datastore_id == datastore_id))


# ------------------------------------------------------------------------------------------ dry run, strict, tolerance


def test_a_dry_run_checks_every_row_and_copies_nothing(bulk_dag, ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 4)
    manifest = write_manifest(
        tmp_path / "plan.csv",
        [
            {"source_image_set_id": ids[0], "label": "new"},
            {"source_image_set_id": ids[1], "destination_image_set_id": ids[2], "label": "merge of another patient"},
            {
                "source_image_set_id": ids[1],
                "destination_image_set_id": ids[3],
                "force": "true",
                "label": "forced merge",
            },
            {"source_image_set_id": MISSING, "label": "missing"},
            {"source_image_set_id": "x", "label": "bad"},
        ],
    )

    run = run_dag(
        bulk_dag, bulk_conf(tmp_path, manifest, datastore_id, dry_run=True, tolerated_failure_percent=50), ledger
    )

    assert run.state == "success"
    assert run.ti_state("finish_run") == "success" and ("copy_batch", -1) in run.tis  # no batch to map
    assert "CopyImageSet" not in emulator.counters() and len(image_set_ids(client, datastore_id)) == 4
    report = run.report
    assert report["dryRun"] is True
    assert report["counts"] == {
        "succeeded": 0,
        "failed": 2,
        "rejected": 1,
        "skipped": 0,
        "planned": 2,
        "unfinished": 0,
        "accountedFor": 5,
    }
    accounted(report)
    assert report["failurePercent"] == 50.0  # 2 of the 4 rows checked
    planned = {r["row_number"]: r["message"] for r in run.csv("plan.csv")}
    assert planned["1"] == "would copy (new, 3 frames)"
    assert planned["3"].startswith("would copy (merge, 3 frames); force overrides")
    failed = {r["row_number"]: (r["error_code"], r["message"]) for r in run.csv("failed.csv")}
    assert failed["2"][0] == "ForceRequired" and failed["2"][1].startswith("metadata disagree at ")
    assert failed["2"][1].endswith("the copy would end COPY_FAILED without force")
    assert failed["4"] == (
        "ResourceNotFoundException",
        f"Image set {MISSING} does not exist in datastore {datastore_id}.",
    )
    assert [r["row_number"] for r in run.csv("rejected.csv")] == ["5"]


def test_strict_mode_fails_before_copying(bulk_dag, ledger, emulator_connection, tmp_path, capfd):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 2)
    manifest = write_manifest(
        tmp_path / "strict.csv",
        [{"source_image_set_id": ids[0]}, {"source_image_set_id": "nope"}, {"source_image_set_id": ids[1]}],
    )

    run = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id, strict=True), ledger)
    output = capfd.readouterr().out

    assert run.state == "failed"
    assert run.ti_state("prepare_manifest") == "failed" and run.ti_state("finish_run") == "failed"
    assert not [key for key, (state, _) in run.tis.items() if key[0] == "copy_batch" and state == "success"]
    assert "CopyImageSet" not in emulator.counters()
    assert (
        "strict mode: 1 of 3 manifest rows are invalid (first: row 2, column source_image_set_id: 'nope' is not an id; "
        "expected 32 characters of 0-9 and a-z); nothing was copied"
    ) in output
    report = run.report
    assert report["counts"]["rejected"] == 1 and report["counts"]["skipped"] == 2 and report["manifest"]["rows"] == 3
    accounted(report)
    assert {r["row_number"]: r["error_code"] for r in run.csv("skipped.csv")} == {"1": "StrictMode", "3": "StrictMode"}


def test_the_tolerated_failure_percent_decides_the_run(bulk_dag, ledger, emulator_connection, tmp_path, capfd):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 4)
    manifest = write_manifest(tmp_path / "four.csv", [{"source_image_set_id": i} for i in ids])

    emulator.configure(script={"CopyImageSet": ["copy_failed"]})
    tolerant = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id, tolerated_failure_percent=30), ledger)
    emulator.configure(script={"CopyImageSet": ["copy_failed"]})
    strict = run_dag(
        bulk_dag,
        bulk_conf(tmp_path, manifest, datastore_id, tolerated_failure_percent=10, skip_already_copied=False),
        ledger,
    )
    output = capfd.readouterr().out

    for run in (tolerant, strict):
        assert (run.report["counts"]["succeeded"], run.report["counts"]["failed"]) == (3, 1)
        assert run.report["failurePercent"] == 25.0
        assert run.row(1)["error_code"] == "COPY_FAILED"
        assert run.tis[("copy_batch", 0)][0] == "success"
    assert tolerant.state == "success" and tolerant.ti_state("finish_run") == "success"
    assert strict.state == "failed" and strict.ti_state("finish_run") == "failed"
    assert (
        f"1 copies failed (25.00% of attempted), more than the tolerated 10.0%; see failed.csv in {strict.folder}"
    ) in output


# ------------------------------------------------------------------------------------------ bad manifests


def bad_jsonl(ids: list[str]) -> bytes:
    rows = [
        json.dumps({"source_image_set_id": ids[0], "label": "the good row"}),
        json.dumps({"source_image_set_id": "BAD-ID"}),
        '{"source_image_set_id": ',
        json.dumps({"source_image_set_id": ids[0], "label": "duplicate"}),
        json.dumps({"source_image_set_id": ids[1], "copiable_attributes": "z" * 300_000}),
        json.dumps({"source_image_set_id": ids[1], "colour": "blue"}),
    ]
    return (
        ("\n".join(rows) + "\n").encode() + b'{"source_image_set_id": "' + ids[1].encode() + b'", "label": "\xc3("}\n'
    )


BAD_MANIFESTS = {
    # name: (file name, content (ids -> bytes), run state, rows, rejected, expected error, where it is reported:
    # a rejected row's message in rejected.csv, or the task log when there is no row to carry it)
    "unknown column": (
        "unknown.csv",
        lambda ids: f"source_image_set_id,colour\n{ids[0]},red\n{ids[1]},blue\n".encode(),
        "failed",
        2,
        2,
        "row 2: not read: the header has unknown columns ['colour']",
        "rejected.csv",
    ),
    "missing column": (
        "missing.csv",
        lambda ids: f"datastore_id,label\n{'d' * 32},x\n".encode(),
        "failed",
        1,
        1,
        "row 1: not read: the header lacks the required columns ['source_image_set_id']",
        "rejected.csv",
    ),
    "empty file": ("empty.csv", lambda ids: b"", "failed", 0, 0, "the manifest has no rows", "log"),
    "bad rows": (
        "rows.jsonl",
        bad_jsonl,
        "success",
        7,
        6,
        "row 5, column copiable_attributes: is 300,000 characters long",
        "rejected.csv",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_a_bad_manifest_is_reported_with_every_row_accounted_for(
    case, bulk_dag, ledger, emulator_connection, tmp_path, capfd
):
    name, content, state, total, rejected, error, where = BAD_MANIFESTS[case]
    datastore_id, ids = seed(emulator_connection, 2)
    manifest = tmp_path / name
    manifest.write_bytes(content(ids))

    run = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id), ledger)
    output = capfd.readouterr().out

    assert run.state == state
    report = run.report
    assert report["manifest"]["rows"] == total and report["counts"]["rejected"] == rejected
    accounted(report)
    messages = [r["message"] for r in run.csv("rejected.csv")]
    assert len(messages) == rejected
    if where == "rejected.csv":
        assert any(m.startswith(error) for m in messages), messages
    else:
        assert error in output
    if case == "bad rows":
        assert report["counts"]["succeeded"] == 1
        assert {r["row_number"] for r in run.csv("rejected.csv")} == {"2", "3", "4", "5", "6", "7"}
        assert all(len(m) < 1000 for m in messages)  # the 300,000 characters are not echoed
    if case == "empty file":
        assert (
            run.ti_state("prepare_manifest") == "failed" and f"manifest {manifest}: the manifest has no rows" in output
        )
    if case in ("unknown column", "missing column"):
        assert f"all {rejected} manifest rows were rejected; see rejected.csv" in output


# ------------------------------------------------------------------------------------------ many rows


def test_a_100000_row_manifest_is_registered_in_at_most_500_batches(tmp_path):
    ledger = Ledger(engine_for(f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))
    lines = ["source_image_set_id,label"] + [
        f"{hashlib.md5(str(n).encode()).hexdigest()},row {n}" for n in range(100_000)
    ]
    manifest = tmp_path / "big.csv"
    manifest.write_text("\n".join(lines) + "\n")

    prepared = prepare(
        ledger,
        dag_id="big",
        run_id="r",
        params={"manifest": str(manifest), "default_datastore_id": "d" * 32, "batch_size": 10},
    )

    assert prepared["total_rows"] == 100_000 and len(prepared["batches"]) == MAX_BATCHES == 500
    assert ledger.status_counts("big", "r") == {"pending": 100_000}
    with ledger.engine.connect() as db:
        sizes = {
            size for (size,) in db.execute(sa.select(sa.func.count()).select_from(copies).group_by(copies.c.batch))
        }
    assert sizes == {200}  # batch_size raised from 10 to 200
    from airflow.configuration import conf

    assert len(prepared["batches"]) < conf.getint("core", "max_map_length")  # the mapped copy_batch needs no setting


# ------------------------------------------------------------------------------------------ rate limit, in-flight cap


def prepared_batches(
    ledger: Ledger,
    tmp_path: Path,
    datastore_id: str,
    rows: list[dict[str, Any]],
    *,
    batch_size: int,
    dag_id: str = "engine-test",
    **settings: Any,
):
    manifest = write_manifest(tmp_path / f"{uuid.uuid4().hex}.csv", rows)
    run_id = f"run-{uuid.uuid4().hex}"
    prepared = prepare(
        ledger,
        dag_id=dag_id,
        run_id=run_id,
        params={
            "manifest": str(manifest),
            "default_datastore_id": datastore_id,
            "batch_size": batch_size,
            "poll_interval_seconds": 0.2,
            "progress_interval_seconds": 1,
            **settings,
        },
    )
    engines = [
        BatchCopyEngine(
            ledger,
            dag_id=dag_id,
            run_id=run_id,
            manifest_sha256=prepared["manifest_sha256"],
            batch=b,
            settings=BulkCopySettings(**{**prepared["settings"], **settings.get("engine", {})}),
        )
        for b in prepared["batches"]
    ]
    return run_id, engines


def run_in_threads(engines: list[BatchCopyEngine]) -> None:
    errors = []

    def work(engine):
        try:
            engine.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), errors


def test_two_batches_in_parallel_share_one_rate_limit(postgres_ledger, emulator_connection, tmp_path):
    """Two engines (two batches, as two triggerer threads would run them) against CopyImageSet limited to
    4/s at the emulator, with the DAG's copies_per_second 4 in PostgreSQL: hardly any throttling, and the
    submissions in the ledger keep to the rate."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 12)
    emulator.configure(rates={"CopyImageSet": {"rate": 4, "burst": 2}})
    run_id, engines = prepared_batches(
        postgres_ledger,
        tmp_path,
        datastore_id,
        [{"source_image_set_id": i} for i in ids],
        batch_size=6,
        copies_per_second=4,
        burst=1,
        engine={"rate_limit_name": f"CopyImageSet-test-{uuid.uuid4().hex}"},
    )
    assert len(engines) == 2
    try:
        started = time.monotonic()
        run_in_threads(engines)
        elapsed = time.monotonic() - started
        rows = postgres_ledger.run_rows("engine-test", run_id)
        assert [r["status"] for r in rows] == ["succeeded"] * 12
        counters = copy_calls(emulator)
        assert counters["succeeded"] == 12 and counters["throttled"] <= 1, counters
        times = sorted(r["submitted_at"] for r in rows)
        # The shared bucket (4/s, burst 1) grants at most 1 + 4 * t tokens in any t seconds. A row's submitted_at is
        # stamped after its token, later by as long as its thread was held up: 0.5 s leaves room for a loaded
        # machine. Two buckets of their own would have sent the 12 copies in about (6 - 1) / 4 = 1.25 s, which
        # breaks this for the first and last copy: 12 > 1 + 4 * (1.25 + 0.5).
        for i in range(len(times)):
            for j in range(i + 1, len(times)):
                assert j - i + 1 <= 1 + 4 * (times[j] - times[i] + 0.5), (i, j, times)
        assert elapsed >= 11 / 4 - 0.2  # 12 tokens at 4/s from a bucket of 1: the 12th comes 2.75 s after the first
    finally:
        with postgres_ledger.engine.begin() as db:
            db.execute(copies.delete().where(copies.c.run_id == run_id))


def test_a_wait_from_the_token_bucket_ends_when_the_token_is_there(ledger):
    """The engine sleeps exactly the wait try_acquire returns: waking then must find a whole token (with burst
    1 a wake-up that finds 0.9999 of one loses quota to the next retry)."""
    bucket = SharedTokenBucket(ledger.engine, f"test-{uuid.uuid4().hex}", rate=4, burst=1)
    assert bucket.try_acquire() == 0.0
    for _ in range(8):
        wait = bucket.try_acquire()
        assert 0 < wait <= 1 / 4 + 0.002
        time.sleep(wait)
        assert bucket.try_acquire() == 0.0


def test_a_token_taken_late_leaves_the_next_one_due_as_if_on_time(ledger):
    """A wake-up or a database answer a little late must not push every later token back by as much: the
    bucket holds a tenth of a token over its burst, so the next token is due one interval after the time
    the late one was due, not after it was taken."""
    bucket = SharedTokenBucket(ledger.engine, f"test-{uuid.uuid4().hex}", rate=4, burst=1)
    assert bucket.try_acquire() == 0.0
    time.sleep(bucket.try_acquire() + 0.02)  # 20 ms late
    assert bucket.try_acquire() == 0.0
    began = time.time()  # a SQLite ledger's bucket runs on this process's time.time()
    wait = bucket.try_acquire()
    # without the slack the wait would be a whole interval, 0.25 s (+1 ms)
    assert wait <= 0.25 - 0.02 + 0.001 + (time.time() - began) + 1e-6, wait


def test_calls_of_one_process_leave_an_interval_apart_and_learn_an_allowance():
    """SendSpacing: calls on one bucket, from any thread, leave at least an interval (plus the allowance)
    apart; a throttled call widens the allowance, a long run of calls not throttled narrows it."""
    from healthimaging.bulk.engine import JITTER_RELAX_SENDS, JITTER_START_SECONDS, JITTER_STEP_SECONDS, SendSpacing

    name = f"test-{uuid.uuid4().hex}"
    left: list[float] = []

    def call() -> None:
        SendSpacing.wait_turn(name, 0.05)
        left.append(time.monotonic())

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gaps = [b - a for a, b in zip(sorted(left), sorted(left)[1:])]
    assert min(gaps) >= 0.05 + JITTER_START_SECONDS - 1e-3, gaps  # with the first allowance

    SendSpacing.outcome(name, throttled=True)
    assert SendSpacing._allowance[name] == pytest.approx(JITTER_START_SECONDS + JITTER_STEP_SECONDS)
    for _ in range(JITTER_RELAX_SENDS):
        SendSpacing.outcome(name, throttled=False)
    assert SendSpacing._allowance[name] == pytest.approx(JITTER_START_SECONDS + 0.75 * JITTER_STEP_SECONDS)


def test_polls_stop_short_of_a_send_that_is_due(ledger, emulator_connection, tmp_path):
    """Polling (a GetImageSet per copy, more to verify) must not make the next send late: when a token is due,
    the due polls wait until just after it."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 2)
    emulator.configure(timing={"copy_fixed_seconds": 0.2})
    run_id, (engine,) = prepared_batches(
        ledger, tmp_path, datastore_id, [{"source_image_set_id": ids[0]}], batch_size=10, copies_per_second=50, burst=1
    )
    engine.step()
    (row,) = ledger.run_rows("engine-test", run_id)
    assert row["status"] == "submitted"
    engine.clock = lambda: time.time() + 5  # the copy is due for a poll
    polls = emulator.counters().get("GetImageSet", {}).get("calls", 0)

    send_at = engine.clock() + 0.002
    assert engine._poll_in_flight(stop_at=send_at) == send_at  # come back at the send
    assert emulator.counters().get("GetImageSet", {}).get("calls", 0) == polls
    wait_until_copied(emulator.client(), datastore_id, row["destination_image_set_id"])
    assert engine._poll_in_flight(stop_at=engine.clock() + 60) is None  # no send near: polled, done
    assert ledger.run_rows("engine-test", run_id)[0]["status"] == "succeeded"


def test_throttling_slows_copies_but_never_fails_a_row(ledger, emulator_connection, tmp_path):
    """The rate limit set far above the account's quota (50/s against 1/s): the service throttles, the rows wait."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 4)
    # 1/s: the engine would have to take a second to plan each row for the service to throttle none of the four.
    emulator.configure(rates={"CopyImageSet": {"rate": 1, "burst": 1}})
    run_id, (engine,) = prepared_batches(
        ledger,
        tmp_path,
        datastore_id,
        [{"source_image_set_id": i} for i in ids],
        batch_size=10,
        copies_per_second=50,
        burst=10,
    )

    engine.run()

    rows = ledger.run_rows("engine-test", run_id)
    assert [r["status"] for r in rows] == ["succeeded"] * 4
    assert [r["attempts"] for r in rows] == [1] * 4  # a throttled call is no failed attempt
    counters = copy_calls(emulator)
    assert counters["throttled"] >= 1 and counters["succeeded"] == 4, counters
    # every throttled call the service saw is recorded on its row, and only those: resent, not attempted again
    assert sum(r["throttles"] for r in rows) == counters["throttled"], ([r["throttles"] for r in rows], counters)
    assert (
        counters["calls"]
        == counters["succeeded"] + counters["throttled"]
        == sum(r["attempts"] for r in rows) + sum(r["throttles"] for r in rows)
    ), counters
    # ... and the dashboard's throttled resends are the service's count
    from healthimaging.bulk.dashboard import queries

    with ledger.engine.connect() as db:
        assert queries.throttled_resends(db, "engine-test", run_id) == counters["throttled"]


def wait_until_copied(client, datastore_id: str, image_set_id: str, timeout: float = 60.0) -> None:
    """GetImageSet until the copy's destination is COPIED (the emulator ends copies on a thread of its own)."""
    deadline = time.monotonic() + timeout
    while (
        status := client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["imageSetWorkflowStatus"]
    ) != "COPIED":
        assert time.monotonic() < deadline, f"{image_set_id} is still {status} after {timeout:.0f} s"
        time.sleep(0.02)


def interleave(first: BatchCopyEngine, second: BatchCopyEngine) -> None:
    """Make ``first`` check its row, then let ``second`` check, claim and send before ``first`` claims: the
    race of two engines that both see room (or an idle source) at the same moment."""
    claim = first.ledger.claim
    done = []

    class LedgerClaimingAfterTheOther(type(first.ledger)):
        def claim(self, *args, **kwargs):
            if not done:
                done.append(True)
                second.step()
            return claim(*args, **kwargs)

    first.ledger = LedgerClaimingAfterTheOther(first.ledger.engine)


def test_one_source_is_never_copied_twice_at_the_same_time(ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 2)
    emulator.configure(timing={"copy_fixed_seconds": 0.5})
    sop_uid = sorted(next(iter(document(client, datastore_id, ids[0])["Study"]["Series"].values()))["Instances"])[0]
    rows = [{"source_image_set_id": ids[0]}, {"source_image_set_id": ids[0], "sop_instance_uids": sop_uid}]
    run_id, (first, second) = prepared_batches(
        ledger, tmp_path, datastore_id, rows, batch_size=1, copies_per_second=50, burst=10
    )
    interleave(first, second)

    first.step()

    statuses = {r["row_number"]: r["status"] for r in ledger.run_rows("engine-test", run_id)}
    assert statuses == {1: "pending", 2: "submitted"}  # the second engine got the source first; the first waits
    run_in_threads([first, second])
    rows = ledger.run_rows("engine-test", run_id)
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"]
    assert "ConflictException" not in copy_calls(emulator)["errors"]  # no copy hit a source locked by the other
    one, two = sorted(rows, key=lambda r: r["claimed_at"])
    assert two["claimed_at"] >= one["completed_at"]


def test_the_in_flight_cap_holds_across_engines(ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 4)
    emulator.configure(timing={"copy_fixed_seconds": 0.3}, max_concurrent_copies=1)
    run_id, engines = prepared_batches(
        ledger,
        tmp_path,
        datastore_id,
        [{"source_image_set_id": i} for i in ids],
        batch_size=2,
        copies_per_second=50,
        burst=10,
        max_copies_in_flight=1,
    )
    interleave(engines[0], engines[1])

    engines[0].step()

    assert sorted(r["status"] for r in ledger.run_rows("engine-test", run_id)) == ["pending"] * 3 + ["submitted"]
    run_in_threads(engines)
    rows = ledger.run_rows("engine-test", run_id)
    assert [r["status"] for r in rows] == ["succeeded"] * 4
    # The service allows one copy at a time here: the cap kept every send within it.
    assert "ServiceQuotaExceededException" not in copy_calls(emulator)["errors"]
    spans = sorted((r["claimed_at"], r["completed_at"]) for r in rows)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


# ------------------------------------------------------------------------------------------ the scheduled DAG


def test_the_scheduled_dag_over_two_intervals(airflow_db, ledger, emulator_connection, tmp_path):
    from airflow.serialization.encoders import coerce_to_core_timetable

    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 20)  # image sets 10 and 20 are not primary
    non_primary = {
        s["imageSetId"]
        for page in client.get_paginator("search_image_sets").paginate(
            datastoreId=datastore_id,
            searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"isPrimary": False}]}]},
        )
        for s in page["imageSetsMetadataSummaries"]
    }
    assert len(non_primary) == 2
    primary = [i for i in ids if i not in non_primary]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_manifest(inbox / "a.csv", [{"source_image_set_id": primary[0]}, {"source_image_set_id": primary[1]}])
    dag = load_dag(SCHEDULED_DAG_ID)
    timetable = coerce_to_core_timetable(dag.timetable)
    now = pendulum.now("UTC")
    first_date = next(
        now + timedelta(hours=h)
        for h in range(3)
        if timetable.infer_manual_data_interval(run_after=now + timedelta(hours=h)).start
        <= now
        < timetable.infer_manual_data_interval(run_after=now + timedelta(hours=h)).end
    )
    conf = {
        "manifest_location": str(inbox),
        "search_datastore_id": datastore_id,
        "default_datastore_id": datastore_id,
        "report_folder": str(tmp_path / "reports"),
        **FAST,
    }
    before = image_set_ids(client, datastore_id)

    first = run_dag(dag, conf, ledger, logical_date=first_date)

    assert first.state == "success", first.tis
    generated = sorted((inbox / "generated").iterdir())
    assert len(generated) == 1 and generated[0].name.startswith("non_primary_updated-")
    assert {r["manifest_uri"] for r in first.rows} == {str(inbox / "a.csv"), str(generated[0])}
    assert [r["status"] for r in first.rows] == ["succeeded"] * 4
    promoted = [r for r in first.rows if r["manifest_uri"] == str(generated[0])]
    assert {r["source_image_set_id"] for r in promoted} == non_primary
    assert all(r["copy_kind"] == "promote" and r["promote_to_primary"] for r in promoted)
    for row in promoted:
        assert (
            client.get_image_set(datastoreId=datastore_id, imageSetId=row["destination_image_set_id"])["isPrimary"]
            is True
        )
    reports = sorted(p.name for p in first.folder.iterdir())
    assert reports == sorted(["a.csv", generated[0].name])  # one report per manifest
    for name in reports:
        accounted(json.loads((first.folder / name / "report.json").read_text()))

    write_manifest(inbox / "b.csv", [{"source_image_set_id": primary[2]}])
    second = run_dag(dag, conf, ledger, logical_date=first_date + timedelta(hours=1))

    assert second.state == "success", second.tis
    copied = [r for r in second.rows if r["status"] == "succeeded"]
    assert [(r["manifest_uri"], r["source_image_set_id"]) for r in copied] == [(str(inbox / "b.csv"), primary[2])]
    assert not [r for r in second.rows if r["manifest_uri"] == str(inbox / "a.csv")]  # taken once, by the first run
    assert len(image_set_ids(client, datastore_id) - before) == 5
    with ledger.engine.connect() as db:
        taken = {r.manifest_uri: r.run_id for r in db.execute(sa.select(manifests))}
    assert taken[str(inbox / "a.csv")] == taken[str(generated[0])] == first.run_id
    assert taken[str(inbox / "b.csv")] == second.run_id
    extras = [extra for _, extra in asset_events("healthimaging-scheduled-copies")]
    assert [e["run_id"] for e in extras][-2:] == [first.run_id, second.run_id]
    assert [e["manifests"] for e in extras][-2:] == [2, 1]


def write_stray_quote(inbox: Path, ids: list[str]) -> Path:
    path = inbox / "b.csv"
    path.write_text(f'source_image_set_id,label\n{ids[0]},"never closed\n{ids[1]},fine\n')
    return path


def write_wide_header(inbox: Path, ids: list[str]) -> Path:
    path = inbox / "b.csv"
    path.write_text(",".join(f"column_{i}" for i in range(100)) + "\n" + ids[0] + "\n")
    return path


def write_empty(inbox: Path, ids: list[str]) -> Path:
    path = inbox / "b.csv"
    path.write_text("")
    return path


def write_too_large(inbox: Path, ids: list[str]) -> Path:
    path = inbox / "b.csv"
    with path.open("wb") as handle:  # sparse: refused from its size, never read
        handle.truncate(600 * 1024 * 1024)
    return path


def write_undecodable_name(inbox: Path, ids: list[str]) -> Path:
    raw = bytes(inbox) + b"/b\xff.csv"  # a name that is not UTF-8: the ledger cannot store it
    with open(raw, "wb") as handle:
        handle.write(template([{"source_image_set_id": ids[0]}]).encode())
    return Path(raw.decode("utf-8", "surrogateescape"))


def write_hostile_rows(inbox: Path, ids: list[str]) -> Path:
    path = inbox / "b.jsonl"
    path.write_bytes(
        b"".join(
            [
                b'{"source_image_set_id": "%s", "label": %s}\n' % (ids[0].encode(), b"[" * 1000 + b"]" * 1000),
                b'{"source_image_set_id": "%s", "label": "\\ud800"}\n' % ids[1].encode(),
                b'{"source_image_set_id": "%s", "label": "a\\u0000b"}\n' % ids[2].encode(),
                b'["not", "an", "object"]\n',
                b'{"source_image_set_id": "%s", "label": "\xff\xfe"}\n' % ids[3].encode(),
            ]
        )
    )
    return path


#: The middle manifest of three, broken in each way the bad-input issue found, and what is reported.
BROKEN_MANIFESTS = {
    "stray quote": (write_stray_quote, "line 2: a quoted field (column label) opens on this line and runs to line 3"),
    "header of 100 columns": (write_wide_header, "line 1: the CSV header has 100 columns"),
    "empty": (write_empty, "the manifest has no rows"),
    "600 MB": (write_too_large, "the manifest is 629,145,600 bytes"),
    "name not UTF-8": (write_undecodable_name, "UnicodeEncodeError"),
    "every row hostile": (write_hostile_rows, "all 5 manifest rows were rejected"),
}


def task_result(run: Run, task_id: str) -> Any:
    """What a task of the run returned (its XCom)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        value = (
            session.query(XComModel.value)
            .filter_by(dag_id=run.dag_run.dag_id, run_id=run.run_id, task_id=task_id, key="return_value")
            .scalar()
        )
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.parametrize("broken", list(BROKEN_MANIFESTS))
def test_a_broken_manifest_does_not_stop_the_others(airflow_db, ledger, emulator_connection, tmp_path, broken):
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 8)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_manifest(inbox / "a.csv", [{"source_image_set_id": ids[0]}, {"source_image_set_id": ids[1]}])
    writer, reported = BROKEN_MANIFESTS[broken]
    middle = writer(inbox, ids[2:6])
    write_manifest(inbox / "c.csv", [{"source_image_set_id": ids[6]}, {"source_image_set_id": ids[7]}])
    before = image_set_ids(client, datastore_id)
    dag = load_dag(SCHEDULED_DAG_ID)
    conf = {"manifest_location": str(inbox), "default_datastore_id": datastore_id, "report_folder": "reports", **FAST}

    run = run_dag(dag, conf, ledger)

    assert run.ti_state("prepare_manifests") == "success" and run.ti_state("finish_run") == "failed", run.tis
    copied = {(Path(r["manifest_uri"]).name, r["source_image_set_id"]) for r in run.rows if r["status"] == "succeeded"}
    assert copied == {("a.csv", ids[0]), ("a.csv", ids[1]), ("c.csv", ids[6]), ("c.csv", ids[7])}
    new = image_set_ids(client, datastore_id) - before
    assert len(new) == 4 and copy_calls(emulator)["succeeded"] == 4  # no duplicate in the service either
    for name in ("a.csv", "c.csv"):
        accounted(json.loads((run.folder / name / "report.json").read_text()))
    prepared = {Path(p["manifest_uri"]).name: p for p in task_result(run, "prepare_manifests")}
    (middle_entry,) = [p for name, p in prepared.items() if name not in ("a.csv", "c.csv")]
    if broken == "every row hostile":  # row-level problems: the manifest is copied, each row rejected and stored
        rows = [r for r in run.rows if r["manifest_uri"] == str(middle)]
        assert sorted(r["row_number"] for r in rows) == [1, 2, 3, 4, 5] and {r["status"] for r in rows} == {"rejected"}
        middle_report = json.loads((run.folder / middle.name / "report.json").read_text())
        assert middle_report["counts"]["rejected"] == 5
        accounted(middle_report)
    else:
        assert reported in middle_entry["error"], middle_entry
        assert "error" not in prepared["a.csv"] and "error" not in prepared["c.csv"]
    claim = ledger.manifest_claim(str(middle)) if broken != "name not UTF-8" else None
    if broken in ("stray quote", "header of 100 columns", "empty"):
        assert claim["released_at"] is not None and reported in claim["failure"]


def test_a_released_manifest_is_taken_again_once_it_changed(airflow_db, ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    middle = write_stray_quote(inbox, ids)
    dag = load_dag(SCHEDULED_DAG_ID)
    conf = {"manifest_location": str(inbox), "default_datastore_id": datastore_id, **FAST}

    first = run_dag(dag, conf, ledger)
    unchanged = run_dag(dag, conf, ledger)
    write_manifest(middle, [{"source_image_set_id": ids[0]}, {"source_image_set_id": ids[1]}])
    fixed = run_dag(dag, conf, ledger)

    assert first.state == "failed" and not first.rows
    assert unchanged.state == "success" and not unchanged.rows  # the same broken bytes are not tried every interval
    assert fixed.state == "success", fixed.tis
    assert sorted(r["source_image_set_id"] for r in fixed.rows if r["status"] == "succeeded") == ids[:2]
    claim = ledger.manifest_claim(str(middle))
    assert claim["run_id"] == fixed.run_id and claim["released_at"] is None and claim["failure"] is None
    assert copy_calls(emulator)["succeeded"] == 2


# ------------------------------------------------------------------------------------------ S3


@pytest.fixture
def s3_endpoint():
    from moto.server import ThreadedMotoServer  # moto[server] is pinned in requirements.txt: no skip without it

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_reports_are_written_next_to_an_s3_manifest(
    bulk_dag, ledger, healthimaging_emulator, aws_connection, s3_endpoint, tmp_path
):
    import boto3

    # One connection: HealthImaging at the emulator, S3 at moto.
    aws_connection(healthimaging_emulator.url, extra={"service_config": {"s3": {"endpoint_url": s3_endpoint}}})
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket="copies")
    datastore_id, ids = seed(healthimaging_emulator, 2)
    s3.put_object(
        Bucket="copies",
        Key="incoming/2026-11.csv",
        Body=template([{"source_image_set_id": ids[0]}, {"source_image_set_id": "bad"}]).encode(),
    )

    run = run_dag(bulk_dag, bulk_conf(tmp_path, "s3://copies/incoming/2026-11.csv", datastore_id), ledger)

    assert run.state == "success", run.tis
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="copies", Prefix="incoming/")["Contents"])
    uploaded = sorted(k.rsplit("/", 1)[1] for k in keys if "/healthimaging-report-" in k)
    assert uploaded == ["failed.csv", "rejected.csv", "report.json", "skipped.csv", "succeeded.csv"], keys
    report_key = next(k for k in keys if k.endswith("/report.json"))
    assert report_key.startswith("incoming/healthimaging-report-manual__")
    remote = json.loads(s3.get_object(Bucket="copies", Key=report_key)["Body"].read())
    assert remote["counts"]["succeeded"] == 1 and remote["counts"]["rejected"] == 1
    assert remote["manifest"]["uri"] == "s3://copies/incoming/2026-11.csv"
    assert run.report["reportS3"] == f"s3://copies/{report_key.rsplit('/', 1)[0]}/"
    accounted(run.report)  # the local report is there too
