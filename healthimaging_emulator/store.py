"""The emulator's state in SQLite: a file under ``--state-dir`` (durable) or in memory (tests).

Every acknowledged change is committed before the response is written, and the journal is WAL
with ``synchronous=NORMAL``: a ``kill -9`` of the process loses nothing that a client was told.
Asynchronous work (copies, updates, deletes, imports) is a row in ``jobs`` with a due time, so
work in flight at a crash completes after the restart.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS datastores (
    datastore_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    kms_key_arn TEXT,
    lambda_authorizer_arn TEXT,
    lossless_storage_format TEXT,
    client_token TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_sets (
    datastore_id TEXT NOT NULL,
    image_set_id TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    is_primary INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,
    -- search columns, from the latest version's metadata
    patient_id TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_instance_uid TEXT,
    series_instance_uid TEXT,
    study_date_time TEXT,
    dicom_tags TEXT,
    PRIMARY KEY (datastore_id, image_set_id)
);
CREATE INDEX IF NOT EXISTS image_sets_series ON image_sets (datastore_id, series_instance_uid);
CREATE INDEX IF NOT EXISTS image_sets_study ON image_sets (datastore_id, study_instance_uid);
CREATE INDEX IF NOT EXISTS image_sets_updated ON image_sets (datastore_id, updated_at);
CREATE INDEX IF NOT EXISTS image_sets_created ON image_sets (datastore_id, created_at);
CREATE TABLE IF NOT EXISTS versions (
    datastore_id TEXT NOT NULL,
    image_set_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    workflow_status TEXT NOT NULL,
    message TEXT,
    forced INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,
    metadata BLOB NOT NULL,
    PRIMARY KEY (datastore_id, image_set_id, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    datastore_id TEXT NOT NULL,
    due_at REAL NOT NULL,
    payload TEXT NOT NULL,
    result BLOB,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (done, due_at);
CREATE TABLE IF NOT EXISTS import_jobs (
    job_id TEXT PRIMARY KEY,
    datastore_id TEXT NOT NULL,
    job_name TEXT NOT NULL,
    status TEXT NOT NULL,
    data_access_role_arn TEXT NOT NULL,
    input_uri TEXT NOT NULL,
    output_uri TEXT NOT NULL,
    client_token TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    ended_at REAL,
    message TEXT
);
CREATE TABLE IF NOT EXISTS tags (
    resource_arn TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_arn, key)
);
"""


class Store:
    """One SQLite connection shared by the server's threads; ``transaction()`` serialises writers."""

    def __init__(self, state_dir: str | Path | None = None) -> None:
        if state_dir is None:
            self.path = ":memory:"
        else:
            directory = Path(state_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = str(directory / "healthimaging.sqlite3")
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Read access under the same lock (one connection serves every thread)."""
        with self.lock:
            yield self.db

    def close(self) -> None:
        with self.lock:
            self.db.close()
