"""The copy ledger: a queryable record of every manifest row of every run, source → destination.

A SQL table through SQLAlchemy on the Airflow connection ``healthimaging_ledger`` (PostgreSQL or
SQLite); without that connection, a SQLite file under ``AIRFLOW_HOME``. One row per manifest row per
run, updated at each state change; indexed for what a dashboard asks (a run's rows by status, a
source's copies, recent failures) and for resuming (a copy key already copied).

All SQL on these tables is here, but for the dashboard's read-only queries, which are in
bulk/dashboard/queries.py. Ownership of rows in progress (see :class:`Ledger`):

- an engine holds a **lease** (a row of ``healthimaging_engine_leases``) that it renews while it
  works; a lease not renewed for :data:`LEASE_SECONDS` has expired;
- a row ``submitting`` / ``submitted`` belongs to the engine whose id is in its ``claim`` column;
  every write an engine makes to such a row is fenced by that claim (``WHERE claim = :mine``), and
  a write that changes nothing tells the engine that the row is no longer its own;
- right before CopyImageSet is sent, one transaction renews the sender's lease and re-checks its
  claim (:meth:`Ledger.arm_send`): a lease that expired or was revoked sends nothing;
- a row is taken over only from an owner whose lease has expired (:meth:`Ledger.take_over`): the
  lease is revoked in the same transaction, so its old owner can neither renew it nor send again.
  Lease times come from the database's clock on PostgreSQL, so workers' clocks need not agree.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

#: The Airflow connection of the ledger database, which holds the copy ledger and the shared rate limit.
CONNECTION_ID = "healthimaging_ledger"
#: The connection's earlier name; still read when ``healthimaging_ledger`` is not defined.
LEGACY_CONNECTION_ID = "healthimaging_lineage"
#: The names the ledger's connection is looked up by, in order.
CONNECTION_IDS = (CONNECTION_ID, LEGACY_CONNECTION_ID)
DEFAULT_SQLITE_NAME = "healthimaging_ledger.sqlite3"

#: Row statuses. ``pending``, ``submitting`` (claimed; the copy may have been sent) and ``submitted``
#: (accepted, running) are in progress; the others are final.
PENDING, SUBMITTING, SUBMITTED = "pending", "submitting", "submitted"
SUCCEEDED, FAILED, REJECTED, SKIPPED, PLANNED = "succeeded", "failed", "rejected", "skipped", "planned"
IN_PROGRESS_STATUSES = (PENDING, SUBMITTING, SUBMITTED)
IN_FLIGHT_STATUSES = (SUBMITTING, SUBMITTED)
FINAL_STATUSES = (SUCCEEDED, FAILED, REJECTED, SKIPPED, PLANNED)

#: How long an engine's lease lasts without renewal. The engine renews it every quarter of this and in
#: the transaction right before each CopyImageSet; a CopyImageSet call is bounded well inside it (the
#: hook's no-retry client: 10 s to connect, 30 s to read), so a copy its owner sent has reached the
#: service before anyone may take the row over and reconcile it.
LEASE_SECONDS = 60.0
#: Ended leases are deleted this long after they expired.
LEASE_RETENTION_SECONDS = 24 * 3600.0

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
    # throttled CopyImageSet sends (a throttling code or HTTP 429): resent, not counted in attempts
    sa.Column("throttles", sa.Integer, nullable=False, default=0, server_default=sa.text("0")),
    sa.Column("submitted_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("verified", sa.Boolean),
    sa.Column("updated_at", sa.Float, nullable=False),
    # execution state of the bulk-copy engine
    sa.Column("batch", sa.Integer),
    sa.Column("request_json", sa.Text),  # the validated manifest row
    sa.Column("plan_json", sa.Text),  # the resolved CopyPlan, stored before the copy is sent
    sa.Column("claim", sa.String(64)),  # which engine instance holds the row (its lease's owner)
    sa.Column("claimed_at", sa.Float),
    sa.Column("sent_at", sa.Float),  # when its owner last cleared the copy for sending (arm_send)
    sa.Column("next_poll_at", sa.Float),
    sa.UniqueConstraint("dag_id", "run_id", "manifest_sha256", "row_number", name="uq_healthimaging_ledger_run_row"),
    sa.Index("ix_healthimaging_ledger_run_status", "dag_id", "run_id", "status"),
    sa.Index("ix_healthimaging_ledger_source", "datastore_id", "source_image_set_id"),
    sa.Index("ix_healthimaging_ledger_destination", "datastore_id", "destination_image_set_id"),
    sa.Index("ix_healthimaging_ledger_copy_key", "copy_key", "status"),
    sa.Index("ix_healthimaging_ledger_status_completed", "status", "completed_at"),
    sa.Index("ix_healthimaging_ledger_run_batch", "dag_id", "run_id", "batch", "status"),
    sa.Index("ix_healthimaging_ledger_in_flight", "status", "datastore_id"),
    sa.Index("ix_healthimaging_ledger_claim", "claim", "status"),
    sa.Index("ix_healthimaging_ledger_label", "label"),  # the dashboard's lineage look-up by label
)

leases = sa.Table(
    "healthimaging_engine_leases",
    metadata,
    sa.Column("owner", sa.String(64), primary_key=True),  # the engine's id, written into the rows it claims
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("batch", sa.Integer),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("renewed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # database clock; REVOKED once taken over
    sa.Index("ix_healthimaging_leases_expires", "expires_at"),
)

#: The deployment-wide CopyImageSet token bucket (see healthimaging.bulk.rate_limit), one row per limit.
buckets = sa.Table(
    "healthimaging_rate_limit",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("stamp", sa.Float, nullable=False),
    sa.Column("rate", sa.Float, nullable=False),  # tokens a second now: the ceiling, or lower after throttling
    sa.Column("burst", sa.Float, nullable=False),
    sa.Column("ceiling", sa.Float),  # the configured rate (migration 0005)
    sa.Column("decreased_at", sa.Float),  # when sustained throttling last lowered the rate (migration 0005)
    sa.Column("increased_at", sa.Float),  # when the rate last climbed back towards the ceiling (migration 0005)
)
#: A bucket's configured rate: its ceiling (a row written before migration 0005 by a process not yet upgraded
#: has none: its rate then).
BUCKET_CEILING = sa.func.coalesce(buckets.c.ceiling, buckets.c.rate)

#: ``expires_at`` of a lease whose rows were taken over: it can never be renewed again.
REVOKED = -1.0

manifests = sa.Table(
    "healthimaging_manifests",
    metadata,
    sa.Column("manifest_uri", sa.Text, primary_key=True),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("taken_at", sa.Float, nullable=False),
    sa.Column("released_at", sa.Float),
    sa.Column("failure", sa.Text),
)


def default_sqlite_path() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / DEFAULT_SQLITE_NAME


class LedgerConnectionError(ValueError):
    """The ledger's Airflow connection names no database this module can use; the message says how to fix it."""


