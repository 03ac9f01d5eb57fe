"""Bulk-copy benchmark: the healthimaging_bulk_copy DAG against the emulator, and manifest validation at scale.

Run: ``make bench-bulk`` / ``make bench-bulk-stack`` (or ``.venv/bin/python bench/bulk_copy.py [--stack]
[--rows 1000] [--rate 5] [--batch-size N] [--validate-rows 100000]``; ``--validate-rows 0`` skips part 2).

Part 1 copies ``--rows`` synthetic image sets with the emulator's CopyImageSet quota raised to
``--rate``/s (burst 1, as AWS) and the DAG's shared limit set to the same rate. By default it runs
under ``airflow dags test``, in one batch (dag.test runs mapped batches one after another, which
would measure that, not the engine). With ``--stack`` it runs on the process stack of
docker-compose.yaml (scheduler, triggerer, a Celery worker, PostgreSQL, Redis; ``make stack``) in
batches of ``--batch-size`` (the DAG's default, 250), so that the batches' triggers run side by side
in the triggerer and share the limit, as in production. It prints, each as a ratio against what the
same run measured or allows:

- the copy makespan (first CopyImageSet sent → last copy verified) against the quota-bound ideal
  (rows / rate + one copy duration, the duration measured in this run); target at most 1.10x;
- the share of CopyImageSet calls the emulator throttled; target at most 1%;
- worker-slot seconds per image set (time task instances spent RUNNING, from Airflow's event log);
- task instances per 1,000 rows.

Part 2 validates a ``--validate-rows`` manifest and prints the time and peak memory against a
baseline measured in the same run: reading the same CSV with ``csv.DictReader`` and nothing else.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
from bench.ideal import ideal_makespan  # noqa: E402 - after the path is set
from healthimaging_emulator.admin_client import admin_request  # noqa: E402 - after the path is set
from healthimaging_emulator.quotas import MAX_CONCURRENT_COPIES_PER_DATASTORE  # noqa: E402 - after the path is set
from stack.processes import free_port  # noqa: E402 - after the path is set

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
COPY_SECONDS = 2.0
DAG_ID = "healthimaging_bulk_copy"
#: The DAG's default batch size (dags/healthimaging_bulk_copy.py), used with --stack.
DEFAULT_BATCH_SIZE = 250


def start_emulator(port: int, rows: int, rate: float) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "healthimaging_emulator", "--port", str(port), *emulator_args(rows, rate)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "listening on" in line:
            return process
    raise SystemExit(f"the emulator exited with code {process.wait()}")


def running_seconds(airflow_db_url: str, dag_id: str) -> tuple[float, int]:
    """(seconds task instances spent RUNNING, number of task instances) from Airflow's event log."""
    import sqlalchemy as sa

    engine = sa.create_engine(airflow_db_url)
    try:
        with engine.connect() as db:
            events = db.execute(
                sa.text(
                    "SELECT task_id, map_index, event, dttm FROM log WHERE dag_id = :dag AND task_id IS NOT NULL "
                    "ORDER BY dttm"
                ),
                {"dag": dag_id},
            ).fetchall()
            instances = db.execute(
                sa.text("SELECT COUNT(*) FROM task_instance WHERE dag_id = :dag"), {"dag": dag_id}
            ).scalar_one()
    finally:
        engine.dispose()
    from datetime import datetime

    started: dict[tuple, datetime] = {}
    total = 0.0
    for task_id, map_index, event, stamp in events:
        key = (task_id, map_index)
        when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        if key in started:
            total += (when - started.pop(key)).total_seconds()
        if event == "running":
            started[key] = when
    return total, instances


def copy_figures(ledger_url: str) -> dict:
    """The copies as the ledger recorded them: first send, last completion, successes, median copy time."""
    import sqlalchemy as sa

    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as db:
            first_sent, last_done, succeeded = db.execute(
                sa.text(
                    "SELECT MIN(submitted_at), MAX(completed_at), SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 "
                    "END) "
                    "FROM healthimaging_copy_ledger"
                )
            ).one()
            durations = sorted(
                d
                for (d,) in db.execute(
                    sa.text(
                        "SELECT completed_at - submitted_at FROM healthimaging_copy_ledger WHERE status = 'succeeded'"
                    )
                )
            )
    finally:
        engine.dispose()
    return {
        "first_sent": first_sent,
        "last_done": last_done,
        "succeeded": succeeded or 0,
        "one_copy": durations[len(durations) // 2] if durations else COPY_SECONDS,
    }


def emulator_args(rows: int, rate: float) -> list[str]:
    return [
        "--seed",
        f"synthetic:{rows}",
        "--rate",
        f"CopyImageSet={rate}:1",
        "--copy-seconds",
        str(COPY_SECONDS),
        "--copy-seconds-per-instance",
        "0",
        "--log-level",
        "WARNING",
    ]


def source_ids(url: str, rows: int) -> tuple[str, list[str]]:
    """The synthetic data store and the first ``rows`` of its image sets."""
    client = boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(inject_host_prefix=False),
    )
    (datastore_id,) = [
        d["datastoreId"] for d in client.list_datastores()["datastoreSummaries"] if d["datastoreName"] == "synthetic"
    ]
    ids = [
        s["imageSetId"]
        for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id)
        for s in page["imageSetsMetadataSummaries"]
    ][:rows]
    return datastore_id, ids


