"""The backend as the server uses it: every resource's operations in one class, the dispatch of an
operation name to its method, and the runner of due asynchronous jobs."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from botocore import xform_name

from healthimaging_emulator.backend.copies import CopiesMixin
from healthimaging_emulator.backend.datastores import DatastoresMixin
from healthimaging_emulator.backend.image_set_reads import ImageSetReadsMixin
from healthimaging_emulator.backend.image_set_writes import ImageSetWritesMixin
from healthimaging_emulator.backend.imports import ImportsMixin
from healthimaging_emulator.backend.tags import TagsMixin

log = logging.getLogger(__name__)


class HealthImagingBackend(
    DatastoresMixin, ImageSetReadsMixin, CopiesMixin, ImageSetWritesMixin, ImportsMixin, TagsMixin
):
    """All operations of the service over a :class:`Store`, with the :class:`Realism` settings.

    ``call`` finds an operation's method by its botocore name (``CopyImageSet`` -> ``copy_image_set``)."""

    def call(self, operation: str, params: dict[str, Any], *, fault: str | None = None) -> dict[str, Any]:
        """Run one operation. ``fault`` is an injected fault that changes the outcome (``copy_failed``)."""
        method = getattr(self, xform_name(operation))
        if operation == "CopyImageSet":
            return method(**params, injected_failure=fault == "copy_failed")
        return method(**params)

    def next_due(self) -> float | None:
        with self.store.reading() as db:
            row = db.execute("SELECT MIN(due_at) FROM jobs WHERE done = 0").fetchone()
        return row[0]

    def run_due_jobs(self, now: float | None = None) -> int:
        """Complete every job whose time has come; returns how many ran."""
        now = time.time() if now is None else now
        with self.store.reading() as db:
            due = db.execute(
                "SELECT * FROM jobs WHERE done = 0 AND due_at <= ? ORDER BY due_at, job_id", (now,)
            ).fetchall()
        for job in due:
            try:
                self._complete(job)
            except Exception:  # a job that cannot complete must not stop the others
                log.exception("job %s (%s) failed", job["job_id"], job["kind"])
                with self.store.transaction() as db:
                    db.execute("UPDATE jobs SET done = 1 WHERE job_id = ?", (job["job_id"],))
        return len(due)

    def _complete(self, job: sqlite3.Row) -> None:
        payload = json.loads(job["payload"])
        datastore_id, kind = job["datastore_id"], job["kind"]
        if kind == "import":
            self._run_import(payload["job_id"])
            with self.store.transaction() as db:
                db.execute("UPDATE jobs SET done = 1 WHERE job_id = ?", (job["job_id"],))
            return
        with self.store.transaction() as db:
            now = time.time()
            if kind == "copy":
                self._finish_copy(db, datastore_id, payload, job["result"], now)
            elif kind == "update":
                self._finish_update(db, datastore_id, payload, job["result"], now)
            elif kind == "delete":
                self._finish_delete(db, datastore_id, payload, now)
            elif kind == "datastore_status":
                self._finish_datastore_status(db, datastore_id, payload, now)
            db.execute("UPDATE jobs SET done = 1 WHERE job_id = ?", (job["job_id"],))
