"""Real deaths on the process stack of docker-compose.yaml (CeleryExecutor, two workers, PostgreSQL, Redis).

One stack for the module; each test is one bulk-copy run over image sets no other test copies, with a
process killed the way production loses one (SIGKILL of the process and every descendant, as a
machine or container dying):

- the triggerer in the middle of a batch, then a new one started;
- two triggerers for the whole run;
- a Celery worker while it runs ``prepare_manifest``;
- the scheduler in the middle of the run, then started again;
- the chaos run: 2,000 rows, two workers and two triggerers, the emulator injecting throttling, internal
  errors, lost responses and COPY_FAILED, two triggerer kills and a worker kill during the run.

Each ends with every row accounted for and zero duplicate image sets, counted in the emulator per source
series, not only in the ledger. Speed-ups on top of the compose configuration: a 10 s engine lease
(`AIRFLOW__HEALTHIMAGING__LEASE_SECONDS`), quicker heartbeats and health thresholds.
"""

from __future__ import annotations

import collections
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from stack.compose import ENV_EXAMPLE
from stack.process_stack import ProcessStack
from tests.airflow_stack import FAST, StackClient, admin, emulator_client, image_sets_by_series, shell_environ

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DAG_ID = "healthimaging_bulk_copy"
SYNTHETIC_IMAGE_SETS = 3200
LEASE_SECONDS = 10
COPIES_PER_SECOND = 10.0
OVERRIDES = {
    **FAST,
    "AIRFLOW__HEALTHIMAGING__LEASE_SECONDS": str(LEASE_SECONDS),
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
}
EMULATOR_ARGS = [
    "--rate",
    f"CopyImageSet={COPIES_PER_SECOND:g}:1",
    "--copy-seconds",
    "2",
    "--copy-seconds-per-instance",
    "0",
    "--fault-seed",
    "11",
    "--log-level",
    "WARNING",
]


@dataclass
class Sources:
    """The synthetic data store's image sets, handed out so that no two runs copy the same source."""

    datastore_id: str
    before: dict[str, set[str]]  # series UID -> image sets, before any copy
    free: list[str]
    series_of: dict[str, str] = field(default_factory=dict)

    def take(self, count: int) -> list[str]:
        taken, self.free = self.free[:count], self.free[count:]
        assert len(taken) == count, "the stack's synthetic data store is too small for the tests"
        return taken


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[ProcessStack]:
    environ = shell_environ()
    environ["HEALTHIMAGING_EMULATOR_SYNTHETIC_IMAGE_SETS"] = str(SYNTHETIC_IMAGE_SETS)
    stack = ProcessStack(
        tmp_path_factory.mktemp("deaths") / "home",
        workers=2,
        worker_concurrency=4,
        env_file=ENV_EXAMPLE,
        environ=environ,
        emulator_args=EMULATOR_ARGS,
        overrides=OVERRIDES,
    )
    with stack:
        yield stack


@pytest.fixture(scope="module")
def sources(stack) -> Sources:
    client = emulator_client(stack.emulator_url)
    (datastore,) = [d for d in client.list_datastores()["datastoreSummaries"] if d["datastoreName"] == "synthetic"]
    before = image_sets_by_series(client, datastore["datastoreId"])
    assert all(len(ids) == 1 for ids in before.values())
    series_of = {next(iter(ids)): uid for uid, ids in before.items()}
    return Sources(datastore["datastoreId"], before, sorted(series_of), series_of)


@pytest.fixture(scope="module")
def api(stack) -> StackClient:
    return StackClient(stack, stack.token())