def url_from_connection(conn: Any) -> URL | str:
    """A SQLAlchemy URL for an Airflow connection: ``postgres``, ``sqlite`` or an explicit extra ``sqlalchemy_url``.

    Every form Airflow accepts resolves: ``sqlite:////abs/ledger.sqlite3`` (Airflow puts the path in the
    connection's schema), ``sqlite://%2Fabs%2Fledger.sqlite3`` or JSON ``{"conn_type": "sqlite", "host":
    "/abs/ledger.sqlite3"}`` (in its host). A connection that names no file, an in-memory database or a
    relative path (which would depend on each worker's directory) is a :class:`LedgerConnectionError`,
    never a silent in-memory ledger that forgets every copy.
    """
    conn_id = getattr(conn, "conn_id", None) or CONNECTION_ID
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    if extra.get("sqlalchemy_url"):
        return extra["sqlalchemy_url"]
    conn_type = (conn.conn_type or "").lower()
    if conn_type in ("postgres", "postgresql"):
        if not conn.schema:
            raise LedgerConnectionError(
                f"connection {conn_id!r} names no database: write postgres://user:password@host:5432/<database>"
            )
        return URL.create(
            "postgresql+psycopg2",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema,
        )
    if conn_type == "sqlite":
        return f"sqlite:///{_sqlite_path(conn_id, conn.host or '', conn.schema or '')}"
    raise LedgerConnectionError(
        f"connection {conn_id!r} has type {conn.conn_type!r}; use postgres or sqlite, or set extra.sqlalchemy_url"
    )


def _sqlite_path(conn_id: str, host: str, schema: str) -> str:
    """The file of a sqlite connection, from its host or (URI form) its schema; absolute, or an error."""
    form = "write sqlite:////absolute/path/ledger.sqlite3, or set the connection's host to the absolute path"
    if host and host != "localhost" and schema:
        raise LedgerConnectionError(
            f"connection {conn_id!r} gives the SQLite file twice (host {host!r} and path {schema!r}); {form}"
        )
    path = "/" + schema.lstrip("/") if host == "localhost" else (host if host else schema)
    if not path or path == ":memory:":
        raise LedgerConnectionError(
            f"connection {conn_id!r} names no SQLite file (an in-memory ledger would forget "
            f"every copy when the task ends); {form}"
        )
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        raise LedgerConnectionError(
            f"connection {conn_id!r} names the SQLite file {path!r} relative to each worker's directory; {form}"
        )
    return path


