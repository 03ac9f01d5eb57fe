"""The dashboard's read-only queries on the ledger (SQLAlchemy Core on ledger.py's tables).

Every figure of the run and failure views is aggregated in SQL (``GROUP BY``) on the rows of one run,
found through ``ix_healthimaging_ledger_run_status`` (dag_id, run_id, status); no view loads a run's rows
into Python except :func:`latencies` (one float per succeeded row, for report.summarize's percentiles).
The cross-run look-ups use the other indexes: a source or destination image set through
``ix_healthimaging_ledger_source`` / ``_destination`` (datastore_id, image set id; the data store ids
are read first so that the index's leading column is given), a copy key through
``ix_healthimaging_ledger_copy_key``, in-flight rows through ``ix_healthimaging_ledger_in_flight``
(status, datastore_id), today's outcomes through ``ix_healthimaging_ledger_status_completed``. A label
through ``ix_healthimaging_ledger_label`` (migration 0004); a look-up returns at most :data:`LINEAGE_LIMIT`
matches.

Every query takes the DAG ids the user may read and returns nothing of other DAGs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from healthimaging.bulk.ledger import (
    BUCKET_CEILING,
    FAILED,
    FINAL_STATUSES,
    IN_FLIGHT_STATUSES,
    IN_PROGRESS_STATUSES,
    REJECTED,
    SUCCEEDED,
    buckets,
    copies,
)
from healthimaging.bulk.report import CSV_COLUMNS, failure_percent

STATUSES = IN_PROGRESS_STATUSES + FINAL_STATUSES
COMPLETED_STATUSES = (SUCCEEDED, FAILED)
FAILURE_STATUSES = (FAILED, REJECTED)
LINEAGE_LIMIT = 200
TRACE_STEPS = 50
SAMPLE_ROWS = 5

LINEAGE_COLUMNS = (
    "dag_id",
    "run_id",
    "row_number",
    "label",
    "datastore_id",
    "source_image_set_id",
    "source_version_id",
    "destination_image_set_id",
    "destination_version_id",
    "destination_image_set_arn",
    "status",
    "completed_at",
    "verified",
    "copy_key",
)
#: The failed rows' download is the report's failed.csv: the same columns, the same spreadsheet-safe cells.
FAILED_ROW_COLUMNS = CSV_COLUMNS


def _readable(dag_ids: Collection[str]) -> sa.ColumnElement:
    return copies.c.dag_id.in_(sorted(dag_ids)) if dag_ids else sa.false()


def _run(dag_id: str, run_id: str) -> sa.ColumnElement:
    return sa.and_(copies.c.dag_id == dag_id, copies.c.run_id == run_id)


def _floor_div(db: Connection, column: sa.ColumnElement, divisor: float) -> sa.ColumnElement:
    """floor(column / divisor) in the database's dialect (SQLite's floor() needs its math extension)."""
    if db.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(column / divisor), sa.BigInteger)
    return sa.cast(column / divisor, sa.Integer)  # the ledger's times are positive: truncation is floor


# ------------------------------------------------------------------------------------------ runs


def _status_groups(db: Connection, condition: sa.ColumnElement) -> list[sa.Row]:
    """Per run, manifest and status: the count and the time bounds the run views need."""
    completed = sa.case((copies.c.status.in_(COMPLETED_STATUSES), copies.c.completed_at))
    query = (
        sa.select(
            copies.c.dag_id,
            copies.c.run_id,
            copies.c.manifest_uri,
            copies.c.manifest_sha256,
            copies.c.status,
            sa.func.count().label("n"),
            sa.func.min(copies.c.submitted_at).label("first_submitted"),
            sa.func.min(copies.c.updated_at).label("first_updated"),
            sa.func.max(copies.c.updated_at).label("last_updated"),
            sa.func.max(completed).label("last_completed"),
        )
        .where(condition)
        .group_by(copies.c.dag_id, copies.c.run_id, copies.c.manifest_uri, copies.c.manifest_sha256, copies.c.status)
    )
    return list(db.execute(query))


def _fold(groups: list[sa.Row]) -> dict[tuple[str, str], dict[str, Any]]:
    """Runs from their status groups: counts, manifests and the figures of report.summarize."""
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for g in groups:
        run = runs.setdefault(
            (g.dag_id, g.run_id),
            {
                "dag_id": g.dag_id,
                "run_id": g.run_id,
                "counts": dict.fromkeys(STATUSES, 0),
                "_manifests": {},
                "_first_submitted": None,
                "_first_updated": None,
                "updated_at": None,
                "_last_completed": None,
            },
        )
        run["counts"][g.status] = run["counts"].get(g.status, 0) + g.n
        manifest = run["_manifests"].setdefault(
            g.manifest_uri, {"uri": g.manifest_uri, "sha256": g.manifest_sha256, "rows": 0}
        )
        manifest["rows"] += g.n
        run["_first_submitted"] = _least(run["_first_submitted"], g.first_submitted)
        run["_first_updated"] = _least(run["_first_updated"], g.first_updated)
        run["updated_at"] = _greatest(run["updated_at"], g.last_updated)
        run["_last_completed"] = _greatest(run["_last_completed"], g.last_completed)
    for run in runs.values():
        counts = run["counts"]
        manifests = sorted(run.pop("_manifests").values(), key=lambda m: m["uri"])
        run["manifests"] = manifests
        run["manifest_uri"] = manifests[0]["uri"] if manifests else None
        run["manifest_sha256"] = manifests[0]["sha256"] if manifests else None
        run["rows"] = sum(counts.values())
        run["accounted"] = sum(counts[s] for s in FINAL_STATUSES)
        run["active"] = any(counts[s] for s in IN_PROGRESS_STATUSES)
        first_submitted = run.pop("_first_submitted")
        first_updated = run.pop("_first_updated")
        last_completed = run.pop("_last_completed")
        run["first_submitted_at"] = first_submitted
        run["last_completed_at"] = last_completed
        run["started_at"] = first_submitted if first_submitted is not None else first_updated
        # report.summarize's throughput (succeeded over first submit -> last completion) and failure share
        span = (last_completed - first_submitted) if first_submitted and last_completed else None
        run["copies_per_minute"] = round(60 * counts[SUCCEEDED] / span, 3) if span else None
        run["failure_percent"] = failure_percent(counts)
        run["airflow_url"] = f"/dags/{run['dag_id']}/runs/{run['run_id']}"
    return runs


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _greatest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def runs(db: Connection, dag_ids: Collection[str], limit: int = 50) -> list[dict[str, Any]]:
    """The runs of the readable DAGs, most recently updated first."""
    if not dag_ids:
        return []
    found = _fold(_status_groups(db, _readable(dag_ids)))
    ordered = sorted(found.values(), key=lambda r: (r["updated_at"] or 0, r["run_id"]), reverse=True)
    return ordered[:limit]


def run(db: Connection, dag_ids: Collection[str], dag_id: str, run_id: str) -> dict[str, Any] | None:
    """One run's figures, or None (no rows, or a DAG the user may not read)."""
    if dag_id not in dag_ids:
        return None
    found = _fold(_status_groups(db, _run(dag_id, run_id)))
    return found.get((dag_id, run_id))