def ledger_rows(stack: ProcessStack, run_id: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(stack.ledger_url())
    try:
        with engine.connect() as db:
            return [
                dict(r)
                for r in db.execute(
                    sa.text(
                        "SELECT * FROM healthimaging_copy_ledger WHERE dag_id = :dag AND run_id = :run ORDER BY "
                        "row_number"
                    ),
                    {"dag": DAG_ID, "run": run_id},
                ).mappings()
            ]
    finally:
        engine.dispose()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 240, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


@dataclass
class Outcome:
    run_id: str
    state: str
    rows: list[dict[str, Any]]
    new_by_source: dict[str, set[str]]  # source -> image sets its series gained during the run
    seconds: float
    counters: dict[str, Any]
    log: dict[str, Any] = field(default_factory=dict)

    def by_status(self) -> collections.Counter:
        return collections.Counter(r["status"] for r in self.rows)


def copy_run(
    stack: ProcessStack,
    api: StackClient,
    sources: Sources,
    name: str,
    copied: list[str],
    *,
    extra_rows: list[dict[str, str]] = (),
    during: Callable[[str], None] | None = None,
    timeout: float = 600,
    **conf: Any,
) -> Outcome:
    """Trigger a bulk copy of ``copied`` (plus ``extra_rows``), do ``during(run_id)`` while it runs, wait for
    its end; returns the ledger's rows and what the emulator's series gained."""
    manifest = stack.home / "manifests" / f"{name}.csv"
    with manifest.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["datastore_id", "source_image_set_id", "label"])
        writer.writeheader()
        writer.writerows(
            {"datastore_id": sources.datastore_id, "source_image_set_id": s, "label": f"{name}-{n}"}
            for n, s in enumerate(copied, 1)
        )
        writer.writerows(extra_rows)
    admin(stack, "DELETE", "counters")
    settings = {
        "manifest": str(manifest),
        "copies_per_second": COPIES_PER_SECOND,
        "burst": 1,
        "batch_size": 50,
        "poll_interval_seconds": 1,
        "progress_interval_seconds": 10,
        "report_folder": "reports",
        **conf,
    }
    started = time.monotonic()
    run_id = api.trigger(DAG_ID, conf=settings, wait_for_dag_timeout=120)
    if during is not None:
        during(run_id)
    state = api.wait_for_run(DAG_ID, run_id, timeout=timeout, poll=2)
    seconds = time.monotonic() - started
    client = emulator_client(stack.emulator_url)
    after = image_sets_by_series(client, sources.datastore_id)
    new_by_source = {s: after[sources.series_of[s]] - sources.before[sources.series_of[s]] for s in copied}
    outcome = Outcome(
        run_id, state, ledger_rows(stack, run_id), new_by_source, seconds, admin(stack, "GET", "counters")
    )
    print(
        f"\n{name}: {json.dumps({'state': state, 'seconds': round(seconds, 1), 'rows': dict(outcome.by_status())})}",
        file=sys.stderr,
    )
    return outcome


def assert_each_copied_once(outcome: Outcome, api: StackClient) -> None:
    """Every row accounted for; each source's series gained exactly one image set: the ledger's destination."""
    assert outcome.state == "success", api.diagnostics(DAG_ID, outcome.run_id) + json.dumps(dict(outcome.by_status()))
    duplicates = {s: ids for s, ids in outcome.new_by_source.items() if len(ids) != 1}
    assert not duplicates, duplicates
    by_source = {r["source_image_set_id"]: r for r in outcome.rows if r["status"] == "succeeded"}
    assert by_source.keys() == outcome.new_by_source.keys(), collections.Counter(
        (r["status"], r["error_code"]) for r in outcome.rows
    )
    for source, ids in outcome.new_by_source.items():
        assert ids == {by_source[source]["destination_image_set_id"]}, source
        assert by_source[source]["verified"] is True


def rows_done(stack: ProcessStack, run_id: str, count: int) -> Callable[[], bool]:
    return lambda: sum(r["status"] == "succeeded" for r in ledger_rows(stack, run_id)) >= count


def in_flight(stack: ProcessStack, run_id: str) -> bool:
    return any(r["status"] in ("submitting", "submitted") for r in ledger_rows(stack, run_id))


def triggerer_jobs(stack: ProcessStack, run_id: str) -> dict[int, list[str]]:
    """Batch -> the triggerer jobs that ran its trigger, from the trigger log files' names
    (``...log.trigger.<triggerer job id>.log``)."""
    folder = stack.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=copy_batch"
    jobs: dict[int, list[str]] = collections.defaultdict(list)
    for path in sorted(folder.glob("map_index=*/*.log.trigger.*.log")):
        jobs[int(path.parent.name.split("=")[1])].append(path.name.rsplit(".", 2)[-2])
    return dict(jobs)


# ------------------------------------------------------------------------------------------ one death each


def test_sigkill_of_the_triggerer_mid_batch_then_a_new_one(stack, api, sources):
    copied = sources.take(150)

    def kill_the_triggerer(run_id: str) -> None:
        wait_until(lambda: rows_done(stack, run_id, 30)() and in_flight(stack, run_id), "copies in flight")
        killed = stack.kill("airflow-triggerer")
        print(f"killed the triggerer: pids {killed}", file=sys.stderr)
        time.sleep(2)
        stack.start_process("airflow-triggerer")

    outcome = copy_run(stack, api, sources, "triggerer-killed", copied, during=kill_the_triggerer)
    jobs = triggerer_jobs(stack, outcome.run_id)
    print(f"triggerer jobs per batch: {jobs}", file=sys.stderr)
    assert_each_copied_once(outcome, api)
    assert any(len(set(j)) > 1 for j in jobs.values())  # a batch the killed triggerer ran went on in the new one
    assert outcome.counters["CopyImageSet"]["succeeded"] == len(copied)