def resolve_url(conn_id: str = CONNECTION_ID) -> URL | str:
    """The ledger's database: the Airflow connection if it exists, else a SQLite file under AIRFLOW_HOME."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    names = CONNECTION_IDS if conn_id == CONNECTION_ID else (conn_id,)
    for name in names:
        try:
            return url_from_connection(Connection.get(name))
        except AirflowNotFoundException:
            continue
    return f"sqlite:///{default_sqlite_path()}"  # not defined: the documented default applies


def connection_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """The ledger connection's id and value as ``AIRFLOW_CONN_*`` holds them (the old name too), or None."""
    for name in CONNECTION_IDS:
        value = environ.get(f"AIRFLOW_CONN_{name.upper()}")
        if value:
            return name, value
    return None


_engines: dict[str, Engine] = {}

#: Where Alembic keeps the ledger's schema version (not ``alembic_version``: the ledger may live in
#: Airflow's own metadata database, whose migrations use that name).
VERSION_TABLE = "healthimaging_ledger_version"
MIGRATIONS = Path(__file__).with_name("ledger_migrations")


class _StatementCount(threading.local):
    """SQL statements this thread has sent to a ledger database (connection pings aside)."""

    n = 0


STATEMENTS = _StatementCount()


def _count_statement(*_: Any) -> None:
    STATEMENTS.n += 1


def engine_for(url: URL | str) -> Engine:
    """One engine per URL per process, with the ledger's schema brought up to date (:func:`upgrade`)."""
    key = str(url)
    if key not in _engines:
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        sa.event.listen(engine, "before_cursor_execute", _count_statement)
        upgrade(engine)
        _engines[key] = engine
    return _engines[key]


def _alembic_config(connection: Any):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as db:
        return MigrationContext.configure(db, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the ledger's Alembic migrations up to ``revision`` (a no-op when it is there).

    Processes starting at once take turns: an advisory lock on PostgreSQL, a lock file beside a SQLite
    ledger. A ledger created before migrations existed (release 0.1.0) is adopted by the first one,
    its rows kept."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    from alembic import command

    with _migration_lock(engine), engine.begin() as db:
        if db.dialect.name == "postgresql":
            db.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("healthimaging-ledger-migrations"))))
        command.upgrade(_alembic_config(db), revision)


@contextlib.contextmanager
def _migration_lock(engine: Engine):
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def db_now(engine: Engine) -> sa.ColumnElement:
    """The current time as a SQL expression: the database's clock on PostgreSQL (one clock for every
    worker), this process's on SQLite (a file ledger is used from one host)."""
    if engine.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp())
    return sa.literal(time.time(), sa.Float)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@dataclass(frozen=True)
class BatchKey:
    """The ledger key of one batch of one manifest of one run."""

    dag_id: str
    run_id: str
    manifest_sha256: str
    batch: int

    def where(self) -> sa.ColumnElement:
        return sa.and_(
            copies.c.dag_id == self.dag_id,
            copies.c.run_id == self.run_id,
            copies.c.manifest_sha256 == self.manifest_sha256,
            copies.c.batch == self.batch,
        )


@dataclass(frozen=True)
class SendClearance:
    """What :meth:`Ledger.arm_send` decided: send, or not (and why)."""

    send: bool
    reason: str = ""  # "lease_lost", "claim_lost" or "duplicate"
    duplicate_of: dict[str, Any] | None = None  # the ledger row of the same copy, succeeded or in flight


@dataclass(frozen=True)
class ClaimObstacle:
    """Why a pending row could not be claimed: the data store's in-flight cap, or its source in flight.

    ``blocker`` is the in-flight row holding the source (with its owner's ``lease_expires_at``);
    ``orphans`` are in-flight rows of the data store whose owner's lease has expired."""

    kind: str  # "cap", "source" or "gone" (the row is no longer pending)
    blocker: dict[str, Any] | None = None
    orphans: tuple[dict[str, Any], ...] = ()


def _owner_lease():
    """The lease of a row's claim, joined outside-in (a row without a live lease has none)."""
    return sa.outerjoin(copies, leases, leases.c.owner == copies.c.claim)


