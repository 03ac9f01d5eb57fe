"""The dashboard's FastAPI app, mounted by the plugin at ``/healthimaging``: pages, static files, JSON API.

Every route depends on :func:`healthimaging.bulk.dashboard.access.reader` (no anonymous route: no
``/docs``, ``/redoc`` or ``/openapi.json`` either). Times are epoch seconds. A ledger that is missing or
does not answer gives 503 ``{"detail": <message>, "error": "ledger_unavailable", ...}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.engine import Connection

from healthimaging.bulk.dashboard import ledger_source, queries
from healthimaging.bulk.dashboard.access import LoginRequired, Reader, page_reader, readable_dag_ids, reader

STATIC = Path(__file__).with_name("static")
#: The window of the "recent" completion rate that the ETA uses.
RECENT_SECONDS = 300.0
NO_STORE = {"Cache-Control": "no-store"}


class RunNotFound(HTTPException):
    def __init__(self, dag_id: str, run_id: str) -> None:
        super().__init__(404, f"no bulk-copy run {run_id!r} of DAG {dag_id!r} in the ledger")


# ------------------------------------------------------------------------------------------ the ledger


@contextmanager
def ledger_db() -> Iterator[tuple[Connection, ledger_source.LedgerSource]]:
    """A read connection to the ledger; :class:`ledger_source.LedgerUnavailable` when there is none."""
    source = ledger_source.resolve()
    engine = ledger_source.engine(source)
    try:
        with engine.connect() as db:
            yield db, source
    except sa.exc.OperationalError as exc:
        raise ledger_source.unreachable(source, exc) from None


# ------------------------------------------------------------------------------------------ the DAG run


def dag_run_info(dag_id: str, run_id: str) -> dict[str, Any] | None:
    """The Airflow run's state, times and params (the DAG's Param defaults under its conf), or None."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        found = session.execute(
            sa.select(DagRun.state, DagRun.start_date, DagRun.end_date, DagRun.conf).where(
                DagRun.dag_id == dag_id, DagRun.run_id == run_id
            )
        ).first()
    if found is None:
        return None
    params = {**dag_param_defaults(dag_id), **(found.conf or {})}
    return {
        "state": str(found.state) if found.state is not None else None,
        "start_date": found.start_date.timestamp() if found.start_date else None,
        "end_date": found.end_date.timestamp() if found.end_date else None,
        "params": params,
    }


def dag_run_states(keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    if not keys:
        return {}
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    wanted = set(keys)
    with create_session() as session:
        found = session.execute(
            sa.select(DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date).where(
                DagRun.dag_id.in_(sorted({d for d, _ in keys})), DagRun.run_id.in_(sorted({r for _, r in keys}))
            )
        ).all()
    return {
        (r.dag_id, r.run_id): {
            "state": str(r.state) if r.state is not None else None,
            "start_date": r.start_date.timestamp() if r.start_date else None,
            "end_date": r.end_date.timestamp() if r.end_date else None,
        }
        for r in found
        if (r.dag_id, r.run_id) in wanted
    }


_defaults: dict[str, tuple[float, dict[str, Any]]] = {}


def dag_param_defaults(dag_id: str) -> dict[str, Any]:
    """The DAG's Param values as its serialized version holds them (cached for a minute)."""
    cached = _defaults.get(dag_id)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    values: dict[str, Any] = {}
    try:
        from airflow.models.serialized_dag import SerializedDagModel

        dag = SerializedDagModel.get_dag(dag_id)
        if dag is not None:
            values = {key: dag.params[key] for key in dag.params}
    except Exception:  # a DAG that does not deserialize has no defaults to offer; the conf still applies
        values = {}
    _defaults[dag_id] = (time.monotonic(), values)
    return values


def _merge_airflow(run: dict[str, Any], airflow: dict[str, Any] | None) -> dict[str, Any]:
    run["airflow_state"] = airflow.get("state") if airflow else None
    if airflow and airflow.get("state") in ("running", "queued"):
        run["active"] = True
    if airflow and airflow.get("start_date"):
        run["started_at"] = min(run["started_at"] or airflow["start_date"], airflow["start_date"])
    run["ended_at"] = None if run["active"] else (airflow or {}).get("end_date") or run["updated_at"]
    return run


def public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


# ------------------------------------------------------------------------------------------ the app


def login_redirect(_request: Request, exc: LoginRequired) -> Response:
    return RedirectResponse(exc.login_url, status_code=302)


def ledger_unavailable(_request: Request, exc: ledger_source.LedgerUnavailable) -> Response:
    return JSONResponse(
        {"detail": exc.message, "error": "ledger_unavailable", "source": exc.source, "backend": exc.backend},
        status_code=503,
        headers=NO_STORE,
    )


def database_error(_request: Request, exc: sa.exc.DBAPIError) -> Response:
    first = str(exc.orig or exc).strip().splitlines()
    message = f"The copy ledger failed to answer: {first[0] if first else type(exc).__name__}."
    return JSONResponse({"detail": message, "error": "ledger_unavailable"}, status_code=503, headers=NO_STORE)


def page(name: str) -> Response:
    path = STATIC / name
    if path.is_file():
        return FileResponse(path, media_type="text/html", headers=NO_STORE)
    return HTMLResponse(
        f"<!doctype html><title>HealthImaging copies</title><p>The dashboard page <code>static/{name}</code> "
        "is missing from plugins/healthimaging/bulk/dashboard/.</p>",
        headers=NO_STORE,
    )


pages = APIRouter(dependencies=[Depends(page_reader)])
api = APIRouter(prefix="/api", dependencies=[Depends(reader)])


@pages.get("/", include_in_schema=False)
def index() -> Response:
    return page("index.html")


@pages.get("/runs/{dag_id}/{run_id}", include_in_schema=False)
def run_page(dag_id: str, run_id: str) -> Response:
    return page("run.html")


@pages.get("/static/{path:path}", include_in_schema=False)
def static(path: str) -> Response:
    root = STATIC.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "not found")
    return FileResponse(target, headers={"Cache-Control": "private, max-age=60"})