def test_two_triggerers_for_the_whole_run(stack, api, sources):
    copied = sources.take(150)
    stack.add_process("airflow-triggerer-2", like="airflow-triggerer")
    stack.start_process("airflow-triggerer-2")
    try:
        wait_until(
            lambda: "Starting the triggerer" in stack.log_path("airflow-triggerer-2").read_text(errors="replace"),
            "the second triggerer",
            timeout=60,
        )
        outcome = copy_run(stack, api, sources, "two-triggerers", copied)
    finally:
        stack.kill("airflow-triggerer-2")
    jobs = triggerer_jobs(stack, outcome.run_id)
    print(f"triggerer jobs per batch: {jobs}", file=sys.stderr)
    assert_each_copied_once(outcome, api)
    assert outcome.counters["CopyImageSet"]["succeeded"] == len(copied)
    assert sorted(jobs) == [0, 1, 2]  # every batch ran in a triggerer


def test_sigkill_of_a_celery_worker_running_prepare_manifest(stack, api, sources):
    copied = sources.take(100)
    victim: dict[str, Any] = {}

    def kill_the_preparing_worker(run_id: str) -> None:
        def preparing() -> bool:
            for ti in api.task_instances(DAG_ID, run_id):
                if ti["task_id"] == "prepare_manifest" and ti["state"] == "running" and ti["hostname"]:
                    victim.update(ti)
                    return True
            return False

        wait_until(preparing, "prepare_manifest running", poll=0.05)
        name = f"airflow-worker-{victim['hostname'].removeprefix('worker')}"
        victim["killed"] = stack.kill(name)
        victim["worker"] = name
        time.sleep(2)
        stack.start_process(name)

    outcome = copy_run(stack, api, sources, "worker-killed", copied, during=kill_the_preparing_worker)
    assert_each_copied_once(outcome, api)
    prepare = [ti for ti in api.task_instances(DAG_ID, outcome.run_id) if ti["task_id"] == "prepare_manifest"]
    assert prepare[0]["try_number"] >= 2, prepare  # the killed try did not finish; a retry prepared the run
    print(
        f"killed {victim['worker']} (pids {victim['killed']}) while it ran prepare_manifest try {victim['try_number']}",
        file=sys.stderr,
    )


def test_the_scheduler_killed_and_started_again_mid_run(stack, api, sources):
    copied = sources.take(150)

    def restart_the_scheduler(run_id: str) -> None:
        wait_until(lambda: rows_done(stack, run_id, 20)(), "copies done")
        stack.kill("airflow-scheduler")
        time.sleep(3)
        stack.start_process("airflow-scheduler")

    outcome = copy_run(stack, api, sources, "scheduler-restarted", copied, during=restart_the_scheduler)
    assert_each_copied_once(outcome, api)
    assert outcome.counters["CopyImageSet"]["succeeded"] == len(copied)


# ------------------------------------------------------------------------------------------ the chaos run

CHAOS_ROWS = 2000
CHAOS_FAULTS = {
    "CopyImageSet": {"throttle": 0.10, "internal_error": 0.02, "lost_response": 0.01, "copy_failed": 0.02},
    "GetImageSet": {"throttle": 0.10},
}