class Ledger:
    """Reads and writes the ledger: manifest rows, their ownership while in progress, and run summaries."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_airflow(cls, conn_id: str = CONNECTION_ID) -> Ledger:
        return cls(engine_for(resolve_url(conn_id)))

    # ------------------------------------------------------------------ registration

    def record_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows (one dict per manifest row, ledger column names); existing ones are left alone."""
        now = time.time()
        defaults = {"attempts": 0, "force": False, "promote_to_primary": False}
        batch = [
            {**defaults, **{k: v for k, v in row.items() if v is not None or k not in defaults}, "updated_at": now}
            for row in rows
        ]
        if not batch:
            return 0
        columns = sorted({key for row in batch for key in row})
        batch = [{column: row.get(column, defaults.get(column)) for column in columns} for row in batch]
        with self.engine.begin() as db:
            existing = {
                r.row_number
                for r in db.execute(
                    sa.select(copies.c.row_number).where(
                        copies.c.dag_id == batch[0]["dag_id"],
                        copies.c.run_id == batch[0]["run_id"],
                        copies.c.manifest_sha256 == batch[0]["manifest_sha256"],
                    )
                )
            }
            fresh = [row for row in batch if row["row_number"] not in existing]
            for start in range(0, len(fresh), 5000):
                db.execute(copies.insert(), fresh[start : start + 5000])
        return len(fresh)

    def update(self, dag_id: str, run_id: str, manifest_sha256: str, row_number: int, **changes: Any) -> None:
        """Change one row that no engine holds (a dry run's plan, for example)."""
        changes["updated_at"] = time.time()
        with self.engine.begin() as db:
            db.execute(
                copies.update()
                .where(
                    copies.c.dag_id == dag_id,
                    copies.c.run_id == run_id,
                    copies.c.manifest_sha256 == manifest_sha256,
                    copies.c.row_number == row_number,
                )
                .values(**changes)
            )

    def succeeded_copy_keys(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """For each copy key already copied successfully (any run), the ledger row that did it."""
        return self._by_copy_key(keys, copies.c.status == SUCCEEDED)

    def orphaned_copy_keys(self, keys: Iterable[str], *, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """For each copy key in flight in another run whose owner's lease has expired (its engine died), that row."""
        return self._by_copy_key(
            keys,
            copies.c.status.in_(IN_FLIGHT_STATUSES),
            ~sa.and_(copies.c.dag_id == dag_id, copies.c.run_id == run_id),
            self._no_live_lease(),
        )

    def _by_copy_key(self, keys: Iterable[str], *conditions: Any) -> dict[str, dict[str, Any]]:
        keys = list(keys)
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as db:
            for start in range(0, len(keys), 500):
                query = (
                    sa.select(copies)
                    .select_from(_owner_lease())
                    .where(copies.c.copy_key.in_(keys[start : start + 500]), *conditions)
                    .order_by(copies.c.id)
                )
                for row in db.execute(query).mappings():
                    found.setdefault(row["copy_key"], dict(row))
        return found

    def resume_orphan(
        self,
        orphan: Mapping[str, Any],
        row_id: int,
        columns: Iterable[str],
        *,
        dag_id: str,
        run_id: str,
        row_number: int,
    ) -> bool:
        """Move a dead engine's copy in flight into a row of a later run, state and all (one transaction).

        The orphan's owner lease is revoked and the orphan row is marked ``skipped`` (resumed by the later
        run) only if it is still held by that owner; its state goes to ``row_id`` unclaimed, so the later
        run's engine takes it over and reconciles it. False if its owner turned out to be alive."""
        now = time.time()
        with self.engine.begin() as db:
            moved = self._seize(
                db,
                orphan,
                status=SKIPPED,
                claim=None,
                error_code="ResumedByLaterRun",
                updated_at=now,
                message=f"resumed by run {run_id} (row {row_number})",
            )
            if moved is None:
                return False
            db.execute(
                copies.update()
                .where(copies.c.id == row_id, copies.c.status == PENDING)
                .values(**{column: orphan[column] for column in columns}, claim=None, next_poll_at=now, updated_at=now)
            )
        return True

    def skip_pending(self, dag_id: str, run_id: str, manifest_sha256: str, *, error_code: str, message: str) -> int:
        """Mark a manifest's pending rows skipped (strict mode: nothing is copied, every row accounted for)."""
        with self.engine.begin() as db:
            return db.execute(
                copies.update()
                .where(
                    copies.c.dag_id == dag_id,
                    copies.c.run_id == run_id,
                    copies.c.manifest_sha256 == manifest_sha256,
                    copies.c.status == PENDING,
                )
                .values(status=SKIPPED, batch=None, error_code=error_code, updated_at=time.time(), message=message)
            ).rowcount

    def open_batches(self, dag_id: str, run_id: str, manifest_sha256: str) -> list[int]:
        """The batches of a manifest that still have rows in progress."""
        with self.engine.connect() as db:
            return sorted(
                b
                for (b,) in db.execute(
                    sa.select(copies.c.batch)
                    .distinct()
                    .where(
                        copies.c.dag_id == dag_id,
                        copies.c.run_id == run_id,
                        copies.c.manifest_sha256 == manifest_sha256,
                        copies.c.status.in_(IN_PROGRESS_STATUSES),
                    )
                )
                if b is not None
            )

    # ------------------------------------------------------------------ reading

    def run_rows(
        self, dag_id: str, run_id: str, manifest_sha256: str | None = None, batch: int | None = None
    ) -> list[dict[str, Any]]:
        """A run's rows (of one manifest, of one batch, when given), in manifest order."""
        conditions = [copies.c.dag_id == dag_id, copies.c.run_id == run_id]
        if manifest_sha256:
            conditions.append(copies.c.manifest_sha256 == manifest_sha256)
        if batch is not None:
            conditions.append(copies.c.batch == batch)
        with self.engine.connect() as db:
            query = sa.select(copies).where(*conditions).order_by(copies.c.manifest_sha256, copies.c.row_number)
            return [dict(r) for r in db.execute(query).mappings()]

    def status_counts(self, dag_id: str, run_id: str, manifest_sha256: str | None = None) -> dict[str, int]:
        """A run's row counts by status (of one manifest, when given)."""
        conditions = [copies.c.dag_id == dag_id, copies.c.run_id == run_id]
        if manifest_sha256:
            conditions.append(copies.c.manifest_sha256 == manifest_sha256)
        return self._counts(sa.and_(*conditions))

    def batch_counts(self, key: BatchKey) -> dict[str, int]:
        return self._counts(key.where())

    def _counts(self, condition: sa.ColumnElement) -> dict[str, int]:
        with self.engine.connect() as db:
            query = sa.select(copies.c.status, sa.func.count()).where(condition).group_by(copies.c.status)
            return {status: count for status, count in db.execute(query)}

    def datastore_counts(self, dag_id: str, run_id: str) -> dict[str, dict[str, int]]:
        """Per data store, a run's row counts by status."""
        with self.engine.connect() as db:
            query = (
                sa.select(copies.c.datastore_id, copies.c.status, sa.func.count())
                .where(copies.c.dag_id == dag_id, copies.c.run_id == run_id, copies.c.datastore_id.is_not(None))
                .group_by(copies.c.datastore_id, copies.c.status)
            )
            result: dict[str, dict[str, int]] = {}
            for datastore_id, status, count in db.execute(query):
                result.setdefault(datastore_id, {})[status] = count
        return result

    def batch_rows(self, key: BatchKey, *statuses: str, limit: int | None = None) -> list[dict[str, Any]]:
        """A batch's rows in these statuses, in manifest order."""
        query = sa.select(copies).where(key.where(), copies.c.status.in_(statuses)).order_by(copies.c.row_number)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    def held_rows(self, owner: str, *statuses: str) -> list[dict[str, Any]]:
        """The rows an engine holds (of any batch: it may have taken over another's), in these statuses."""
        query = sa.select(copies).where(copies.c.claim == owner, copies.c.status.in_(statuses)).order_by(copies.c.id)
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    def has_open_rows(self, key: BatchKey, owner: str) -> bool:
        """Whether the batch has rows in progress, or the engine still holds rows in flight (taken over)."""
        with self.engine.connect() as db:
            return (
                db.execute(
                    sa.select(copies.c.id)
                    .where(
                        sa.or_(
                            sa.and_(key.where(), copies.c.status.in_(IN_PROGRESS_STATUSES)),
                            sa.and_(copies.c.claim == owner, copies.c.status.in_(IN_FLIGHT_STATUSES)),
                        )
                    )
                    .limit(1)
                ).first()
                is not None
            )

    # ------------------------------------------------------------------ leases

    def acquire_lease(
        self,
        owner: str,
        *,
        dag_id: str | None = None,
        run_id: str | None = None,
        batch: int | None = None,
        seconds: float = LEASE_SECONDS,
    ) -> None:
        """Start a lease for a new engine id (and forget leases that ended long ago: a claim without a lease
        row counts as one whose lease expired, so deleting them changes nothing but the table's size)."""
        now = db_now(self.engine)
        with self.engine.begin() as db:
            db.execute(leases.delete().where(leases.c.expires_at < now - LEASE_RETENTION_SECONDS))
            db.execute(
                leases.insert().values(
                    owner=owner,
                    dag_id=dag_id,
                    run_id=run_id,
                    batch=batch,
                    host=socket.gethostname()[:255],
                    pid=os.getpid(),
                    started_at=now,
                    renewed_at=now,
                    expires_at=now + seconds,
                )
            )

    def renew_lease(self, owner: str, seconds: float = LEASE_SECONDS) -> bool:
        """Extend a lease that has not expired; False if it expired or was revoked (the engine lost its rows)."""
        with self.engine.begin() as db:
            return self._renew(db, owner, seconds)

    def _renew(self, db: Any, owner: str, seconds: float) -> bool:
        now = db_now(self.engine)
        return bool(
            db.execute(
                leases.update()
                .where(leases.c.owner == owner, leases.c.expires_at > now)
                .values(renewed_at=now, expires_at=now + seconds)
            ).rowcount
        )

    def bucket_rate(self, name: str) -> tuple[float, float] | None:
        """(rate now, ceiling) of the shared token bucket ``name`` (see healthimaging.bulk.rate_limit), or None."""
        query = sa.select(buckets.c.rate, BUCKET_CEILING).where(buckets.c.name == name)
        with self.engine.connect() as db:
            row = db.execute(query).first()
        return None if row is None else (row[0], row[1])

    def live_lease_count(self) -> int:
        """How many engines hold a lease now (of every run): they share the account's read quotas."""
        query = sa.select(sa.func.count()).select_from(leases).where(leases.c.expires_at > db_now(self.engine))
        with self.engine.connect() as db:
            return db.execute(query).scalar_one()

    def release_lease(self, owner: str) -> None:
        """End a lease whose engine is done (it holds no row any more)."""
        with self.engine.begin() as db:
            db.execute(leases.delete().where(leases.c.owner == owner))

    def lease(self, owner: str | None) -> dict[str, Any] | None:
        if owner is None:
            return None
        with self.engine.connect() as db:
            row = db.execute(sa.select(leases).where(leases.c.owner == owner)).mappings().first()
        return dict(row) if row else None

    def _no_live_lease(self) -> sa.ColumnElement:
        """For a query over :func:`_owner_lease`: the row's claim has no lease that is still running."""
        return sa.or_(leases.c.owner.is_(None), leases.c.expires_at <= db_now(self.engine))

    def _revoke_if_expired(self, db: Any, owner: str | None) -> bool:
        """Revoke an expired lease (no-op for none); False if it is still live. Atomic with a renewal: both
        update the lease row, so the database orders them and the loser's condition fails."""
        if owner is None:
            return True
        now = db_now(self.engine)
        revoked = db.execute(
            leases.update().where(leases.c.owner == owner, leases.c.expires_at <= now).values(expires_at=REVOKED)
        ).rowcount
        if revoked:
            return True
        return db.execute(sa.select(leases.c.owner).where(leases.c.owner == owner)).first() is None

    def orphans(self, key: BatchKey, owner: str) -> list[dict[str, Any]]:
        """The batch's rows in flight held by an engine whose lease has expired (or by none)."""
        query = (
            sa.select(copies)
            .select_from(_owner_lease())
            .where(key.where(), copies.c.status.in_(IN_FLIGHT_STATUSES), _claim_is_not(owner), self._no_live_lease())
            .order_by(copies.c.row_number)
        )
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    def take_over(self, row: Mapping[str, Any], owner: str) -> dict[str, Any] | None:
        """Take a row in flight from an owner whose lease has expired, revoking that lease; returns the row
        as it is now held, or None if its owner is alive or another engine took it first."""
        with self.engine.begin() as db:
            return self._seize(db, row, claim=owner, updated_at=time.time())

    def _seize(self, db: Any, row: Mapping[str, Any], **values: Any) -> dict[str, Any] | None:
        """Revoke the expired lease of a row's owner and change the row while that owner still holds it and
        it is in flight; the row as changed, or None (its owner is alive, or someone else seized it first)."""
        if not self._revoke_if_expired(db, row["claim"]):
            return None
        changed = (
            db.execute(
                copies.update()
                .where(
                    copies.c.id == row["id"],
                    _claim_is(row["claim"]),
                    copies.c.status.in_(IN_FLIGHT_STATUSES),
                )
                .values(**values)
                .returning(*copies.c)
            )
            .mappings()
            .first()
        )
        return dict(changed) if changed else None

    def waiting_on(self, key: BatchKey, owner: str) -> list[dict[str, Any]]:
        """The other owners this batch waits on: who holds its rows in flight, or copies of its pending
        rows' sources; each with its run, batch, row count and when its lease ends."""
        other = copies.alias("other")
        mine = copies.alias("mine")
        holds_mine = sa.and_(other.c.id == mine.c.id, mine.c.status.in_(IN_FLIGHT_STATUSES))
        holds_source = sa.and_(
            mine.c.status == PENDING,
            other.c.status.in_(IN_FLIGHT_STATUSES),
            other.c.datastore_id == mine.c.datastore_id,
            other.c.source_image_set_id == mine.c.source_image_set_id,
        )
        query = (
            sa.select(
                other.c.claim,
                leases.c.dag_id,
                leases.c.run_id,
                leases.c.batch,
                leases.c.expires_at,
                sa.func.count(sa.distinct(mine.c.id)).label("rows"),
            )
            .select_from(
                mine.join(other, sa.or_(holds_mine, holds_source)).outerjoin(leases, leases.c.owner == other.c.claim)
            )
            .where(
                mine.c.dag_id == key.dag_id,
                mine.c.run_id == key.run_id,
                mine.c.manifest_sha256 == key.manifest_sha256,
                mine.c.batch == key.batch,
                sa.or_(other.c.claim.is_(None), other.c.claim != owner),
            )
            .group_by(other.c.claim, leases.c.dag_id, leases.c.run_id, leases.c.batch, leases.c.expires_at)
        )
        with self.engine.connect() as db:
            return [dict(r) for r in db.execute(query).mappings()]

    # ------------------------------------------------------------------ claimed rows

    def claim(
        self,
        row_id: int,
        owner: str,
        *,
        datastore_id: str,
        source_image_set_id: str,
        max_in_flight: int,
        claimed_at: float,
    ) -> bool:
        """Take a pending row, atomically with the checks that guard sending it: the data store's in-flight cap
        and no other copy of the source in flight (two engines checking first and claiming after could both pass)."""
        other = copies.alias("in_flight")
        in_flight = (
            sa.select(sa.func.count())
            .select_from(other)
            .where(other.c.status.in_(IN_FLIGHT_STATUSES), other.c.datastore_id == datastore_id)
            .scalar_subquery()
        )
        source_busy = sa.exists().where(
            other.c.status.in_(IN_FLIGHT_STATUSES),
            other.c.datastore_id == datastore_id,
            other.c.source_image_set_id == source_image_set_id,
        )
        with self.engine.begin() as db:
            if db.dialect.name == "postgresql":  # READ COMMITTED would let two claims count the same rows
                db.execute(
                    sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"healthimaging-claim:{datastore_id}")))
                )
            return bool(
                db.execute(
                    copies.update()
                    .where(
                        copies.c.id == row_id,
                        copies.c.status == PENDING,
                        in_flight < max_in_flight,
                        ~source_busy,
                    )
                    .values(status=SUBMITTING, claim=owner, claimed_at=claimed_at, sent_at=None, updated_at=claimed_at)
                ).rowcount
            )

    def claim_obstacle(self, row: Mapping[str, Any], max_in_flight: int) -> ClaimObstacle:
        """Why :meth:`claim` failed for ``row``, with the orphans (rows whose owner died) standing in the way."""
        in_flight = sa.and_(copies.c.status.in_(IN_FLIGHT_STATUSES), copies.c.datastore_id == row["datastore_id"])
        with self.engine.connect() as db:
            if db.execute(sa.select(copies.c.status).where(copies.c.id == row["id"])).scalar_one() != PENDING:
                return ClaimObstacle("gone")
            blocker = (
                db.execute(
                    sa.select(copies, leases.c.expires_at.label("lease_expires_at"))
                    .select_from(_owner_lease())
                    .where(in_flight, copies.c.source_image_set_id == row["source_image_set_id"])
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if blocker is not None:
                orphaned = (
                    blocker["lease_expires_at"] is None
                    or blocker["lease_expires_at"] <= db.execute(sa.select(db_now(self.engine))).scalar_one()
                )
                return ClaimObstacle("source", dict(blocker), (dict(blocker),) if orphaned else ())
            count = db.execute(sa.select(sa.func.count()).select_from(copies).where(in_flight)).scalar_one()
            orphans = (
                db.execute(
                    sa.select(copies)
                    .select_from(_owner_lease())
                    .where(in_flight, self._no_live_lease())
                    .limit(max_in_flight)
                )
                .mappings()
                .all()
            )
        return ClaimObstacle("cap" if count >= max_in_flight else "gone", None, tuple(dict(o) for o in orphans))

    def fenced_update(self, row_id: int, owner: str, *, add: Mapping[str, int] | None = None, **changes: Any) -> bool:
        """Change a row only while ``owner`` holds it; False (nothing written) if it does not any more.

        ``add`` adds to counters in the database (``column = column + n``) rather than setting them: what
        earlier owners of the row stored is kept whatever this owner read of the row."""
        changes.setdefault("updated_at", time.time())
        increments = {column: copies.c[column] + n for column, n in (add or {}).items()}
        with self.engine.begin() as db:
            return bool(
                db.execute(
                    copies.update()
                    .where(copies.c.id == row_id, copies.c.claim == owner)
                    .values(**changes, **increments)
                ).rowcount
            )

    def arm_send(
        self, row: Mapping[str, Any], owner: str, *, skip_copied: bool = True, lease_seconds: float = LEASE_SECONDS
    ) -> SendClearance:
        """Right before a CopyImageSet: in one transaction, renew the owner's lease and re-check its claim;
        and the same copy (copy key) already succeeded (when ``skip_copied``) or in flight in another row
        of the ledger means this row is skipped (linked to that copy), not sent."""
        now = time.time()
        with self.engine.begin() as db:
            if not self._renew(db, owner, lease_seconds):
                return SendClearance(False, "lease_lost")
            if row.get("copy_key"):
                same = [copies.c.status.in_(IN_FLIGHT_STATUSES)] + (
                    [copies.c.status == SUCCEEDED] if skip_copied else []
                )
                duplicate = (
                    db.execute(
                        sa.select(copies)
                        .where(
                            copies.c.copy_key == row["copy_key"],
                            copies.c.id != row["id"],
                            sa.or_(*same),
                        )
                        .order_by(copies.c.id)
                        .limit(1)
                    )
                    .mappings()
                    .first()
                )
                if duplicate is not None:
                    duplicate = dict(duplicate)
                    done = duplicate["status"] == SUCCEEDED
                    skipped = db.execute(
                        copies.update()
                        .where(copies.c.id == row["id"], copies.c.claim == owner)
                        .values(
                            status=SKIPPED,
                            claim=None,
                            updated_at=now,
                            completed_at=now,
                            plan_json=None,
                            error_code="AlreadyCopied" if done else "CopyInFlightElsewhere",
                            destination_image_set_id=duplicate["destination_image_set_id"],
                            destination_version_id=duplicate["destination_version_id"],
                            message=(
                                f"copied by run {duplicate['run_id']} (row {duplicate['row_number']})"
                                if done
                                else f"the same copy is in flight in run {duplicate['run_id']} "
                                f"(row {duplicate['row_number']}); its outcome is that row's"
                            ),
                        )
                    ).rowcount
                    return SendClearance(False, "duplicate" if skipped else "claim_lost", duplicate)
            armed = db.execute(
                copies.update()
                .where(
                    copies.c.id == row["id"],
                    copies.c.claim == owner,
                    copies.c.status == SUBMITTING,
                )
                .values(sent_at=now, updated_at=now)
            ).rowcount
        return SendClearance(True) if armed else SendClearance(False, "claim_lost")

    # ------------------------------------------------------------------ manifests of the scheduled DAG

    def take_manifest(self, manifest_uri: str, manifest_sha256: str, dag_id: str, run_id: str) -> bool:
        """Claim a manifest for a run; False if some run already took it (each manifest is copied once).

        A manifest a run released (:meth:`release_manifest`) is taken again only once its content changed:
        the same broken bytes would fail the same way every interval."""
        with self.engine.begin() as db:
            taken = db.execute(sa.select(manifests).where(manifests.c.manifest_uri == manifest_uri)).first()
            if taken is None:
                db.execute(
                    manifests.insert().values(
                        manifest_uri=manifest_uri,
                        manifest_sha256=manifest_sha256,
                        dag_id=dag_id,
                        run_id=run_id,
                        taken_at=time.time(),
                    )
                )
                return True
            if taken.released_at is None or taken.manifest_sha256 == manifest_sha256:
                return taken.run_id == run_id and taken.released_at is None
            retaken = db.execute(
                manifests.update()
                .where(
                    manifests.c.manifest_uri == manifest_uri,
                    manifests.c.run_id == taken.run_id,
                    manifests.c.released_at.is_not(None),
                )
                .values(
                    manifest_sha256=manifest_sha256,
                    dag_id=dag_id,
                    run_id=run_id,
                    taken_at=time.time(),
                    released_at=None,
                    failure=None,
                )
            )
            return retaken.rowcount == 1

    def release_manifest(self, manifest_uri: str, run_id: str, failure: str) -> None:
        """Give back a manifest the run could not copy (``failure`` says why): a later run takes it again
        once its content changed."""
        with self.engine.begin() as db:
            db.execute(
                manifests.update()
                .where(manifests.c.manifest_uri == manifest_uri, manifests.c.run_id == run_id)
                .values(released_at=time.time(), failure=failure[:4000])
            )

    def manifest_claim(self, manifest_uri: str) -> dict[str, Any] | None:
        """Which run took a manifest, and whether (and why) it was released; None if never taken."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(manifests).where(manifests.c.manifest_uri == manifest_uri)).first()
        return dict(row._mapping) if row is not None else None


def _claim_is(owner: str | None) -> sa.ColumnElement:
    return copies.c.claim.is_(None) if owner is None else copies.c.claim == owner


def _claim_is_not(owner: str) -> sa.ColumnElement:
    return sa.or_(copies.c.claim.is_(None), copies.c.claim != owner)
