"""What the resources of the backend share: the store and settings, ARNs, the lookups and checks of data
stores and image sets, pagination, the rows and search index of image sets, tags, and the scheduling of jobs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from healthimaging_emulator import dicom_metadata
from healthimaging_emulator.exceptions import ConflictException, ResourceNotFoundException, ValidationException
from healthimaging_emulator.import_paths import ImportRoot
from healthimaging_emulator.realism import Realism
from healthimaging_emulator.store import Store

DEFAULT_PAGE_SIZE = 50


def compress(document: dict[str, Any], level: int = 6) -> bytes:
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=level, mtime=0)


def decompress(blob: bytes) -> dict[str, Any]:
    return json.loads(gzip.decompress(blob))


def new_id() -> str:
    return uuid.uuid4().hex


class BackendCore:
    """The state every resource's operations share: the :class:`Store`, the :class:`Realism` settings, the
    account and region of the ARNs, the import root; and the helpers more than one resource uses."""

    def __init__(
        self,
        store: Store,
        realism: Realism,
        *,
        account_id: str = "123456789012",
        region: str = "us-east-1",
        s3_root: str | Path | None = None,
    ) -> None:
        self.store = store
        self.realism = realism
        self.account_id = account_id
        self.region = region
        #: The only folder imports read and write (``import_paths``); None: every import is refused.
        self.import_root = ImportRoot.of(s3_root) if s3_root else None
        self.s3_root = self.import_root.root if self.import_root else None

    # ------------------------------------------------------------------ naming

    def datastore_arn(self, datastore_id: str) -> str:
        return f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/{datastore_id}"

    def image_set_arn(self, datastore_id: str, image_set_id: str) -> str:
        return f"{self.datastore_arn(datastore_id)}/imageset/{image_set_id}"

    # ------------------------------------------------------------------ lookups

    def _datastore(self, db: sqlite3.Connection, datastore_id: str, *, active: bool = True) -> sqlite3.Row:
        row = db.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastore_id,)).fetchone()
        if row is None or row["status"] == "DELETED":
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist.")
        if active and row["status"] != "ACTIVE":
            raise ConflictException(f"Datastore {datastore_id} is {row['status']}, not ACTIVE.")
        return row

    def _image_set(
        self, db: sqlite3.Connection, datastore_id: str, image_set_id: str, *, allow_deleted: bool = False
    ) -> sqlite3.Row:
        """The image set joined with its latest version."""
        self._datastore(db, datastore_id)
        row = db.execute(
            "SELECT s.*, v.state, v.workflow_status, v.message, v.forced, v.metadata"
            " FROM image_sets s JOIN versions v USING (datastore_id, image_set_id)"
            " WHERE s.datastore_id = ? AND s.image_set_id = ? AND v.version = s.latest_version",
            (datastore_id, image_set_id),
        ).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Image set {image_set_id} does not exist in datastore {datastore_id}.")
        if row["deleted_at"] is not None and not allow_deleted:
            raise ResourceNotFoundException(f"Image set {image_set_id} has been deleted.")
        return row

    def _version(
        self, db: sqlite3.Connection, datastore_id: str, image_set_id: str, version: str | None
    ) -> tuple[sqlite3.Row, sqlite3.Row]:
        """The image set and one row of ``versions``: the given version, or the latest."""
        image_set = self._image_set(db, datastore_id, image_set_id, allow_deleted=True)
        number = image_set["latest_version"] if version is None else int(version)
        # a \d+ id beyond SQLite's 64-bit integers names no version (and must not crash the query)
        row = (
            None
            if number >= 2**63
            else db.execute(
                "SELECT * FROM versions WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
                (datastore_id, image_set_id, number),
            ).fetchone()
        )
        if row is None:
            raise ResourceNotFoundException(f"Version {version} of image set {image_set_id} does not exist.")
        return image_set, row

    @staticmethod
    def _check_writable(row: sqlite3.Row, role: str) -> None:
        if row["state"] == "LOCKED":
            raise ConflictException(
                f"The {role} image set {row['image_set_id']} is locked ({row['workflow_status']}); "
                "wait until it is ACTIVE and retry."
            )

    @staticmethod
    def _check_version(row: sqlite3.Row, given: str, role: str) -> None:
        if int(given) != row["latest_version"]:
            raise ConflictException(
                f"The latestVersionId {given} of the {role} image set {row['image_set_id']} is not its latest version "
                f"({row['latest_version']}); read the image set again and retry with the latest version."
            )

    # ------------------------------------------------------------------ pagination

    def _page(
        self, sql: str, args: list[Any], token: str | None, max_results: int | None, scope: tuple
    ) -> tuple[list, str | None]:
        size = max_results or DEFAULT_PAGE_SIZE
        fingerprint = hashlib.sha256(json.dumps(scope).encode()).hexdigest()[:16]
        offset = 0
        if token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                offset, token_scope = int(decoded["o"]), decoded["s"]
            except (ValueError, KeyError, TypeError):
                raise ValidationException("nextToken is not a token this operation returned.") from None
            if token_scope != fingerprint or offset < 0:
                raise ValidationException(
                    "nextToken belongs to a different request; repeat the request that returned it."
                )
        with self.store.reading() as db:
            rows = db.execute(f"{sql} LIMIT ? OFFSET ?", [*args, size + 1, offset]).fetchall()
        next_token = None
        if len(rows) > size:
            rows = rows[:size]
            next_token = base64.urlsafe_b64encode(json.dumps({"o": offset + size, "s": fingerprint}).encode()).decode()
        return rows, next_token

    # ------------------------------------------------------------------ image set rows

    def _insert_image_set(
        self,
        db: sqlite3.Connection,
        datastore_id: str,
        image_set_id: str,
        document: dict[str, Any],
        *,
        state: str,
        workflow_status: str,
        is_primary: bool,
        now: float,
        level: int = 6,
    ) -> None:
        document = {**document, "DatastoreID": datastore_id, "ImageSetID": image_set_id}
        db.execute(
            "INSERT INTO image_sets (datastore_id, image_set_id, latest_version, is_primary, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?)",
            (datastore_id, image_set_id, 1, int(is_primary), now, now),
        )
        db.execute(
            "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                datastore_id,
                image_set_id,
                1,
                state,
                workflow_status,
                None,
                None,
                now,
                now,
                None,
                compress(document, level),
            ),
        )
        self._index(db, datastore_id, image_set_id, document)

    def _index(self, db: sqlite3.Connection, datastore_id: str, image_set_id: str, document: dict[str, Any]) -> None:
        """Refresh the search columns from a document."""
        tags = dicom_metadata.dicom_tags(document)
        study = document.get("Study", {}).get("DICOM", {})
        study_date_time = (study.get("StudyDate") or "") + (study.get("StudyTime") or "").replace(":", "")
        db.execute(
            "UPDATE image_sets SET patient_id = ?, accession_number = ?, study_id = ?, study_instance_uid = ?,"
            " series_instance_uid = ?, study_date_time = ?, dicom_tags = ? WHERE datastore_id = ? AND image_set_id = ?",
            (
                tags.get("DICOMPatientId"),
                tags.get("DICOMAccessionNumber"),
                tags.get("DICOMStudyId"),
                tags.get("DICOMStudyInstanceUID"),
                "|" + "|".join(dicom_metadata.series_uids(document)) + "|",
                study_date_time or None,
                json.dumps(tags),
                datastore_id,
                image_set_id,
            ),
        )

    def _finish_version(
        self,
        db: sqlite3.Connection,
        datastore_id: str,
        image_set_id: str,
        version: int,
        status: str,
        result: bytes | None,
        now: float,
        message: str | None = None,
        forced: bool | None = None,
    ) -> None:
        """The end of a copy or update: the version is ACTIVE with ``status``, and ``result`` its document if given."""
        db.execute(
            "UPDATE versions SET state = 'ACTIVE', workflow_status = ?, message = ?, updated_at = ?,"
            " forced = COALESCE(?, forced), metadata = COALESCE(?, metadata)"
            " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
            (status, message, now, 1 if forced else None, result, datastore_id, image_set_id, version),
        )
        db.execute(
            "UPDATE image_sets SET updated_at = ? WHERE datastore_id = ? AND image_set_id = ?",
            (now, datastore_id, image_set_id),
        )
        if result is not None:
            self._index(db, datastore_id, image_set_id, decompress(result))

    # ------------------------------------------------------------------ tags

    def _put_tags(self, db: sqlite3.Connection, arn: str, tags: dict[str, str]) -> None:
        """Set tags of a resource (CreateDatastore's ``tags``, TagResource)."""
        db.executemany("INSERT OR REPLACE INTO tags VALUES (?,?,?)", [(arn, k, v) for k, v in tags.items()])

    # ------------------------------------------------------------------ asynchronous work

    def _schedule(
        self,
        db: sqlite3.Connection,
        kind: str,
        datastore_id: str,
        delay: float,
        payload: dict[str, Any],
        result: bytes | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO jobs (kind, datastore_id, due_at, payload, result) VALUES (?,?,?,?,?)",
            (kind, datastore_id, time.time() + delay, json.dumps(payload), result),
        )
