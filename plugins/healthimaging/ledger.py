"""The copy ledger: a queryable record of every manifest row of every run, source → destination.

A SQL table through SQLAlchemy on the Airflow connection ``healthimaging_lineage`` (PostgreSQL or
SQLite); without that connection, a SQLite file under ``AIRFLOW_HOME``. One row per manifest row per
run, updated at each state change; indexed for what a dashboard asks (a run's rows by status, a
source's copies, recent failures) and for resuming (a copy key already copied).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

CONNECTION_ID = "healthimaging_lineage"
DEFAULT_SQLITE_NAME = "healthimaging_ledger.sqlite3"

#: Row statuses. ``pending``, ``submitting`` (claimed; the copy may have been sent) and ``submitted``
#: (accepted, running) are in progress; the others are final.
PENDING, SUBMITTING, SUBMITTED = "pending", "submitting", "submitted"
SUCCEEDED, FAILED, REJECTED, SKIPPED, PLANNED = "succeeded", "failed", "rejected", "skipped", "planned"
IN_PROGRESS_STATUSES = (PENDING, SUBMITTING, SUBMITTED)
IN_FLIGHT_STATUSES = (SUBMITTING, SUBMITTED)
FINAL_STATUSES = (SUCCEEDED, FAILED, REJECTED, SKIPPED, PLANNED)

metadata = sa.MetaData()

copies = sa.Table(
    "healthimaging_copy_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("manifest_uri", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("row_number", sa.Integer, nullable=False),
    sa.Column("label", sa.String(256)),
    sa.Column("datastore_id", sa.String(32)),
    sa.Column("source_image_set_id", sa.String(32)),
    sa.Column("source_version_id", sa.String(20)),
    sa.Column("destination_image_set_id", sa.String(32)),
    sa.Column("destination_version_id", sa.String(20)),
    sa.Column("destination_image_set_arn", sa.Text),
    sa.Column("copy_kind", sa.String(16)),
    sa.Column("force", sa.Boolean, nullable=False, default=False),
    sa.Column("promote_to_primary", sa.Boolean, nullable=False, default=False),
    sa.Column("copy_key", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(128)),
    sa.Column("message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("verified", sa.Boolean),
    sa.Column("updated_at", sa.Float, nullable=False),
    # execution state of the bulk-copy engine
    sa.Column("batch", sa.Integer),
    sa.Column("request_json", sa.Text),  # the validated manifest row
    sa.Column("plan_json", sa.Text),  # the resolved CopyPlan, stored before the copy is sent
    sa.Column("claim", sa.String(64)),  # which engine instance holds the row
    sa.Column("claimed_at", sa.Float),
    sa.Column("next_poll_at", sa.Float),
    sa.UniqueConstraint("dag_id", "run_id", "manifest_sha256", "row_number", name="uq_healthimaging_ledger_run_row"),
    sa.Index("ix_healthimaging_ledger_run_status", "dag_id", "run_id", "status"),
    sa.Index("ix_healthimaging_ledger_source", "datastore_id", "source_image_set_id"),
    sa.Index("ix_healthimaging_ledger_destination", "datastore_id", "destination_image_set_id"),
    sa.Index("ix_healthimaging_ledger_copy_key", "copy_key", "status"),
    sa.Index("ix_healthimaging_ledger_status_completed", "status", "completed_at"),
    sa.Index("ix_healthimaging_ledger_run_batch", "dag_id", "run_id", "batch", "status"),
    sa.Index("ix_healthimaging_ledger_in_flight", "status", "datastore_id"),
)

manifests = sa.Table(
    "healthimaging_manifests",
    metadata,
    sa.Column("manifest_uri", sa.Text, primary_key=True),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("taken_at", sa.Float, nullable=False),
)


def default_sqlite_path() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / DEFAULT_SQLITE_NAME


def url_from_connection(conn: Any) -> URL | str:
    """A SQLAlchemy URL for an Airflow connection (postgres or sqlite, or an explicit extra ``sqlalchemy_url``)."""
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    conn_type = (conn.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        return URL.create("postgresql+psycopg2", username=conn.login or None, password=conn.password or None,
                          host=conn.host or None, port=conn.port or None, database=conn.schema or None)
    if conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    raise ValueError(f"connection {CONNECTION_ID!r} has type {conn.conn_type!r}; use postgres or sqlite, "
                     "or set extra.sqlalchemy_url")


def resolve_url(conn_id: str = CONNECTION_ID) -> URL | str:
    """The ledger's database: the Airflow connection if it exists, else a SQLite file under AIRFLOW_HOME."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:  # not defined: the documented default applies
        return f"sqlite:///{default_sqlite_path()}"
    return url_from_connection(conn)


