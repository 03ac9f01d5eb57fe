"""Exactly once under concurrency: the four ways the promise broke, each through the public pieces.

1. The same trigger running twice (two triggerers during a failover): two
   ``HealthImagingBulkCopyTrigger`` instances from one serialized form, the second started when the
   first reaches each step where ownership can change, after several delays; and an owner that stalls
   past its lease while holding rows.
2. Two runs of one manifest started a second apart (``airflow dags test`` twice).
3. A run killed with SIGKILL in the middle (``airflow dags test``), then run again.
4. Two merges into one destination in one run.

Ground truth is the emulator, read with boto3: exactly one new image set (or merge version) per row,
and the ledger names each one.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from healthimaging.bulk.engine import BatchCopyEngine, BulkCopySettings
from healthimaging.bulk.ledger import Ledger, copies, leases
from healthimaging.bulk.run import prepare
from healthimaging.triggers import HealthImagingBulkCopyTrigger
from stack.processes import signal_group, spawn
from tests.airflow_env import REPO_ROOT, airflow_command
from tests.bulk_helpers import (
    BULK_DAG_ID,
    FAST,
    accounted,
    bulk_conf,
    copy_calls,
    image_set_ids,
    run_dag,
    seed,
    series_copies,
    write_manifest,
)

DAG_ID = "exactly-once-test"


def assert_each_row_copied_once(
    emulator, datastore_id: str, sources: list[str], seeded: int, rows: list[dict[str, Any]]
) -> None:
    """The emulator holds exactly one new image set per source, and the ledger's succeeded rows name them."""
    client = emulator.client()
    assert len(image_set_ids(client, datastore_id)) == seeded + len(sources)
    assert copy_calls(emulator)["succeeded"] == len(sources)
    succeeded = [r for r in rows if r["status"] == "succeeded"]
    assert sorted(r["source_image_set_id"] for r in succeeded) == sorted(sources)
    for row in succeeded:
        assert series_copies(client, datastore_id, row["source_image_set_id"]) == {
            row["source_image_set_id"],
            row["destination_image_set_id"],
        }, row
        assert row["verified"] is True


# ------------------------------------------------------------------------------------------ 1. one trigger twice


def batch_of(ledger: Ledger, tmp_path: Path, datastore_id: str, sources: list[str], **params: Any) -> tuple[str, dict]:
    manifest = write_manifest(tmp_path / "copies.csv", [{"source_image_set_id": s} for s in sources])
    run_id = f"run-{time.time_ns()}"
    prepared = prepare(
        ledger,
        dag_id=DAG_ID,
        run_id=run_id,
        params={"manifest": str(manifest), "default_datastore_id": datastore_id, "batch_size": 1000, **FAST, **params},
    )
    assert prepared["batches"] == [0]
    return run_id, prepared


