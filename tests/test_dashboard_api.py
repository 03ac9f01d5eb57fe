"""The dashboard's API in-process: Airflow's own app (``create_app()``, the plugin mounted at /healthimaging)
under a TestClient, JWTs from its auth manager, and a ledger filled by real bulk-copy runs on the emulator.
"""

from __future__ import annotations

import csv
import io
import json
import time
from urllib.parse import parse_qs, urlparse

import pytest
import sqlalchemy as sa

from healthimaging.bulk.dashboard import ledger_source
from healthimaging.bulk.ledger import Ledger, copies, engine_for
from tests.bulk_helpers import BULK_DAG_ID, bulk_conf, run_dag, seed, write_manifest

pytest_plugins = ["tests.dashboard_helpers"]  # the airflow_api fixture

MISSING = "f" * 32  # a well-formed image set id that no data store holds
POSTGRES = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test"}
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
PREFIX = "/healthimaging"

PAGES = ["/", "/runs/{dag_id}/{run_id}", "/static/{static}"]
API = [
    "/api/ledger",
    "/api/runs",
    "/api/runs/{dag_id}/{run_id}",
    "/api/runs/{dag_id}/{run_id}/throughput",
    "/api/runs/{dag_id}/{run_id}/latency",
    "/api/runs/{dag_id}/{run_id}/failures",
    "/api/runs/{dag_id}/{run_id}/failed-rows",
    "/api/runs/{dag_id}/{run_id}/failed-rows?format=csv",
    "/api/lineage?q={image_set_id}",
    "/api/lineage/trace?datastore_id={datastore_id}&image_set_id={image_set_id}",
    "/api/attention",
    "/api/summary",
]
COUNT_KEYS = {"pending", "submitting", "submitted", "succeeded", "failed", "rejected", "skipped", "planned"}


@pytest.fixture(autouse=True)
def fresh_engines():
    ledger_source.forget_engines()
    yield
    ledger_source.forget_engines()


@pytest.fixture
def static_file():
    """A file in the static folder (the front end's, when it is there)."""
    folder = ledger_source_static()
    existing = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    if existing:
        yield existing[0].relative_to(folder).as_posix()
        return
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "test-probe.txt"
    probe.write_text("probe")
    yield probe.name
    probe.unlink()


def ledger_source_static():
    from healthimaging.bulk.dashboard.app import STATIC

    return STATIC


def get(api, path, user="admin", **kwargs):
    headers = api.headers(user) if user else {}
    headers.update(kwargs.pop("headers", {}))
    return api.client.get(PREFIX + path, headers=headers, **kwargs)


def copy_runs(bulk_dag, ledger, emulator, tmp_path):
    """Run 1: A -> B (succeeded), another copy (succeeded), a missing source (failed), a bad id (rejected);
    run 2: B -> C. Returns (datastore, A, B, C, run 1, run 2)."""
    datastore_id, ids = seed(emulator, 2)
    first = write_manifest(
        tmp_path / "first.csv",
        [
            {"source_image_set_id": ids[0], "label": "copy A"},
            {"source_image_set_id": ids[1], "label": "=cmd|' /C calc'!A0"},
            {"source_image_set_id": MISSING, "label": "no such source"},
            {"source_image_set_id": "not-an-id", "label": "bad id"},
        ],
    )
    run1 = run_dag(bulk_dag, bulk_conf(tmp_path, first, datastore_id, tolerated_failure_percent=50), ledger)
    assert run1.state == "success", run1.tis
    b = run1.row(1)["destination_image_set_id"]
    second = write_manifest(tmp_path / "second.csv", [{"source_image_set_id": b, "label": "copy B"}])
    run2 = run_dag(bulk_dag, bulk_conf(tmp_path, second, datastore_id), ledger)
    assert run2.state == "success", run2.tis
    c = run2.row(1)["destination_image_set_id"]
    return datastore_id, ids[0], b, c, run1, run2