_engines: dict[str, Engine] = {}


def engine_for(url: URL | str) -> Engine:
    """One engine per URL per process, with the ledger's tables created if missing."""
    key = str(url)
    if key not in _engines:
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        metadata.create_all(engine)
        _add_missing_columns(engine)
        _engines[key] = engine
    return _engines[key]


def _add_missing_columns(engine: Engine) -> None:
    """Bring a ledger created by an older version up to date: columns are only ever added, nullable."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        with engine.begin() as db:
            for column in missing:
                kind = column.type.compile(dialect=engine.dialect)
                db.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Ledger:
    """Reads and writes the ledger for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_airflow(cls, conn_id: str = CONNECTION_ID) -> Ledger:
        return cls(engine_for(resolve_url(conn_id)))

    def record_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows (one dict per manifest row, ledger column names); existing ones are left alone."""
        now = time.time()
        defaults = {"attempts": 0, "force": False, "promote_to_primary": False}
        batch = [{**defaults, **{k: v for k, v in row.items() if v is not None or k not in defaults}, "updated_at": now}
                 for row in rows]
        if not batch:
            return 0
        columns = sorted({key for row in batch for key in row})
        batch = [{column: row.get(column, defaults.get(column)) for column in columns} for row in batch]
        with self.engine.begin() as db:
            existing = {
                r.row_number
                for r in db.execute(sa.select(copies.c.row_number).where(
                    copies.c.dag_id == batch[0]["dag_id"], copies.c.run_id == batch[0]["run_id"],
                    copies.c.manifest_sha256 == batch[0]["manifest_sha256"]))
            }
            fresh = [row for row in batch if row["row_number"] not in existing]
            for start in range(0, len(fresh), 5000):
                db.execute(copies.insert(), fresh[start:start + 5000])
        return len(fresh)

    def update(self, dag_id: str, run_id: str, manifest_sha256: str, row_number: int, **changes: Any) -> None:
        """Change one row (a state change)."""
        changes["updated_at"] = time.time()
        with self.engine.begin() as db:
            db.execute(copies.update().where(
                copies.c.dag_id == dag_id, copies.c.run_id == run_id, copies.c.manifest_sha256 == manifest_sha256,
                copies.c.row_number == row_number).values(**changes))

    def succeeded_copy_keys(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """For each copy key already copied successfully (any run), the ledger row that did it."""
        keys = list(keys)
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as db:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                query = sa.select(copies).where(copies.c.copy_key.in_(chunk), copies.c.status == SUCCEEDED)
                for row in db.execute(query).mappings():
                    found.setdefault(row["copy_key"], dict(row))
        return found

    def run_rows(self, dag_id: str, run_id: str, manifest_sha256: str | None = None) -> list[dict[str, Any]]:
        """A run's rows (of one manifest, when given), in manifest order."""
        conditions = [copies.c.dag_id == dag_id, copies.c.run_id == run_id]
        if manifest_sha256:
            conditions.append(copies.c.manifest_sha256 == manifest_sha256)
        with self.engine.connect() as db:
            query = sa.select(copies).where(*conditions).order_by(copies.c.manifest_sha256, copies.c.row_number)
            return [dict(r) for r in db.execute(query).mappings()]

    def status_counts(self, dag_id: str, run_id: str, manifest_sha256: str | None = None) -> dict[str, int]:
        """A run's row counts by status (of one manifest, when given)."""
        conditions = [copies.c.dag_id == dag_id, copies.c.run_id == run_id]
        if manifest_sha256:
            conditions.append(copies.c.manifest_sha256 == manifest_sha256)
        with self.engine.connect() as db:
            query = sa.select(copies.c.status, sa.func.count()).where(*conditions).group_by(copies.c.status)
            return {status: count for status, count in db.execute(query)}

    def take_manifest(self, manifest_uri: str, manifest_sha256: str, dag_id: str, run_id: str) -> bool:
        """Claim a manifest for a run; False if some run already took it (each manifest is copied once)."""
        with self.engine.begin() as db:
            taken = db.execute(sa.select(manifests.c.run_id).where(manifests.c.manifest_uri == manifest_uri)).first()
            if taken is not None:
                return taken.run_id == run_id
            db.execute(manifests.insert().values(manifest_uri=manifest_uri, manifest_sha256=manifest_sha256,
                                                 dag_id=dag_id, run_id=run_id, taken_at=time.time()))
        return True