def run_conf(manifest: Path, datastore_id: str, rate: float, batch_size: int) -> dict:
    return {
        "manifest": str(manifest),
        "default_datastore_id": datastore_id,
        "copies_per_second": rate,
        "burst": 1,
        "batch_size": batch_size,
        "max_copies_in_flight": 100,
        "poll_interval_seconds": 1,
        "progress_interval_seconds": 30,
    }


def result_of(
    rows: int,
    rate: float,
    batch_size: int,
    succeeded_run: bool,
    run_seconds: float,
    counters: dict,
    copies: dict,
    slot_seconds: float,
    instances: int,
    home: Path,
) -> dict:
    copy_calls = counters.get("CopyImageSet", {})
    return {
        "succeeded_run": succeeded_run,
        "rows": rows,
        "succeeded": copies["succeeded"],
        "rate": rate,
        "batch_size": batch_size,
        "batches": -(-rows // batch_size),
        "makespan": copies["last_done"] - copies["first_sent"],
        "ideal": ideal_makespan(rows, rate, copies["one_copy"], MAX_CONCURRENT_COPIES_PER_DATASTORE),
        "one_copy": copies["one_copy"],
        "run_seconds": run_seconds,
        "copy_calls": copy_calls.get("calls", 0),
        "throttled": copy_calls.get("throttled", 0),
        "slot_seconds": slot_seconds,
        "task_instances": instances,
        "home": str(home),
    }


def bulk_copy_dags_test(rows: int, rate: float, batch_size: int) -> dict:
    """Part 1 under ``airflow dags test`` (SQLite metadata DB and ledger)."""
    port = free_port()
    emulator = start_emulator(port, rows, rate)
    url = f"http://127.0.0.1:{port}"
    home = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    try:
        datastore_id, ids = source_ids(url, rows)
        from healthimaging.bulk.manifest import template

        manifest = home / "manifest.csv"
        manifest.write_text(template({"source_image_set_id": i} for i in ids))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT / "plugins"),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": "b",
                        "password": "b",
                        "extra": {"endpoint_url": url, "region_name": "us-east-1"},
                    }
                ),
            }
        )
        subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started = time.monotonic()
        with open(home / "run.log", "w") as log:
            result = subprocess.run(
                [
                    AIRFLOW,
                    "dags",
                    "test",
                    DAG_ID,
                    "--conf",
                    json.dumps(run_conf(manifest, datastore_id, rate, batch_size)),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        run_seconds = time.monotonic() - started
        counters = emulator_admin(url, "GET", "counters")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    slot_seconds, instances = running_seconds(f"sqlite:///{home / 'airflow.db'}", DAG_ID)
    return result_of(
        rows,
        rate,
        batch_size,
        result.returncode == 0,
        run_seconds,
        counters,
        copy_figures(f"sqlite:///{home / 'healthimaging_ledger.sqlite3'}"),
        slot_seconds,
        instances,
        home,
    )


def bulk_copy_on_stack(rows: int, rate: float, batch_size: int) -> dict:
    """Part 1 on the process stack of docker-compose.yaml (PostgreSQL metadata DB and ledger, Celery)."""
    from stack.compose import ENV_EXAMPLE
    from stack.process_stack import ProcessStack
    from tests.airflow_stack import StackClient

    home = Path(tempfile.mkdtemp(prefix="bench-bulk-stack-"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    stack = ProcessStack(
        home / "home", workers=1, env_file=ENV_EXAMPLE, environ=environ, emulator_args=emulator_args(rows, rate)
    )
    with stack:
        datastore_id, ids = source_ids(stack.emulator_url, rows)
        from healthimaging.bulk.manifest import template

        manifest = stack.home / "manifests" / "bench.csv"
        manifest.write_text(template({"source_image_set_id": i} for i in ids))
        stack.emulator_admin("DELETE", "counters")
        api = StackClient(stack)
        api.auth_token = stack.token()
        started = time.monotonic()
        run_id = api.trigger(DAG_ID, conf=run_conf(manifest, datastore_id, rate, batch_size), wait_for_dag_timeout=180)
        state = api.wait_for_run(DAG_ID, run_id, timeout=10 * rows / rate + 600, poll=2)
        run_seconds = time.monotonic() - started
        counters = stack.emulator_admin("GET", "counters")
        copies = copy_figures(stack.ledger_url())
        slot_seconds, instances = running_seconds(stack.sql_alchemy_conn, DAG_ID)
        if state != "success":
            print(api.diagnostics(DAG_ID, run_id), file=sys.stderr)
    return result_of(
        rows, rate, batch_size, state == "success", run_seconds, counters, copies, slot_seconds, instances, stack.home
    )


def emulator_admin(url: str, method: str, path: str) -> dict:
    """One admin request (with $HEALTHIMAGING_EMULATOR_ADMIN_TOKEN if set); RuntimeError unless it answers 200."""
    status, answer = admin_request(url, method, path)
    if status != 200:
        raise RuntimeError(f"emulator admin {method} {path} answered HTTP {status}: {answer}")
    return answer or {}


def validation(rows: int) -> dict:
    from healthimaging.bulk.manifest import template, validate_manifest

    datastore = "a" * 32
    data = template(
        {"datastore_id": datastore, "source_image_set_id": f"{i:032x}", "label": f"row {i}"} for i in range(rows)
    ).encode()

    def measure(work):
        """(seconds, peak bytes, result) of ``work()``: timed on its own, then run again under tracemalloc,
        which slows allocation several-fold and would distort the time."""
        began = time.perf_counter()
        work()
        seconds = time.perf_counter() - began
        tracemalloc.start()
        result = work()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return seconds, peak, result

    base_seconds, base_peak, _ = measure(lambda: list(csv.DictReader(io.StringIO(data.decode()))))
    seconds, peak, validated = measure(lambda: validate_manifest(data, "m.csv"))
    return {
        "rows": rows,
        "bytes": len(data),
        "seconds": seconds,
        "peak": peak,
        "base_seconds": base_seconds,
        "base_peak": base_peak,
        "valid": len(validated.rows),
        "rejected": len(validated.rejected),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--validate-rows", type=int, default=100_000)
    parser.add_argument("--skip-copy", action="store_true", help="only the validation part")
    parser.add_argument(
        "--stack",
        action="store_true",
        help="run on the process stack of docker-compose.yaml (batches side by side in the triggerer)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"rows per batch (default: all in one under dags test, {DEFAULT_BATCH_SIZE} with --stack)",
    )
    args = parser.parse_args()
    ok = True
    if not args.skip_copy:
        if args.stack:
            r = bulk_copy_on_stack(args.rows, args.rate, args.batch_size or DEFAULT_BATCH_SIZE)
        else:
            r = bulk_copy_dags_test(args.rows, args.rate, args.batch_size or args.rows)
        ratio = r["makespan"] / r["ideal"]
        throttled_share = r["throttled"] / r["copy_calls"] if r["copy_calls"] else 0.0
        where = "the process stack (triggerer, Celery worker)" if args.stack else "airflow dags test"
        print(
            f"bulk copy on {where}: {r['rows']} image sets in {r['batches']} batch(es) of {r['batch_size']}, "
            f"CopyImageSet quota {r['rate']}/s burst 1, copies of {COPY_SECONDS}s "
            f"(run {'succeeded' if r['succeeded_run'] else 'FAILED'}, {r['succeeded']} copies succeeded)"
        )
        print(
            f"  copy makespan {r['makespan']:.1f}s vs ideal {r['ideal']:.1f}s (bench/ideal.py: the rate and "
            f"{MAX_CONCURRENT_COPIES_PER_DATASTORE} copies in progress, copies of {r['one_copy']:.1f}s): "
            f"{ratio:.3f}x  (target <= 1.10x) {'meets' if ratio <= 1.10 else 'MISSES'}"
        )
        print(f"  whole DAG run {r['run_seconds']:.1f}s: {r['run_seconds'] / r['ideal']:.3f}x the ideal")
        print(
            f"  throttled CopyImageSet calls: {r['throttled']} of {r['copy_calls']} = {100 * throttled_share:.2f}%  "
            f"(target <= 1%) {'meets' if throttled_share <= 0.01 else 'MISSES'}"
        )
        print(
            f"  worker-slot seconds: {r['slot_seconds']:.1f}s in all, {r['slot_seconds'] / r['rows']:.4f}s per image "
            "set "
            f"({r['slot_seconds'] / r['makespan']:.3f} of the makespan)"
        )
        print(f"  task instances: {r['task_instances']} = {1000 * r['task_instances'] / r['rows']:.1f} per 1,000 rows")
        print(f"  (Airflow home and logs: {r['home']})")
        ok = ok and r["succeeded_run"] and ratio <= 1.10 and throttled_share <= 0.01
    if args.validate_rows > 0:
        v = validation(args.validate_rows)
        print(
            f"manifest validation: {v['rows']:,} rows ({v['bytes'] / 1e6:.1f} MB), {v['valid']:,} valid, "
            f"{v['rejected']} rejected"
        )
        print(
            f"  time {v['seconds']:.2f}s vs csv.DictReader alone {v['base_seconds']:.2f}s: "
            f"{v['seconds'] / v['base_seconds']:.1f}x"
        )
        print(
            f"  peak memory {v['peak'] / 1e6:.0f} MB vs csv.DictReader alone {v['base_peak'] / 1e6:.0f} MB: "
            f"{v['peak'] / v['base_peak']:.1f}x"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