def test_every_route_of_a_real_run_needs_a_user_who_may_read_its_runs(
    airflow_api, bulk_dag, ledger, emulator_connection, tmp_path, static_file
):
    datastore_id, a, b, c, run1, run2 = copy_runs(bulk_dag, ledger, emulator_connection, tmp_path)
    values = {"dag_id": BULK_DAG_ID, "run_id": run1.run_id, "static": static_file}
    values |= {"datastore_id": datastore_id, "image_set_id": c}
    for route in PAGES + API:
        path = route.format(**values)
        assert get(airflow_api, path, user=None).status_code == 401, path
        bad = get(airflow_api, path, user=None, headers={"Authorization": "Bearer not.a.token"})
        assert bad.status_code == 403, path
        assert get(airflow_api, path, user="nobody").status_code == 403, path
        for user in ("admin", "viewer"):
            answer = get(airflow_api, path, user=user)
            assert answer.status_code == 200, (path, user, answer.text)
        # the UI's session cookie is a credential too
        cookie = airflow_api.client.get(PREFIX + path, cookies={"_token": airflow_api.token("viewer")})
        assert cookie.status_code == 200, path
        airflow_api.client.cookies.clear()
    for anonymous in ("/docs", "/redoc", "/openapi.json"):
        assert get(airflow_api, anonymous).status_code == 404


