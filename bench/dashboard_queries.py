"""How fast the dashboard's run view and failure view answer for a run of 100,000 rows on PostgreSQL.

    .venv/bin/python bench/dashboard_queries.py [--rows 100000] [--other-rows 400000] [--repeat 20]

A throwaway PostgreSQL database (127.0.0.1:5432) holds a ledger of one run of ``--rows`` rows (97 %
succeeded, 2 % failed under three error codes, 1 % rejected) beside ``--other-rows`` rows of four other
runs (the history a ledger has after a few migrations), migrated and ANALYZEd as a real ledger is. With
little history (the run half of the ledger) PostgreSQL rightly reads the table instead of the index;
the benchmark prints which. Airflow's API server app runs in-process
(``create_app()``, the dashboard mounted by the plugin, a JWT from the simple auth manager), and each
view is asked ``--repeat`` times over HTTP (fastapi's TestClient) after a warm-up, with the defaults a
user gets (no tuning of PostgreSQL or of the app).

Printed, for the run view (``GET /healthimaging/api/runs/{dag}/{run}``) and the failure view
(``.../failures``): median, p95 and max in milliseconds against the 200 ms target, as ratios to two
baselines measured in the same run: the same HTTP and authentication path answering the cheapest
route (``/api/ledger``), and what a view that loads the run's rows into Python would cost (one
``SELECT`` of the run's rows and ``report.summarize`` over them). Then the ledger indexes each view's
SQL uses, from PostgreSQL's ``EXPLAIN``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from stack.postgres import TemporaryDatabases, database_name  # noqa: E402 - after the path is set

DAG_ID = "healthimaging_bulk_copy"
RUN_ID = "manual__bench_100k"
TARGET_MS = 200.0
FAILURES = {"ConflictException": 0.5, "COPY_FAILED": 0.35, "ServiceQuotaExceededException": 0.15}


def airflow_environment(home: Path, ledger_url: str) -> dict[str, str]:
    """An Airflow of its own (SQLite metadata under ``home``), the repository's plugins, the ledger on PostgreSQL."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # no generated password printed
        "AIRFLOW__API_AUTH__JWT_SECRET": "bench-" + "x" * 40,
        "AIRFLOW_CONN_HEALTHIMAGING_LEDGER": ledger_url,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
    }