def in_flight_by_datastore(db: Connection, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(copies.c.datastore_id, sa.func.count().label("n"))
        .where(_run(dag_id, run_id), copies.c.status.in_(IN_FLIGHT_STATUSES))
        .group_by(copies.c.datastore_id)
        .order_by(copies.c.datastore_id)
    )
    return [{"datastore_id": r.datastore_id, "in_flight": r.n} for r in db.execute(query)]


def completed_since(db: Connection, dag_id: str, run_id: str, since: float) -> int:
    query = sa.select(sa.func.count()).where(
        _run(dag_id, run_id), copies.c.status.in_(COMPLETED_STATUSES), copies.c.completed_at >= since
    )
    return db.execute(query).scalar_one()


def bucket_rate(db: Connection, name: str) -> float | None:
    """The configured rate (per second) of the shared token bucket ``name``, or None before its first use
    (its ceiling: the rate it sends at may be lower while the service throttles, see bulk/rate_limit.py)."""
    return db.execute(sa.select(BUCKET_CEILING).where(buckets.c.name == name)).scalar_one_or_none()


# ------------------------------------------------------------------------------------------ throughput, latency


def throughput(db: Connection, dag_id: str, run_id: str, bucket_seconds: float) -> list[dict[str, Any]]:
    """Completions (succeeded or failed) per time bucket, oldest first; ``t`` is the bucket's start."""
    slot = _floor_div(db, copies.c.completed_at, bucket_seconds).label("slot")
    query = (
        sa.select(slot, sa.func.count().label("n"))
        .where(_run(dag_id, run_id), copies.c.status.in_(COMPLETED_STATUSES), copies.c.completed_at.is_not(None))
        .group_by(slot)
        .order_by(slot)
    )
    return [{"t": float(r.slot) * bucket_seconds, "completed": r.n} for r in db.execute(query)]


