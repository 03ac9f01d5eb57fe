"""Data stores: CreateDatastore, GetDatastore, ListDatastores, DeleteDatastore, and their status jobs."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from healthimaging_emulator.backend.core import BackendCore, new_id
from healthimaging_emulator.exceptions import ConflictException, ResourceNotFoundException


class DatastoresMixin(BackendCore):
    """The data store operations; creating and deleting one ends in a ``datastore_status`` job."""

    def create_datastore(
        self,
        clientToken: str,
        datastoreName: str | None = None,
        tags: dict | None = None,
        kmsKeyArn: str | None = None,
        lambdaAuthorizerArn: str | None = None,
        losslessStorageFormat: str | None = None,
    ) -> dict[str, Any]:
        with self.store.transaction() as db:
            existing = db.execute("SELECT * FROM datastores WHERE client_token = ?", (clientToken,)).fetchone()
            if existing is not None:
                return {"datastoreId": existing["datastore_id"], "datastoreStatus": existing["status"]}
            datastore_id = new_id()
            now = time.time()
            name = datastoreName or f"datastore-{datastore_id[:8]}"
            immediate = self.realism.timing.datastore_seconds == 0
            status = "ACTIVE" if immediate else "CREATING"
            db.execute(
                "INSERT INTO datastores VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    datastore_id,
                    name,
                    status,
                    kmsKeyArn,
                    lambdaAuthorizerArn,
                    losslessStorageFormat or "HTJ2K",
                    clientToken,
                    now,
                    now,
                ),
            )
            self._put_tags(db, self.datastore_arn(datastore_id), tags or {})
            if not immediate:
                self._schedule(
                    db, "datastore_status", datastore_id, self.realism.timing.datastore_seconds, {"status": "ACTIVE"}
                )
        return {"datastoreId": datastore_id, "datastoreStatus": status}

    def create_datastore_now(self, name: str) -> str:
        """A data store that is ACTIVE at once (seeding)."""
        with self.store.transaction() as db:
            datastore_id = new_id()
            now = time.time()
            db.execute(
                "INSERT INTO datastores VALUES (?,?,?,?,?,?,?,?,?)",
                (datastore_id, name, "ACTIVE", None, None, "HTJ2K", f"seed-{datastore_id}", now, now),
            )
        return datastore_id

    def _datastore_properties(self, row) -> dict[str, Any]:
        return {
            "datastoreId": row["datastore_id"],
            "datastoreName": row["name"],
            "datastoreStatus": row["status"],
            "kmsKeyArn": row["kms_key_arn"],
            "lambdaAuthorizerArn": row["lambda_authorizer_arn"],
            "losslessStorageFormat": row["lossless_storage_format"],
            "datastoreArn": self.datastore_arn(row["datastore_id"]),
            "createdAt": row["created_at"],
            "updatedAt": row["updated_at"],
        }

    def get_datastore(self, datastoreId: str) -> dict[str, Any]:
        with self.store.reading() as db:
            row = db.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastoreId,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Datastore {datastoreId} does not exist.")
        return {"datastoreProperties": self._datastore_properties(row)}

    def list_datastores(
        self, datastoreStatus: str | None = None, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        sql, args = "SELECT * FROM datastores", []
        if datastoreStatus:
            sql, args = sql + " WHERE status = ?", [datastoreStatus]
        page, token = self._page(
            sql + " ORDER BY created_at, datastore_id", args, nextToken, maxResults, ("ListDatastores", datastoreStatus)
        )
        summaries = []
        for row in page:
            props = self._datastore_properties(row)
            summaries.append(
                {
                    k: props[k]
                    for k in (
                        "datastoreId",
                        "datastoreName",
                        "datastoreStatus",
                        "datastoreArn",
                        "createdAt",
                        "updatedAt",
                    )
                }
            )
        return {"datastoreSummaries": summaries, "nextToken": token}

    def delete_datastore(self, datastoreId: str) -> dict[str, Any]:
        with self.store.transaction() as db:
            row = self._datastore(db, datastoreId, active=False)
            if row["status"] != "ACTIVE":
                raise ConflictException(
                    f"Datastore {datastoreId} is {row['status']}; only an ACTIVE datastore can be deleted."
                )
            (live,) = db.execute(
                "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND deleted_at IS NULL", (datastoreId,)
            ).fetchone()
            if live:
                raise ConflictException(f"Datastore {datastoreId} still holds {live} image sets; delete them first.")
            db.execute(
                "UPDATE datastores SET status = 'DELETING', updated_at = ? WHERE datastore_id = ?",
                (time.time(), datastoreId),
            )
            self._schedule(
                db, "datastore_status", datastoreId, self.realism.timing.datastore_seconds, {"status": "DELETED"}
            )
        return {"datastoreId": datastoreId, "datastoreStatus": "DELETING"}

    def _finish_datastore_status(
        self, db: sqlite3.Connection, datastore_id: str, payload: dict[str, Any], now: float
    ) -> None:
        """A ``datastore_status`` job: the data store takes the status the job carries."""
        db.execute(
            "UPDATE datastores SET status = ?, updated_at = ? WHERE datastore_id = ?",
            (payload["status"], now, datastore_id),
        )