def fill(ledger_url: str, rows: int, other_rows: int) -> None:
    """The ledger: the measured run, then ``other_rows`` spread over four other runs; ANALYZEd."""
    import sqlalchemy as sa

    from healthimaging.bulk.ledger import copies, engine_for

    engine = engine_for(ledger_url)  # migrates the ledger's schema to head
    rng = random.Random(7)
    started = time.time() - 8 * 3600

    def records(run_id: str, count: int):
        for number in range(1, count + 1):
            draw = rng.random()
            status = "succeeded" if draw < 0.97 else ("failed" if draw < 0.99 else "rejected")
            submitted = started + number / 3.5 if status != "rejected" else None
            completed = submitted + rng.uniform(20, 60) if submitted else None
            code = None
            if status == "failed":
                code = rng.choices(list(FAILURES), weights=list(FAILURES.values()))[0]
            elif status == "rejected":
                code = "ManifestRowInvalid"
            yield {
                "dag_id": DAG_ID,
                "run_id": run_id,
                "manifest_uri": f"s3://bench/{run_id}.csv",
                "manifest_sha256": "b" * 64,
                "row_number": number,
                "label": f"row-{number}",
                "datastore_id": "d" * 32,
                "source_image_set_id": f"{rng.getrandbits(128):032x}",
                "source_version_id": "1",
                "destination_image_set_id": f"{rng.getrandbits(128):032x}" if status == "succeeded" else None,
                "destination_version_id": "1" if status == "succeeded" else None,
                "copy_kind": "new",
                "copy_key": f"{rng.getrandbits(128):032x}",
                "status": status,
                "error_code": code,
                "message": f"{code}: bench failure" if code else None,
                "attempts": 1 if status != "rejected" else 0,
                "submitted_at": submitted,
                "completed_at": completed,
                "verified": status == "succeeded",
                "updated_at": completed or started,
                "batch": number // 250,
            }

    runs = [(RUN_ID, rows)] + [(f"scheduled__bench_{n}", other_rows // 4) for n in range(4)]
    for run_id, count in runs:
        batch: list[dict] = []
        with engine.begin() as db:
            for record in records(run_id, count):
                batch.append(record)
                if len(batch) == 5000:
                    db.execute(copies.insert(), batch)
                    batch = []
            if batch:
                db.execute(copies.insert(), batch)
    with engine.connect() as db:
        db.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE healthimaging_copy_ledger"))


def timed(call, repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` calls, after three warm-up calls."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(repeat):
        begun = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - begun))
    return samples


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[max(0, round(0.95 * len(ordered)) - 1)],
        "max": ordered[-1],
    }


def indexes_used(engine, statements: list[tuple[str, object]]) -> tuple[set[str], list[str]]:
    """The ledger indexes PostgreSQL's plans for ``statements`` use, and the statements that scan the table."""
    used: set[str] = set()
    scans: list[str] = []

    def walk(node: dict, statement: str) -> None:
        if node.get("Index Name"):
            used.add(node["Index Name"])
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") == "healthimaging_copy_ledger":
            scans.append(" ".join(statement.split()))
        for child in node.get("Plans", []):
            walk(child, statement)

    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
            walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"], statement)
    finally:
        raw.close()
    return used, scans


def measure(rows: int, repeat: int) -> None:
    import sqlalchemy as sa
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from healthimaging.bulk.ledger import copies, engine_for
    from healthimaging.bulk.report import summarize

    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    headers = {"Authorization": f"Bearer {token}"}
    base = f"/healthimaging/api/runs/{DAG_ID}/{RUN_ID}"

    def get(path: str):
        def call():
            response = client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            return response.json()

        return call

    detail = get(base)()
    assert detail["rows"] == rows and detail["accounted"] == rows, detail
    failures = get(base + "/failures")()
    assert (
        sum(group["count"] for group in failures["groups"]) == detail["counts"]["failed"] + detail["counts"]["rejected"]
    )
    print(
        f"run of {rows:,} rows: {detail['counts']['succeeded']:,} succeeded, {detail['counts']['failed']:,} failed, "
        f"{detail['counts']['rejected']:,} rejected; {len(failures['groups'])} error codes"
    )

    engine = engine_for(os.environ["AIRFLOW_CONN_HEALTHIMAGING_LEDGER"])

    def load_and_summarize():
        with engine.connect() as db:
            loaded = [dict(r._mapping) for r in db.execute(sa.select(copies).where(copies.c.run_id == RUN_ID))]
        summarize(loaded, dag_id=DAG_ID, run_id=RUN_ID, manifest_uri="", manifest_sha256="", total_rows=rows)

    http_floor = figures(timed(get("/healthimaging/api/ledger"), repeat))
    naive = figures(timed(load_and_summarize, max(3, repeat // 4)))
    print(
        f"baselines: the HTTP and auth path alone (/api/ledger) median {http_floor['median']:.1f} ms; "
        f"loading the run's rows into Python and summarizing them median {naive['median']:.0f} ms"
    )
    for name, path in (("run view", base), ("failure view", base + "/failures")):
        result = figures(timed(get(path), repeat))
        verdict = "meets" if result["median"] <= TARGET_MS and result["p95"] <= TARGET_MS else "MISSES"
        print(
            f"{name:13} median {result['median']:6.1f} ms  p95 {result['p95']:6.1f} ms  max {result['max']:6.1f} ms"
            f"  -> {verdict} the {TARGET_MS:.0f} ms target; {result['median'] / http_floor['median']:.1f}x the HTTP "
            f"floor, {result['median'] / naive['median']:.3f}x loading the rows"
        )
        statements: list[tuple[str, object]] = []

        def record(conn, cursor, statement, parameters, context, executemany):
            if "healthimaging_copy_ledger" in statement and not executemany:
                statements.append((statement, parameters))

        # On the Engine class: the app's engine for the ledger is its own (built from the Airflow connection).
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
        try:
            get(path)()
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
        used, scans = indexes_used(engine, statements)
        print(
            f"{'':13} {len(statements)} ledger statements; indexes: {', '.join(sorted(used)) or 'none'}"
            + ("" if scans else "; no sequential scan of the ledger")
        )
        for statement in scans:
            print(f"{'':13} a sequential scan of the ledger: {statement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--other-rows", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the in-process half
    args = parser.parse_args()
    if args.measure:
        measure(args.rows, args.repeat)
        return
    databases = TemporaryDatabases("hi_bench_dashboard_")
    name = database_name("hi_bench_dashboard_")
    databases.create(name)
    try:
        ledger_url = f"postgresql+psycopg2://{databases.user}@127.0.0.1:5432/{name}"
        begun = time.monotonic()
        fill(ledger_url, args.rows, args.other_rows)
        print(f"ledger filled: {args.rows + args.other_rows:,} rows in {time.monotonic() - begun:.0f} s")
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, **airflow_environment(Path(home), ledger_url.replace("+psycopg2", ""))}
            airflow = str(Path(sys.executable).with_name("airflow"))
            subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
            # The DAGs in the metadata database: a user may read the runs of the DAGs Airflow knows.
            subprocess.run([airflow, "dags", "reserialize"], env=env, check=True, capture_output=True)
            subprocess.run(
                [sys.executable, __file__, "--measure", "--rows", str(args.rows), "--repeat", str(args.repeat)],
                env=env,
                check=True,
            )
    finally:
        databases.drop_all()


if __name__ == "__main__":
    main()