def from_serialized(trigger: HealthImagingBulkCopyTrigger) -> HealthImagingBulkCopyTrigger:
    """A second trigger built the way a triggerer builds one: from the serialized form only."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


#: When the second trigger starts: the first has a row claimed, planned, cleared for sending, accepted.
MOMENTS = {
    "claimed": copies.c.status == "submitting",
    "planned": copies.c.plan_json.is_not(None),
    "submitting": copies.c.sent_at.is_not(None),
    "submitted": copies.c.status == "submitted",
}


def run_two_triggers(
    ledger: Ledger,
    first: HealthImagingBulkCopyTrigger,
    second: HealthImagingBulkCopyTrigger,
    run_id: str,
    moment: str,
    delay: float,
) -> list[dict[str, Any]]:
    async def consume(trigger):
        async for event in trigger.run():
            return event.payload

    def reached() -> bool:
        with ledger.engine.connect() as db:
            return (
                db.execute(sa.select(copies.c.id).where(copies.c.run_id == run_id, MOMENTS[moment]).limit(1)).first()
                is not None
            )

    async def main():
        one = asyncio.create_task(consume(first))
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(reached):
            assert time.monotonic() < deadline, f"the first trigger never reached {moment}"
            await asyncio.sleep(0.002)
        await asyncio.sleep(delay)
        two = asyncio.create_task(consume(second))
        return await asyncio.wait_for(asyncio.gather(one, two), timeout=120)

    return asyncio.run(main())


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_the_same_trigger_running_twice_copies_each_row_once(ledger, emulator_connection, tmp_path, moment, delay):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 6)
    emulator.configure(timing={"copy_fixed_seconds": 0.3})
    run_id, prepared = batch_of(ledger, tmp_path, datastore_id, ids)
    first = HealthImagingBulkCopyTrigger(
        dag_id=DAG_ID,
        run_id=run_id,
        manifest_sha256=prepared["manifest_sha256"],
        batch=0,
        settings=prepared["settings"],
    )
    second = from_serialized(first)

    events = run_two_triggers(ledger, first, second, run_id, moment, delay)

    assert [e["status"] for e in events] == ["success", "success"], events
    rows = ledger.run_rows(DAG_ID, run_id)
    assert [r["status"] for r in rows] == ["succeeded"] * 6
    assert_each_row_copied_once(emulator, datastore_id, ids, 6, rows)
    assert sum(r["attempts"] for r in rows) == 6
    with ledger.engine.connect() as db:  # both engines ended their leases
        assert (
            db.execute(sa.select(sa.func.count()).select_from(leases).where(leases.c.run_id == run_id)).scalar_one()
            == 0
        )


def test_an_owner_stalled_past_its_lease_sends_nothing_after_its_rows_were_taken_over(
    ledger, emulator_connection, tmp_path, bulk_logs
):
    """Engine A claims and plans a row, then stalls (stops stepping) with it ready to send, until its lease
    of 1 s has expired; engine B of the same batch takes the row over and copies everything. When A wakes,
    its lease is gone: it sends nothing and ends."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 3)
    run_id, prepared = batch_of(ledger, tmp_path, datastore_id, ids, copies_per_second=0.5, burst=1)
    settings = BulkCopySettings(**{**prepared["settings"], "lease_seconds": 1.0})

    def engine() -> BatchCopyEngine:
        return BatchCopyEngine(
            ledger,
            dag_id=DAG_ID,
            run_id=run_id,
            manifest_sha256=prepared["manifest_sha256"],
            batch=0,
            settings=settings,
        )

    stalled, taker = engine(), engine()
    while stalled._ready is None:  # the first row is sent at once, the second waits for its token: ready
        stalled.step()
    held_row = stalled._ready[0]["row_number"]
    time.sleep(1.2)  # the stall: no step, no renewal

    taker.run()
    rows = ledger.run_rows(DAG_ID, run_id)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    calls = copy_calls(emulator)["calls"]

    assert stalled.run() == {"succeeded": 3}  # wakes up, finds its lease revoked, starts over and finds nothing to do
    assert copy_calls(emulator)["calls"] == calls  # it sent nothing more
    assert_each_row_copied_once(emulator, datastore_id, ids, 3, ledger.run_rows(DAG_ID, run_id))
    taken = [json.loads(m) for m in bulk_logs.messages if '"copy_taken_over"' in m]
    assert held_row in {t["row"] for t in taken}
    assert any("lost its lease" in m for m in bulk_logs.messages)


# ------------------------------------------------------------------------------------------ 2 and 3: dags test


def dags_test(tmp_path: Path, conf: dict[str, Any], name: str, **env: str) -> subprocess.Popen:
    """``airflow dags test healthimaging_bulk_copy --conf ...`` as its own process group."""
    log = (tmp_path / f"{name}.log").open("wb")
    return spawn(
        [*airflow_command(), "dags", "test", BULK_DAG_ID, "--conf", json.dumps(conf)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'plugins'}", **env},
        log=log,
    )


