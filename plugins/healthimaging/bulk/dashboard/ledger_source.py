"""Which ledger database the dashboard reads, inside the API server.

``airflow.sdk.Connection.get`` (what the workers use, :func:`healthimaging.bulk.ledger.resolve_url`) does
not see connections stored in the metadata database outside a task, so the API server looks the
connection up with ``airflow.models.connection.Connection.get_connection_from_secrets`` (environment
variables, secrets backends, then the metadata database): ``healthimaging_ledger``, then its earlier name
``healthimaging_lineage``, then the documented default SQLite file under ``AIRFLOW_HOME`` - only if that
file exists. Without any of them, or with a database that does not answer, every API route answers 503
with a message that names the connection and says what to do; it never falls back to another database.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from healthimaging.bulk import ledger as ledger_module
from healthimaging.bulk.ledger import (
    CONNECTION_ID,
    CONNECTION_IDS,
    LEGACY_CONNECTION_ID,
    LedgerConnectionError,
    url_from_connection,
)

#: Seconds a PostgreSQL connection attempt may take before the dashboard reports the ledger unreachable.
CONNECT_TIMEOUT_SECONDS = 5

WHAT_TO_DO = (
    f"define the Airflow connection {CONNECTION_ID!r} (Admin > Connections, or AIRFLOW_CONN_"
    f"{CONNECTION_ID.upper()}) with the ledger database the bulk-copy workers use"
)


class LedgerUnavailable(Exception):
    """No ledger to read, or one that does not answer; ``message`` is shown on the page as it is."""

    def __init__(self, message: str, source: str | None = None, backend: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.backend = backend


@dataclass(frozen=True)
class LedgerSource:
    """Where the ledger is: a description for people (``source``) and the SQLAlchemy URL."""

    source: str
    url: URL | str
    conn_id: str | None = None

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


def _connection(conn_id: str) -> Any | None:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


def resolve() -> LedgerSource:
    """The ledger the API server reads; :class:`LedgerUnavailable` when there is none."""
    for conn_id in CONNECTION_IDS:
        conn = _connection(conn_id)
        if conn is None:
            continue
        try:
            url = url_from_connection(conn)
        except LedgerConnectionError as exc:
            raise LedgerUnavailable(f"{exc}", source=f"connection {conn_id}") from None
        return LedgerSource(f"connection {conn_id}", url, conn_id)
    path = ledger_module.default_sqlite_path()
    if path.exists():
        return LedgerSource(f"default SQLite file {path}", f"sqlite:///{path}")
    raise LedgerUnavailable(
        f"No copy ledger found: neither the connection {CONNECTION_ID!r} nor {LEGACY_CONNECTION_ID!r} is defined, "
        f"and the default SQLite file {path} does not exist. To fix it, {WHAT_TO_DO}."
    )


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine(source: LedgerSource) -> Engine:
    """One engine per URL, its schema brought to the ledger's head (as every worker does); raises
    :class:`LedgerUnavailable` naming the source when the database does not answer."""
    key = str(source.url)
    with _lock:
        cached = _engines.get(key)
    if cached is not None:
        return cached
    url = make_url(source.url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    elif url.get_backend_name() == "sqlite":
        connect_args["timeout"] = 30
    created = sa.create_engine(url, pool_pre_ping=True, future=True, connect_args=connect_args)
    try:
        ledger_module.upgrade(created)
    except sa.exc.SQLAlchemyError as exc:
        created.dispose()
        raise unreachable(source, exc) from None
    with _lock:
        return _engines.setdefault(key, created)


def unreachable(source: LedgerSource, exc: BaseException) -> LedgerUnavailable:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    where = f"the {source.source}" if source.conn_id else source.source
    fix = (
        f"check that the database is running and that the connection {source.conn_id!r} is right"
        if source.conn_id
        else "check the file and its permissions"
    )
    return LedgerUnavailable(
        f"The copy ledger ({where}: {source.safe_url}) does not answer: {first}. To fix it, {fix}.",
        source=source.source,
        backend=source.backend,
    )


def forget_engines() -> None:
    """Drop the cached engines (tests; a connection that changed)."""
    with _lock:
        for cached in _engines.values():
            cached.dispose()
        _engines.clear()