def test_a_browser_without_a_session_is_sent_to_the_login_page(airflow_api, ledger):
    for path in ("/", "/runs/healthimaging_bulk_copy/manual__1", "/static/index.html"):
        answer = get(airflow_api, path, user=None, headers={"Accept": "text/html,application/xhtml+xml"})
        assert answer.status_code in (302, 307), path
        target = urlparse(answer.headers["location"])
        assert target.path == "/auth/login" and parse_qs(target.query)["next"] == [PREFIX + path]
    api = get(airflow_api, "/api/runs", user=None, headers={"Accept": "text/html"})
    assert api.status_code == 401
    page = get(airflow_api, "/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # the static route serves the static folder only
    for outside in ("/static/%2e%2e/app.py", "/static/..%2Fapp.py", "/static/%2e%2e/%2e%2e/ledger.py"):
        assert get(airflow_api, outside).status_code == 404, outside
    assert get(airflow_api, "/api/summary").headers["cache-control"] == "no-store"


def test_the_views_of_real_runs(airflow_api, bulk_dag, ledger, emulator_connection, tmp_path):
    datastore_id, a, b, c, run1, run2 = copy_runs(bulk_dag, ledger, emulator_connection, tmp_path)
    base = f"/api/runs/{BULK_DAG_ID}/{run1.run_id}"

    assert get(airflow_api, "/api/ledger").json() == {
        "ok": True,
        "source": "connection healthimaging_ledger",
        "backend": "sqlite",
        "message": None,
    }

    listed = get(airflow_api, "/api/runs").json()["runs"]
    assert [(r["dag_id"], r["run_id"]) for r in listed] == [(BULK_DAG_ID, run2.run_id), (BULK_DAG_ID, run1.run_id)]
    one = listed[1]
    assert set(one["counts"]) == COUNT_KEYS
    assert one["counts"] == dict.fromkeys(COUNT_KEYS, 0) | {"succeeded": 2, "failed": 1, "rejected": 1}
    assert one["rows"] == 4 and one["accounted"] == 4 and one["active"] is False
    assert one["manifest_uri"] == str(tmp_path / "first.csv") and len(one["manifest_sha256"]) == 64
    assert one["airflow_url"] == f"/dags/{BULK_DAG_ID}/runs/{run1.run_id}"
    report = run1.report
    assert one["failure_percent"] == report["failurePercent"] == pytest.approx(33.333)
    assert one["copies_per_minute"] == pytest.approx(60 * report["throughput"]["copiesPerSecond"], rel=1e-3)
    assert one["started_at"] <= one["updated_at"] <= time.time()

    asked = time.time()
    detail = get(airflow_api, base).json()
    answered = time.time()
    assert {k: detail[k] for k in one} | {"airflow_state": None} == one | {"airflow_state": None}
    assert detail["airflow_state"] == "success"
    assert detail["in_flight_by_datastore"] == [] and detail["eta_seconds"] == 0.0
    assert detail["quota_copies_per_minute"] == 50 * 60  # the run's copies_per_second
    assert detail["tolerated_failure_percent"] == 50.0 and detail["over_tolerance"] is False
    assert detail["manifests"] == [{"uri": one["manifest_uri"], "sha256": one["manifest_sha256"], "rows": 4}]
    assert detail["elapsed_seconds"] > 0
    # The run is younger than the 5-minute window: its recent rate is its 3 completions over its own age.
    first_sent = detail["first_submitted_at"]
    assert asked - first_sent - 0.001 <= detail["recent_window_seconds"] <= answered - first_sent + 0.001  # rounded
    assert detail["recent_copies_per_minute"] == pytest.approx(60 * 3 / detail["recent_window_seconds"], rel=1e-3)
    assert get(airflow_api, f"/api/runs/{BULK_DAG_ID}/no-such-run").status_code == 404
    assert get(airflow_api, f"/api/runs/{BULK_DAG_ID}/no-such-run/failures").status_code == 404

    throughput = get(airflow_api, base + "/throughput?bucket_seconds=1").json()
    assert throughput["bucket_seconds"] == 1 and throughput["quota_per_bucket"] == 50
    assert sum(p["completed"] for p in throughput["points"]) == 3  # succeeded and failed
    assert all(p["t"] == int(p["t"]) for p in throughput["points"])
    assert throughput["attempts_per_row"] == {"1": 2}  # the missing source fails before any send
    assert throughput["throttled_resends"] == sum(r["throttles"] for r in run1.rows)

    latency = get(airflow_api, base + "/latency").json()
    expected = report["latencySeconds"]
    assert latency == {"count": 2, **expected} and latency["p50"] > 0

    failures = get(airflow_api, base + "/failures").json()
    codes = {g["error_code"]: g for g in failures["groups"]}
    assert set(codes) == set(report["errors"]) and {g["count"] for g in failures["groups"]} == {1}
    failed_row = run1.row(3)
    group = codes[failed_row["error_code"]]
    assert group["sample_rows"] == [3] and group["sample_message"] == failed_row["message"]
    assert group["first_seen"] <= group["last_seen"]
    assert codes[run1.row(4)["error_code"]]["sample_rows"] == [4]
    assert failures["failure_percent"] == one["failure_percent"] and failures["tolerated_failure_percent"] == 50.0
    assert failures["over_tolerance"] is False

    rows = get(airflow_api, base + "/failed-rows").json()["rows"]
    assert [(r["row_number"], r["status"]) for r in rows] == [(3, "failed"), (4, "rejected")]
    assert set(rows[0]) >= {"label", "datastore_id", "source_image_set_id", "source_version_id", "error_code"}
    assert rows[0]["source_image_set_id"] == MISSING and rows[0]["message"] == failed_row["message"]
    download = get(airflow_api, base + "/failed-rows?format=csv")
    assert download.headers["content-disposition"].startswith("attachment; filename=")
    assert download.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["row_number"] for r in table] == ["3", "4"] and table[0]["source_image_set_id"] == MISSING

    # lineage: by source, by destination, by label, by copy key; then C traced back to A
    by_source = get(airflow_api, f"/api/lineage?q={a}").json()["matches"]
    assert [(m["run_id"], m["row_number"], m["destination_image_set_id"]) for m in by_source] == [(run1.run_id, 1, b)]
    assert by_source[0]["status"] == "succeeded" and by_source[0]["verified"] is True
    assert by_source[0]["destination_image_set_arn"] and by_source[0]["destination_version_id"]
    by_b = get(airflow_api, f"/api/lineage?q={b}").json()["matches"]
    assert {(m["run_id"], m["source_image_set_id"], m["destination_image_set_id"]) for m in by_b} == {
        (run1.run_id, a, b),
        (run2.run_id, b, c),
    }
    assert [m["run_id"] for m in get(airflow_api, "/api/lineage?q=copy B").json()["matches"]] == [run2.run_id]
    key = by_source[0]["copy_key"]
    assert key and [m["row_number"] for m in get(airflow_api, "/api/lineage", params={"q": key}).json()["matches"]]
    assert get(airflow_api, "/api/lineage?q=nothing-like-it").json() == {"matches": []}
    chain = get(airflow_api, f"/api/lineage/trace?datastore_id={datastore_id}&image_set_id={c}").json()["chain"]
    assert [(m["source_image_set_id"], m["destination_image_set_id"], m["run_id"]) for m in chain] == [
        (b, c, run2.run_id),
        (a, b, run1.run_id),
    ]
    assert get(airflow_api, f"/api/lineage/trace?datastore_id={datastore_id}&image_set_id={a}").json() == {"chain": []}

    summary = get(airflow_api, "/api/summary").json()
    assert summary == {**summary, "in_flight": 0, "succeeded_today": 3, "failed_today": 1, "runs_in_progress": 0}
    assert get(airflow_api, "/api/attention").json() == {"threshold_seconds": 900.0, "rows": []}

    # a row stuck in submitted for an hour needs attention (and makes its run active)
    with ledger.engine.begin() as db:
        db.execute(
            copies.update()
            .where(copies.c.run_id == run2.run_id, copies.c.row_number == 1)
            .values(status="submitted", updated_at=time.time() - 3600, claim="engine-gone", completed_at=None)
        )
    attention = get(airflow_api, "/api/attention?older_than_seconds=600").json()
    assert attention["threshold_seconds"] == 600
    assert [(r["run_id"], r["row_number"], r["status"], r["claim"]) for r in attention["rows"]] == [
        (run2.run_id, 1, "submitted", "engine-gone")
    ]
    stuck = attention["rows"][0]
    assert stuck["source_image_set_id"] == b and stuck["datastore_id"] == datastore_id and stuck["since"] > 0
    assert get(airflow_api, "/api/attention?older_than_seconds=7200").json()["rows"] == []
    run2_detail = get(airflow_api, f"/api/runs/{BULK_DAG_ID}/{run2.run_id}").json()
    assert run2_detail["active"] is True and run2_detail["in_flight_by_datastore"] == [
        {"datastore_id": datastore_id, "in_flight": 1}
    ]
    assert get(airflow_api, "/api/summary").json()["in_flight"] == 1

    # a user who may not read the bulk-copy DAGs sees none of it
    assert get(airflow_api, "/api/runs", user="outsider").json() == {"runs": []}
    assert get(airflow_api, f"/api/lineage?q={b}", user="outsider").json() == {"matches": []}
    trace = f"/api/lineage/trace?datastore_id={datastore_id}&image_set_id={c}"
    assert get(airflow_api, trace, user="outsider").json() == {"chain": []}
    assert get(airflow_api, "/api/attention?older_than_seconds=0", user="outsider").json()["rows"] == []
    assert get(airflow_api, "/api/summary", user="outsider").json()["in_flight"] == 0
    for path in (base, base + "/failures", base + "/failed-rows", f"/runs/{BULK_DAG_ID}/{run1.run_id}"):
        assert get(airflow_api, path, user="outsider").status_code == 403, path