def finished(process: subprocess.Popen, tmp_path: Path, name: str, timeout: float = 180) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        raise AssertionError(
            f"{name} did not finish in {timeout:.0f}s:\n{(tmp_path / f'{name}.log').read_text()[-4000:]}"
        )
    output = (tmp_path / f"{name}.log").read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def runs_of(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    with ledger.engine.connect() as db:
        rows = [
            dict(r) for r in db.execute(sa.select(copies).order_by(copies.c.run_id, copies.c.row_number)).mappings()
        ]
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(row["run_id"], []).append(row)
    return runs


@pytest.mark.slow
def test_two_runs_of_one_manifest_a_second_apart_copy_each_row_once(airflow_db, ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 6)
    emulator.configure(timing={"copy_fixed_seconds": 1.0})
    manifest = write_manifest(tmp_path / "copies.csv", [{"source_image_set_id": i} for i in ids])
    conf = bulk_conf(tmp_path, manifest, datastore_id, copies_per_second=4, burst=1)

    first = dags_test(tmp_path, conf, "first")
    time.sleep(1.0)
    second = dags_test(tmp_path, conf, "second")
    finished(first, tmp_path, "first")
    finished(second, tmp_path, "second")

    runs = runs_of(ledger)
    assert len(runs) == 2
    by_row: dict[int, list[dict[str, Any]]] = {}
    for rows in runs.values():
        assert len(rows) == 6
        for row in rows:
            by_row.setdefault(row["row_number"], []).append(row)
    for number, pair in by_row.items():
        statuses = sorted(r["status"] for r in pair)
        assert statuses == ["skipped", "succeeded"], (number, pair)
        done, skipped = sorted(pair, key=lambda r: r["status"] != "succeeded")
        # Which of the two a row meets depends on how far the other run had got when the row was sent; each
        # outcome has its own message and destination (a copy still being sent has none yet).
        same = f"run {done['run_id']} (row {number})"
        if skipped["error_code"] == "AlreadyCopied":
            assert skipped["message"] == f"copied by {same}", skipped
            assert skipped["destination_image_set_id"] == done["destination_image_set_id"], skipped
        else:
            assert skipped["error_code"] == "CopyInFlightElsewhere", skipped
            assert skipped["message"] == f"the same copy is in flight in {same}; its outcome is that row's", skipped
            assert skipped["destination_image_set_id"] in (None, done["destination_image_set_id"]), skipped
    assert_each_row_copied_once(emulator, datastore_id, ids, 6, [r for rows in runs.values() for r in rows])
    assert copy_calls(emulator)["calls"] == 6  # not one CopyImageSet more than rows


@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_resumed_by_the_next_run(airflow_db, ledger, emulator_connection, tmp_path):
    """``airflow dags test`` is SIGKILLed while copies are in flight; nothing marks its DAG run failed (there is
    no scheduler). The next run of the same manifest does not wait on it: once the dead engine's lease (3 s
    here) has expired, it takes the dead run's copies over and copies each row once."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 8)
    emulator.configure(timing={"copy_fixed_seconds": 1.5})
    manifest = write_manifest(tmp_path / "copies.csv", [{"source_image_set_id": i} for i in ids])
    conf = bulk_conf(tmp_path, manifest, datastore_id, copies_per_second=4, burst=1)
    lease = {"AIRFLOW__HEALTHIMAGING__LEASE_SECONDS": "3"}

    doomed = dags_test(tmp_path, conf, "killed", **lease)
    deadline = time.monotonic() + 120
    while copy_calls(emulator)["succeeded"] < 3:
        assert doomed.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-4000:]
        time.sleep(0.02)
    signal_group(doomed, signal.SIGKILL)
    doomed.wait(timeout=10)
    ((dead_run, left),) = runs_of(ledger).items()
    in_flight = [r for r in left if r["status"] in ("submitting", "submitted")]
    assert in_flight and any(r["status"] == "pending" for r in left), [r["status"] for r in left]
    time.sleep(3.5)  # the dead engine's lease runs out

    # It does not wait on the dead run: finished() fails the test if the rerun has not ended within 180 s.
    output = finished(dags_test(tmp_path, conf, "rerun", **lease), tmp_path, "rerun")
    runs = runs_of(ledger)
    rerun = runs[next(r for r in runs if r != dead_run)]
    assert [r["status"] for r in rerun] == ["succeeded"] * 8, [(r["status"], r["error_code"]) for r in rerun]
    assert_each_row_copied_once(emulator, datastore_id, ids, 8, rerun)
    resumed = [r for r in runs[dead_run] if r["error_code"] == "ResumedByLaterRun"]
    assert {r["row_number"] for r in resumed} == {r["row_number"] for r in in_flight}
    assert "run failed" not in output


# ------------------------------------------------------------------------------------------ 4. two merges


def test_two_merges_into_one_destination_in_one_run_are_both_verified(bulk_dag, ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    client = emulator.client()
    datastore_id, ids = seed(emulator, 3)
    emulator.configure(timing={"copy_fixed_seconds": 0.5})
    destination = ids[0]

    def sops(image_set_id: str, version: str | None = None) -> set[str]:
        kwargs = {"versionId": version} if version else {}
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)[
            "imageSetMetadataBlob"
        ]
        import gzip

        doc = json.loads(gzip.decompress(blob.read()))
        return {sop for series in doc["Study"]["Series"].values() for sop in series["Instances"]}

    before = sops(destination)
    rows = [
        {"source_image_set_id": ids[1], "destination_image_set_id": destination, "force": "true"},
        {"source_image_set_id": ids[2], "destination_image_set_id": destination, "force": "true"},
    ]
    manifest = write_manifest(tmp_path / "merges.csv", rows)

    run = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id), ledger)

    assert run.state == "success", [(r["status"], r["message"]) for r in run.rows]
    assert [(r["status"], r["verified"]) for r in run.rows] == [("succeeded", True)] * 2
    accounted(run.report)
    assert sorted(r["destination_version_id"] for r in run.rows) == ["2", "3"]  # one merge version each
    assert copy_calls(emulator)["succeeded"] == 2
    assert len(image_set_ids(client, datastore_id)) == 3  # no new image set
    assert sops(destination) == before | sops(ids[1]) | sops(ids[2])
    first = min(run.rows, key=lambda r: r["destination_version_id"])
    assert sops(destination, "2") == before | sops(first["source_image_set_id"])


def test_rows_waiting_on_another_owner_name_its_run_and_when_its_lease_ends(
    ledger, emulator_connection, tmp_path, bulk_logs
):
    """Run B's row waits for the source that run A's live engine is copying: B's progress line says so."""
    emulator = emulator_connection
    datastore_id, ids = seed(emulator, 1)
    emulator.configure(timing={"copy_fixed_seconds": 1.5})
    run_a, prepared_a = batch_of(ledger, tmp_path, datastore_id, ids)
    run_b, prepared_b = batch_of(ledger, tmp_path, datastore_id, ids)

    def engine(run_id: str, prepared: dict) -> BatchCopyEngine:
        return BatchCopyEngine(
            ledger,
            dag_id=DAG_ID,
            run_id=run_id,
            manifest_sha256=prepared["manifest_sha256"],
            batch=0,
            settings=BulkCopySettings(**{**prepared["settings"], "progress_interval_seconds": 0.0}),
        )

    first, second = engine(run_a, prepared_a), engine(run_b, prepared_b)
    first.step()
    assert [r["status"] for r in ledger.run_rows(DAG_ID, run_a)] == ["submitted"]
    second.step()

    (line,) = [m for m in bulk_logs.messages if m.startswith("batch 0: 0/1 rows done") and "wait on" in m]
    assert f"1 rows wait on copies of run {run_a} (batch 0), whose lease ends " in line and line.endswith(" UTC"), line
    first.run()
    assert second.run() == {"skipped": 1}  # run A copied it: run B's row is linked to that copy, not sent again
    (row,) = ledger.run_rows(DAG_ID, run_b)
    assert (row["error_code"], row["message"]) == ("AlreadyCopied", f"copied by run {run_a} (row 1)")
    assert copy_calls(emulator)["calls"] == 1