@api.get("/ledger")
def ledger_status() -> Response:
    try:
        source = ledger_source.resolve()
    except ledger_source.LedgerUnavailable as exc:
        return JSONResponse(
            {"ok": False, "source": exc.source, "backend": exc.backend, "message": exc.message},
            status_code=503,
            headers=NO_STORE,
        )
    try:
        with ledger_db() as (db, _):
            db.execute(sa.select(sa.literal(1))).scalar_one()
    except ledger_source.LedgerUnavailable as exc:
        return JSONResponse(
            {"ok": False, "source": source.source, "backend": source.backend, "message": exc.message},
            status_code=503,
            headers=NO_STORE,
        )
    return JSONResponse({"ok": True, "source": source.source, "backend": source.backend, "message": None})


@api.get("/runs")
def runs(user: Reader, limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    dag_ids = readable_dag_ids(user)
    with ledger_db() as (db, _):
        found = queries.runs(db, dag_ids, limit)
    states = dag_run_states([(r["dag_id"], r["run_id"]) for r in found])
    return {"runs": [public(_merge_airflow(r, states.get((r["dag_id"], r["run_id"])))) for r in found]}


def _one_run(db: Connection, user: Any, dag_id: str, run_id: str) -> dict[str, Any]:
    found = queries.run(db, readable_dag_ids(user), dag_id, run_id)
    if found is None:
        raise RunNotFound(dag_id, run_id)
    return found


def _settings(db: Connection, params: dict[str, Any]) -> tuple[float | None, float]:
    """(copies per second, tolerated failure percent) of a run: its params, else the shared bucket's rate."""
    from healthimaging.bulk.settings import BulkCopySettings, BulkRunOptions

    try:
        settings = BulkCopySettings.from_params(params)
        tolerated = BulkRunOptions.from_params(params).tolerated_failure_percent
    except (TypeError, ValueError):
        settings, tolerated = BulkCopySettings(), 0.0
    rate = settings.copies_per_second if "copies_per_second" in params else None
    if rate is None:
        rate = queries.bucket_rate(db, settings.rate_limit_name)
    return rate, tolerated


@api.get("/runs/{dag_id}/{run_id}")
def run_detail(user: Reader, dag_id: str, run_id: str) -> dict[str, Any]:
    now = time.time()
    airflow = dag_run_info(dag_id, run_id)
    with ledger_db() as (db, _):
        run = _merge_airflow(_one_run(db, user, dag_id, run_id), airflow)
        in_flight = queries.in_flight_by_datastore(db, dag_id, run_id)
        recent = queries.completed_since(db, dag_id, run_id, now - RECENT_SECONDS)
        rate, tolerated = _settings(db, (airflow or {}).get("params", {}))
    # The window is the last RECENT_SECONDS, or the whole run while it is younger: a run 28 s in that has
    # finished 8 copies goes at 17 a minute, not at the 1.6 that 8 copies in five minutes would be.
    first_sent = run.get("first_submitted_at")
    window = min(RECENT_SECONDS, max(1.0, now - first_sent)) if first_sent else RECENT_SECONDS
    recent_per_minute = round(60.0 * recent / window, 3)
    quota_per_minute = round(rate * 60.0, 3) if rate else None
    remaining = run["rows"] - run["accounted"]
    pace = min(p for p in (recent_per_minute, quota_per_minute) if p is not None) if recent_per_minute else None
    if remaining == 0:
        eta = 0.0
    elif pace:
        eta = round(60.0 * remaining / pace, 1)
    else:
        eta = None
    started = run["started_at"]
    end = now if run["active"] else (run["ended_at"] or now)
    return {
        **public(run),
        "in_flight_by_datastore": in_flight,
        "elapsed_seconds": round(end - started, 3) if started else None,
        "eta_seconds": eta,
        "recent_copies_per_minute": recent_per_minute,
        "recent_window_seconds": round(window, 3),
        "quota_copies_per_minute": quota_per_minute,
        "tolerated_failure_percent": tolerated,
        "over_tolerance": run["failure_percent"] > tolerated,
    }


@api.get("/runs/{dag_id}/{run_id}/throughput")
def run_throughput(
    user: Reader, dag_id: str, run_id: str, bucket_seconds: float = Query(60.0, ge=1, le=86400)
) -> dict[str, Any]:
    airflow = dag_run_info(dag_id, run_id)
    with ledger_db() as (db, _):
        _one_run(db, user, dag_id, run_id)
        points = queries.throughput(db, dag_id, run_id, bucket_seconds)
        attempts = queries.attempts_per_row(db, dag_id, run_id)
        throttled = queries.throttled_resends(db, dag_id, run_id)
        rate, _ = _settings(db, (airflow or {}).get("params", {}))
    return {
        "bucket_seconds": bucket_seconds,
        "points": points,
        "quota_per_bucket": round(rate * bucket_seconds, 3) if rate else None,
        "attempts_per_row": attempts,
        "throttled_resends": throttled,
    }


@api.get("/runs/{dag_id}/{run_id}/latency")
def run_latency(user: Reader, dag_id: str, run_id: str) -> dict[str, Any]:
    """report.json's latency percentiles (report.summarize computes them), seconds from submit to completion."""
    from healthimaging.bulk.report import summarize

    with ledger_db() as (db, _):
        _one_run(db, user, dag_id, run_id)
        rows = queries.latency_rows(db, dag_id, run_id)
    latency = summarize(rows, dag_id=dag_id, run_id=run_id, manifest_uri="", manifest_sha256="", total_rows=len(rows))
    return {"count": len(rows), **latency["latencySeconds"]}


@api.get("/runs/{dag_id}/{run_id}/failures")
def run_failures(user: Reader, dag_id: str, run_id: str) -> dict[str, Any]:
    airflow = dag_run_info(dag_id, run_id)
    with ledger_db() as (db, _):
        run = _one_run(db, user, dag_id, run_id)
        groups = queries.failure_groups(db, dag_id, run_id)
        _, tolerated = _settings(db, (airflow or {}).get("params", {}))
    return {
        "groups": groups,
        "failure_percent": run["failure_percent"],
        "tolerated_failure_percent": tolerated,
        "over_tolerance": run["failure_percent"] > tolerated,
    }


@api.get("/runs/{dag_id}/{run_id}/failed-rows")
def run_failed_rows(
    user: Reader, dag_id: str, run_id: str, format: str = Query("json", pattern="^(json|csv)$")
) -> Response:
    from healthimaging.bulk.report import to_csv

    with ledger_db() as (db, _):
        _one_run(db, user, dag_id, run_id)
        rows = queries.failed_rows(db, dag_id, run_id)
    if format == "csv":
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{dag_id}-{run_id}-failed.csv")
        return Response(
            to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"', **NO_STORE},
        )
    keep = ("row_number", "label", "datastore_id", "source_image_set_id", "source_version_id", "status")
    fields = (*keep, "error_code", "message", "attempts")
    return JSONResponse({"rows": [{k: r[k] for k in fields} for r in rows]}, headers=NO_STORE)


@api.get("/lineage")
def lineage(user: Reader, q: str = Query(..., min_length=1, max_length=1024)) -> dict[str, Any]:
    with ledger_db() as (db, _):
        return {"matches": queries.lineage_search(db, readable_dag_ids(user), q.strip())}


@api.get("/lineage/trace")
def lineage_trace(
    user: Reader,
    datastore_id: str = Query(..., min_length=1, max_length=64),
    image_set_id: str = Query(..., min_length=1, max_length=64),
) -> dict[str, Any]:
    with ledger_db() as (db, _):
        return {"chain": queries.trace(db, readable_dag_ids(user), datastore_id, image_set_id)}


@api.get("/attention")
def attention(user: Reader, older_than_seconds: float = Query(900.0, ge=0)) -> dict[str, Any]:
    with ledger_db() as (db, _):
        rows = queries.stuck_rows(db, readable_dag_ids(user), time.time() - older_than_seconds)
    return {"threshold_seconds": older_than_seconds, "rows": rows}


@api.get("/summary")
def summary(user: Reader) -> dict[str, Any]:
    """For the home-page widget; "today" is since 00:00 UTC."""
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    with ledger_db() as (db, _):
        figures = queries.summary(db, readable_dag_ids(user), midnight)
    return {**figures, "today_since": midnight, "today_timezone": "UTC"}


def create_app() -> FastAPI:
    app = FastAPI(title="HealthImaging copies", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(LoginRequired, login_redirect)
    app.add_exception_handler(ledger_source.LedgerUnavailable, ledger_unavailable)
    app.add_exception_handler(sa.exc.DBAPIError, database_error)
    app.include_router(api)
    app.include_router(pages)

    @app.middleware("http")
    async def no_store(request: Request, call_next: Any) -> Response:
        """Figures change from one refresh to the next: no cache keeps an answer of the API."""
        response = await call_next(request)
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


app = create_app()