def test_a_ledger_on_postgresql_found_as_a_stored_connection(
    airflow_api, bulk_dag, emulator_connection, tmp_path, monkeypatch
):
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    try:
        ledger = Ledger(engine_for(POSTGRES_URL))
    except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has it
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    monkeypatch.setenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", json.dumps(POSTGRES))  # the workers' view of it
    datastore_id, ids = seed(emulator_connection, 1)
    manifest = write_manifest(
        tmp_path / "pg.csv",
        [{"source_image_set_id": ids[0], "label": "pg copy"}, {"source_image_set_id": MISSING, "label": "missing"}],
    )
    run = run_dag(bulk_dag, bulk_conf(tmp_path, manifest, datastore_id, tolerated_failure_percent=100), ledger)
    # the API server reads the connection stored in the metadata database, not the environment
    monkeypatch.delenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER")
    with create_session() as session:
        session.add(Connection(conn_id="healthimaging_ledger", **POSTGRES))
    try:
        assert get(airflow_api, "/api/ledger").json() == {
            "ok": True,
            "source": "connection healthimaging_ledger",
            "backend": "postgresql",
            "message": None,
        }
        listed = {r["run_id"]: r for r in get(airflow_api, "/api/runs?limit=500").json()["runs"]}
        assert listed[run.run_id]["counts"]["succeeded"] == 1 and listed[run.run_id]["counts"]["failed"] == 1
        base = f"/api/runs/{BULK_DAG_ID}/{run.run_id}"
        assert get(airflow_api, base).json()["accounted"] == 2
        throughput = get(airflow_api, base + "/throughput?bucket_seconds=7").json()
        assert sum(p["completed"] for p in throughput["points"]) == 2
        assert all(p["t"] % 7 == 0 for p in throughput["points"])
        assert [g["count"] for g in get(airflow_api, base + "/failures").json()["groups"]] == [1]
        assert get(airflow_api, base + "/latency").json()["count"] == 1
        assert get(airflow_api, f"/api/lineage?q={ids[0]}").json()["matches"][0]["run_id"] == run.run_id
        assert get(airflow_api, "/api/summary").status_code == 200
    finally:
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == "healthimaging_ledger").delete()
        with ledger.engine.begin() as db:
            db.execute(copies.delete().where(copies.c.datastore_id == datastore_id))