def attempts_per_row(db: Connection, dag_id: str, run_id: str) -> dict[str, int]:
    """How many rows took 1, 2, ... CopyImageSet attempts (rows never attempted are left out)."""
    query = (
        sa.select(copies.c.attempts, sa.func.count().label("n"))
        .where(_run(dag_id, run_id), copies.c.attempts > 0)
        .group_by(copies.c.attempts)
        .order_by(copies.c.attempts)
    )
    return {str(r.attempts): r.n for r in db.execute(query)}


def throttled_resends(db: Connection, dag_id: str, run_id: str) -> int:
    """Throttled CopyImageSet sends of the run's rows, sent again (the ledger's ``throttles``, migration 0004)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(copies.c.throttles), 0)).where(_run(dag_id, run_id))
    return int(db.execute(query).scalar_one())


def latency_rows(db: Connection, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """(submitted_at, completed_at) of the run's succeeded rows, as rows report.summarize reads."""
    query = sa.select(copies.c.submitted_at, copies.c.completed_at).where(
        _run(dag_id, run_id),
        copies.c.status == SUCCEEDED,
        copies.c.submitted_at.is_not(None),
        copies.c.completed_at.is_not(None),
    )
    return [
        {"status": SUCCEEDED, "submitted_at": r.submitted_at, "completed_at": r.completed_at} for r in db.execute(query)
    ]


# ------------------------------------------------------------------------------------------ failures