def test_chaos_run(stack, api, sources, tmp_path):
    """2,000 rows (plus rows already copied and rejected ones), two workers and two triggerers, faults
    injected on every call, two triggerer kills and one worker kill during the run."""
    copied = sources.take(CHAOS_ROWS)
    earlier = [r for r in ledger_rows_any(stack) if r["status"] == "succeeded"][:20]
    extra = [
        {
            "datastore_id": sources.datastore_id,
            "source_image_set_id": r["source_image_set_id"],
            "label": "copied before",
        }
        for r in earlier
    ]
    extra += [
        {"datastore_id": sources.datastore_id, "source_image_set_id": f"not-an-id-{n}", "label": "bad id"}
        for n in range(10)
    ]
    stack.add_process("airflow-triggerer-chaos", like="airflow-triggerer")
    stack.start_process("airflow-triggerer-chaos")
    admin_config(stack, {"faults": CHAOS_FAULTS, "seed": 2026})
    kills: list[str] = []

    def chaos(run_id: str) -> None:
        for share, name in ((0.20, "airflow-triggerer"), (0.40, "airflow-worker-1"), (0.60, "airflow-triggerer-chaos")):
            wait_until(rows_done(stack, run_id, int(share * CHAOS_ROWS)), f"{share:.0%} of the rows", timeout=600)
            stack.kill(name)
            kills.append(f"{name} at {share:.0%}")
            time.sleep(2)
            stack.start_process(name)

    try:
        outcome = copy_run(
            stack,
            api,
            sources,
            "chaos",
            copied,
            extra_rows=extra,
            during=chaos,
            timeout=900,
            batch_size=250,
            max_copies_in_flight=100,
            tolerated_failure_percent=10,
            # The injected throttles are random, one send in ten whatever the rate: the engine would take them
            # for a rate above the quota and slow down (test_bulk_copy_limits tests that); this run is about
            # deaths and faults at the configured rate.
            adapt_rate=False,
        )
    finally:
        admin_config(stack, {"faults": {}})
    counts = outcome.by_status()
    copy = outcome.counters["CopyImageSet"]
    client = emulator_client(stack.emulator_url)
    failed_in_service = {}
    for source, ids in outcome.new_by_source.items():
        for image_set_id in ids:
            found = client.get_image_set(datastoreId=sources.datastore_id, imageSetId=image_set_id)
            if found["imageSetWorkflowStatus"] == "COPY_FAILED":
                failed_in_service[source] = found.get("message")
    report = {
        "rows": len(outcome.rows),
        "succeeded": counts["succeeded"],
        "failed": counts["failed"],
        "rejected": counts["rejected"],
        "skipped": counts["skipped"],
        "duplicates": sum(len(ids) - 1 for ids in outcome.new_by_source.values() if len(ids) > 1),
        "copy_image_set_calls_per_row": round(copy["calls"] / CHAOS_ROWS, 3),
        "injected": copy.get("faults", {}),
        "throttled": copy.get("throttled"),
        "makespan_s": makespan(outcome.rows),
        "run_s": round(outcome.seconds, 1),
        "kills": kills,
    }
    print("\nCHAOS RUN " + json.dumps(report, indent=1), file=sys.stderr)
    (tmp_path / "chaos.json").write_text(json.dumps(report, indent=1))

    assert outcome.state == "success", api.diagnostics(DAG_ID, outcome.run_id) + json.dumps(report)
    assert len(kills) == 3
    assert counts["succeeded"] + counts["failed"] + counts["rejected"] + counts["skipped"] == CHAOS_ROWS + len(extra)
    assert counts["rejected"] == 10 and counts["skipped"] == len(earlier)
    assert report["duplicates"] == 0 and all(len(ids) == 1 for ids in outcome.new_by_source.values())
    failed = {r["source_image_set_id"]: r for r in outcome.rows if r["status"] == "failed"}
    assert failed.keys() == failed_in_service.keys()  # exactly the injected COPY_FAILED ones
    assert len(failed) == copy["faults"].get("copy_failed", 0)
    for source, row in failed.items():
        assert (row["error_code"], row["message"]) == ("COPY_FAILED", failed_in_service[source])
    succeeded = {r["source_image_set_id"]: r for r in outcome.rows if r["status"] == "succeeded"}
    assert succeeded.keys() | failed.keys() == set(copied)
    for source, row in succeeded.items():
        assert outcome.new_by_source[source] == {row["destination_image_set_id"]} and row["verified"] is True


def admin_config(stack: ProcessStack, changes: dict[str, Any]) -> None:
    admin(stack, "POST", "config", changes)


def ledger_rows_any(stack: ProcessStack) -> list[dict[str, Any]]:
    engine = sa.create_engine(stack.ledger_url())
    try:
        with engine.connect() as db:
            return [
                dict(r) for r in db.execute(sa.text("SELECT * FROM healthimaging_copy_ledger ORDER BY id")).mappings()
            ]
    finally:
        engine.dispose()


def makespan(rows: list[dict[str, Any]]) -> float | None:
    sent = [r["submitted_at"] for r in rows if r.get("submitted_at")]
    done = [r["completed_at"] for r in rows if r.get("completed_at") and r["status"] in ("succeeded", "failed")]
    return round(max(done) - min(sent), 1) if sent and done else None