def test_the_legacy_connection_and_the_default_file(airflow_api, airflow_home, tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", raising=False)
    legacy = tmp_path / "legacy.sqlite3"
    monkeypatch.setenv("AIRFLOW_CONN_HEALTHIMAGING_LINEAGE", json.dumps({"conn_type": "sqlite", "host": str(legacy)}))
    assert get(airflow_api, "/api/ledger").json()["source"] == "connection healthimaging_lineage"
    monkeypatch.delenv("AIRFLOW_CONN_HEALTHIMAGING_LINEAGE")
    default = airflow_home / "healthimaging_ledger.sqlite3"
    engine_for(f"sqlite:///{default}")
    try:
        assert get(airflow_api, "/api/ledger").json() == {
            "ok": True,
            "source": f"default SQLite file {default}",
            "backend": "sqlite",
            "message": None,
        }
        assert get(airflow_api, "/api/runs").json() == {"runs": []}
    finally:
        default.unlink()


@pytest.mark.parametrize("route", [r for r in API if r != "/api/ledger"])
def test_a_missing_ledger_is_a_503_that_says_what_to_do(airflow_api, airflow_home, monkeypatch, route):
    monkeypatch.delenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_HEALTHIMAGING_LINEAGE", raising=False)
    assert not (airflow_home / "healthimaging_ledger.sqlite3").exists()
    path = route.format(dag_id=BULK_DAG_ID, run_id="r", datastore_id="d" * 32, image_set_id="e" * 32)
    answer = get(airflow_api, path)
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["error"] == "ledger_unavailable"
    assert "'healthimaging_ledger'" in body["detail"] and "Admin > Connections" in body["detail"]
    status = get(airflow_api, "/api/ledger")
    assert (
        status.status_code == 503
        and status.json()["ok"] is False
        and "healthimaging_ledger" in status.json()["message"]
    )


@pytest.mark.parametrize(
    "connection",
    [
        {"conn_type": "postgres", "host": "127.0.0.1", "port": 1, "login": "postgres", "schema": "test"},
        {"conn_type": "postgres", "host": "no-such-host.invalid", "port": 5432, "login": "postgres", "schema": "t"},
    ],
    ids=["port-closed", "bad-host"],
)
def test_an_unreachable_ledger_is_a_503_naming_the_connection(airflow_api, monkeypatch, connection):
    monkeypatch.setenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", json.dumps({**connection, "password": "s3cret"}))
    for path in ("/api/runs", "/api/summary", f"/api/runs/{BULK_DAG_ID}/r/failures", "/api/ledger"):
        answer = get(airflow_api, path)
        assert answer.status_code == 503, answer.text
        text = answer.text
        assert "connection healthimaging_ledger" in text and "does not answer" in text and connection["host"] in text
        assert "s3cret" not in text
    assert get(airflow_api, "/api/ledger").json()["ok"] is False