def failure_groups(db: Connection, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Failed and rejected rows by error code: count, first / last seen, a sample message and rows."""
    code = sa.func.coalesce(copies.c.error_code, "Unknown")
    seen = sa.func.coalesce(copies.c.completed_at, copies.c.updated_at)
    condition = sa.and_(_run(dag_id, run_id), copies.c.status.in_(FAILURE_STATUSES))
    query = (
        sa.select(
            code.label("error_code"),
            sa.func.count().label("n"),
            sa.func.min(seen).label("first_seen"),
            sa.func.max(seen).label("last_seen"),
            sa.func.min(copies.c.message).label("sample_message"),
        )
        .where(condition)
        .group_by(code)
        .order_by(sa.func.count().desc(), code)
    )
    groups = [
        {
            "error_code": r.error_code,
            "count": r.n,
            "first_seen": r.first_seen,
            "last_seen": r.last_seen,
            "sample_message": r.sample_message,
            "sample_rows": [],
        }
        for r in db.execute(query)
    ]
    for group in groups:
        sample = (
            sa.select(copies.c.row_number)
            .where(condition, code == group["error_code"])
            .order_by(copies.c.row_number)
            .limit(SAMPLE_ROWS)
        )
        group["sample_rows"] = list(db.execute(sample).scalars())
    return groups


def failed_rows(db: Connection, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    columns = [copies.c[name] for name in FAILED_ROW_COLUMNS]
    query = (
        sa.select(*columns)
        .where(_run(dag_id, run_id), copies.c.status.in_(FAILURE_STATUSES))
        .order_by(copies.c.manifest_uri, copies.c.row_number)
    )
    return [dict(r._mapping) for r in db.execute(query)]


# ------------------------------------------------------------------------------------------ lineage


def _lineage(rows: Any) -> list[dict[str, Any]]:
    return [{name: r._mapping[name] for name in LINEAGE_COLUMNS} for r in rows]


def datastores(db: Connection) -> list[str]:
    """The data store ids in the ledger (an index-only scan of ix_healthimaging_ledger_source)."""
    query = sa.select(copies.c.datastore_id).where(copies.c.datastore_id.is_not(None)).distinct()
    return list(db.execute(query).scalars())


def lineage_search(db: Connection, dag_ids: Collection[str], q: str, limit: int = LINEAGE_LIMIT) -> list[dict]:
    """Rows whose source or destination image set id, label or copy key is exactly ``q``, newest first."""
    if not dag_ids or not q:
        return []
    stores = datastores(db)
    matches = [copies.c.label == q, copies.c.copy_key == q]
    if stores:
        in_stores = copies.c.datastore_id.in_(stores)
        matches += [
            sa.and_(in_stores, copies.c.source_image_set_id == q),
            sa.and_(in_stores, copies.c.destination_image_set_id == q),
        ]
    query = (
        sa.select(*[copies.c[name] for name in LINEAGE_COLUMNS])
        .where(_readable(dag_ids), sa.or_(*matches))
        .order_by(copies.c.updated_at.desc(), copies.c.id.desc())
        .limit(limit)
    )
    return _lineage(db.execute(query))


def producer(
    db: Connection, dag_ids: Collection[str], datastore_id: str, image_set_id: str, before: float | None
) -> dict[str, Any] | None:
    """The latest succeeded copy into ``image_set_id`` (completed before ``before``, when given)."""
    conditions = [
        _readable(dag_ids),
        copies.c.datastore_id == datastore_id,
        copies.c.destination_image_set_id == image_set_id,
        copies.c.status == SUCCEEDED,
    ]
    if before is not None:
        conditions.append(copies.c.completed_at <= before)
    query = (
        sa.select(*[copies.c[name] for name in LINEAGE_COLUMNS], copies.c.submitted_at)
        .where(*conditions)
        .order_by(copies.c.completed_at.desc(), copies.c.id.desc())
        .limit(1)
    )
    found = db.execute(query).first()
    if found is None:
        return None
    return {**_lineage([found])[0], "submitted_at": found.submitted_at}


def trace(db: Connection, dag_ids: Collection[str], datastore_id: str, image_set_id: str) -> list[dict[str, Any]]:
    """The copy that produced ``image_set_id``, the copy that produced its source, and so on."""
    chain: list[dict[str, Any]] = []
    seen = {image_set_id}
    before = None
    current = image_set_id
    for _ in range(TRACE_STEPS):
        step = producer(db, dag_ids, datastore_id, current, before)
        if step is None:
            break
        before = step.pop("submitted_at")
        chain.append(step)
        current = step["source_image_set_id"]
        if not current or current in seen:
            break
        seen.add(current)
    return chain


# ------------------------------------------------------------------------------------------ attention, summary


def stuck_rows(db: Connection, dag_ids: Collection[str], older_than: float, limit: int = 500) -> list[dict]:
    """Rows submitting / submitted whose last change is older than ``older_than`` (epoch seconds)."""
    if not dag_ids:
        return []
    query = (
        sa.select(
            copies.c.dag_id,
            copies.c.run_id,
            copies.c.row_number,
            copies.c.status,
            copies.c.datastore_id,
            copies.c.source_image_set_id,
            copies.c.destination_image_set_id,
            copies.c.updated_at.label("since"),
            copies.c.claim,
        )
        .where(copies.c.status.in_(IN_FLIGHT_STATUSES), copies.c.updated_at < older_than, _readable(dag_ids))
        .order_by(copies.c.updated_at, copies.c.id)
        .limit(limit)
    )
    return [dict(r._mapping) for r in db.execute(query)]


def summary(db: Connection, dag_ids: Collection[str], since: float) -> dict[str, int]:
    if not dag_ids:
        return {"in_flight": 0, "succeeded_today": 0, "failed_today": 0, "runs_in_progress": 0}
    readable = _readable(dag_ids)
    in_flight = db.execute(
        sa.select(sa.func.count()).where(copies.c.status.in_(IN_FLIGHT_STATUSES), readable)
    ).scalar_one()
    today = dict(
        db.execute(
            sa.select(copies.c.status, sa.func.count())
            .where(copies.c.status.in_(COMPLETED_STATUSES), copies.c.completed_at >= since, readable)
            .group_by(copies.c.status)
        ).all()
    )
    in_progress = sa.select(copies.c.dag_id, copies.c.run_id).where(copies.c.status.in_(IN_PROGRESS_STATUSES), readable)
    runs_in_progress = db.execute(
        sa.select(sa.func.count()).select_from(in_progress.distinct().subquery())
    ).scalar_one()
    return {
        "in_flight": in_flight,
        "succeeded_today": today.get(SUCCEEDED, 0),
        "failed_today": today.get(FAILED, 0),
        "runs_in_progress": runs_in_progress,
    }
