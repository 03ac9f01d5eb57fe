"""What every resource of the backend shares: the store and settings, ARNs, the lookups and checks of data
stores and image sets, pagination, the scheduling of asynchronous jobs, and the rows of image sets."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from healthimaging_emulator import copy_rules, dicom_metadata
from healthimaging_emulator.exceptions import (
    AccessDeniedException,
    ConflictException,
    HealthImagingError,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from healthimaging_emulator.import_paths import LOCAL_FOLDER_PREFIX, ImportRoot, no_root_refusal, write_text
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

    def __init__(self, store: Store, realism: Realism, *, account_id: str = "123456789012", region: str = "us-east-1",
                 s3_root: str | Path | None = None) -> None:
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

    def _datastore(self, db, datastore_id: str, *, active: bool = True):
        row = db.execute("SELECT * FROM datastores WHERE datastore_id = ?", (datastore_id,)).fetchone()
        if row is None or row["status"] == "DELETED":
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist.")
        if active and row["status"] != "ACTIVE":
            raise ConflictException(f"Datastore {datastore_id} is {row['status']}, not ACTIVE.")
        return row

    def _image_set(self, db, datastore_id: str, image_set_id: str, *, allow_deleted: bool = False):
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

    def _version(self, db, datastore_id: str, image_set_id: str, version: str | None):
        """The image set and one row of ``versions``: the given version, or the latest."""
        image_set = self._image_set(db, datastore_id, image_set_id, allow_deleted=True)
        number = image_set["latest_version"] if version is None else int(version)
        # a \d+ id beyond SQLite's 64-bit integers names no version (and must not crash the query)
        row = None if number >= 2**63 else db.execute(
            "SELECT * FROM versions WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
            (datastore_id, image_set_id, number),
        ).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Version {version} of image set {image_set_id} does not exist.")
        return image_set, row

    @staticmethod
    def _check_writable(row, role: str) -> None:
        if row["state"] == "LOCKED":
            raise ConflictException(
                f"The {role} image set {row['image_set_id']} is locked ({row['workflow_status']}); "
                "wait until it is ACTIVE and retry."
            )

    @staticmethod
    def _check_version(row, given: str, role: str) -> None:
        if int(given) != row["latest_version"]:
            raise ConflictException(
                f"The latestVersionId {given} of the {role} image set {row['image_set_id']} is not its latest version "
                f"({row['latest_version']}); read the image set again and retry with the latest version."
            )

    # ------------------------------------------------------------------ pagination

    def _page(self, sql: str, args: list[Any], token: str | None, max_results: int | None, scope: tuple) -> tuple[list, str | None]:
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
                raise ValidationException("nextToken belongs to a different request; repeat the request that returned it.")
        with self.store.reading() as db:
            rows = db.execute(f"{sql} LIMIT ? OFFSET ?", [*args, size + 1, offset]).fetchall()
        next_token = None
        if len(rows) > size:
            rows = rows[:size]
            next_token = base64.urlsafe_b64encode(json.dumps({"o": offset + size, "s": fingerprint}).encode()).decode()
        return rows, next_token

    # ------------------------------------------------------------------ image sets: writes

    def _insert_image_set(self, db, datastore_id: str, image_set_id: str, document: dict[str, Any], *, state: str,
                          workflow_status: str, is_primary: bool, now: float, level: int = 6) -> None:
        document = {**document, "DatastoreID": datastore_id, "ImageSetID": image_set_id}
        db.execute(
            "INSERT INTO image_sets (datastore_id, image_set_id, latest_version, is_primary, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?)", (datastore_id, image_set_id, 1, int(is_primary), now, now))
        db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (datastore_id, image_set_id, 1, state, workflow_status, None, None, now, now, None,
                    compress(document, level)))
        self._index(db, datastore_id, image_set_id, document)

    def _index(self, db, datastore_id: str, image_set_id: str, document: dict[str, Any]) -> None:
        """Refresh the search columns from a document."""
        tags = dicom_metadata.dicom_tags(document)
        study = document.get("Study", {}).get("DICOM", {})
        study_date_time = (study.get("StudyDate") or "") + (study.get("StudyTime") or "").replace(":", "")
        db.execute(
            "UPDATE image_sets SET patient_id = ?, accession_number = ?, study_id = ?, study_instance_uid = ?,"
            " series_instance_uid = ?, study_date_time = ?, dicom_tags = ? WHERE datastore_id = ? AND image_set_id = ?",
            (tags.get("DICOMPatientId"), tags.get("DICOMAccessionNumber"), tags.get("DICOMStudyId"),
             tags.get("DICOMStudyInstanceUID"), "|" + "|".join(dicom_metadata.series_uids(document)) + "|",
             study_date_time or None, json.dumps(tags), datastore_id, image_set_id))

    def insert_image_sets(self, datastore_id: str, documents, *, is_primary=lambda i: True, workflow_status: str = "CREATED",
                          level: int = 6, id_for=None) -> list[str]:
        """Create ACTIVE image sets from documents in one transaction (imports and seeding)."""
        ids = []
        now = time.time()
        with self.store.transaction() as db:
            for index, document in enumerate(documents):
                image_set_id = id_for(index) if id_for else new_id()
                self._insert_image_set(db, datastore_id, image_set_id, document, state="ACTIVE",
                                       workflow_status=workflow_status, is_primary=is_primary(index), now=now, level=level)
                ids.append(image_set_id)
        return ids

    # ------------------------------------------------------------------ imports

    def resolve_input(self, uri: str, member: str = "inputS3Uri") -> Path:
        """The folder under ``--s3-root`` an import URI names: ``s3://bucket/key`` is ``ROOT/bucket/key``; a local
        folder (absolute path or ``file://`` URI, emulator extension) must lie under the root. Raises
        ValidationException or AccessDeniedException otherwise (``import_paths``)."""
        if self.import_root is None:
            raise no_root_refusal(uri, member)
        return self.import_root.resolve(uri, member)

    def start_dicom_import_job(self, dataAccessRoleArn: str, clientToken: str, datastoreId: str, inputS3Uri: str,
                               outputS3Uri: str, jobName: str | None = None, inputOwnerAccountId: str | None = None,
                               importConfiguration: dict | None = None) -> dict[str, Any]:
        with self.store.transaction() as db:
            self._datastore(db, datastoreId)
            # Refused here, before any job exists: a URI outside --s3-root never reaches the job runner.
            self.resolve_input(inputS3Uri, "inputS3Uri")
            self.resolve_input(outputS3Uri, "outputS3Uri")
            existing = db.execute("SELECT * FROM import_jobs WHERE datastore_id = ? AND client_token = ?",
                                  (datastoreId, clientToken)).fetchone()
            if existing is not None:
                row = existing
            else:
                job_id, now = new_id(), time.time()
                db.execute("INSERT INTO import_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           (job_id, datastoreId, jobName or f"import-{job_id[:8]}", "SUBMITTED", dataAccessRoleArn,
                            inputS3Uri, outputS3Uri, clientToken, now, None, None))
                self._schedule(db, "import", datastoreId, self.realism.timing.import_seconds, {"job_id": job_id})
                row = db.execute("SELECT * FROM import_jobs WHERE job_id = ?", (job_id,)).fetchone()
        return {"datastoreId": datastoreId, "jobId": row["job_id"], "jobStatus": row["status"], "submittedAt": row["submitted_at"]}

    @staticmethod
    def _reported_uri(uri: str | None) -> str | None:
        """A URI as job properties report it. The model wants ``s3://…``, so a local folder (emulator
        extension) is shown as ``s3://local-folder/<absolute path>`` [I], which ``resolve_input`` reads back (the bucket
        name ``local-folder`` is reserved for this)."""
        if uri and uri.startswith(("/", "file://")):
            return LOCAL_FOLDER_PREFIX + str(Path(uri.removeprefix("file://"))).lstrip("/")
        return uri

    def _import_job_properties(self, row) -> dict[str, Any]:
        return {
            "jobId": row["job_id"], "jobName": row["job_name"], "jobStatus": row["status"], "datastoreId": row["datastore_id"],
            "dataAccessRoleArn": row["data_access_role_arn"], "endedAt": row["ended_at"], "submittedAt": row["submitted_at"],
            "inputS3Uri": self._reported_uri(row["input_uri"]), "outputS3Uri": self._reported_uri(row["output_uri"]),
            "message": row["message"],
        }

    def get_dicom_import_job(self, datastoreId: str, jobId: str) -> dict[str, Any]:
        with self.store.reading() as db:
            self._datastore(db, datastoreId, active=False)
            row = db.execute("SELECT * FROM import_jobs WHERE datastore_id = ? AND job_id = ?", (datastoreId, jobId)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Import job {jobId} does not exist in datastore {datastoreId}.")
        return {"jobProperties": self._import_job_properties(row)}

    def list_dicom_import_jobs(self, datastoreId: str, jobStatus: str | None = None, nextToken: str | None = None,
                               maxResults: int | None = None) -> dict[str, Any]:
        with self.store.reading() as db:
            self._datastore(db, datastoreId, active=False)
        sql, args = "SELECT * FROM import_jobs WHERE datastore_id = ?", [datastoreId]
        if jobStatus:
            sql, args = sql + " AND status = ?", [*args, jobStatus]
        page, token = self._page(sql + " ORDER BY submitted_at DESC, job_id", args, nextToken, maxResults,
                                 ("ListDICOMImportJobs", datastoreId, jobStatus))
        keys = ("jobId", "jobName", "jobStatus", "datastoreId", "dataAccessRoleArn", "endedAt", "submittedAt", "message")
        return {"jobSummaries": [{k: self._import_job_properties(r)[k] for k in keys} for r in page], "nextToken": token}

    def _run_import(self, job_id: str) -> None:
        with self.store.reading() as db:
            job = db.execute("SELECT * FROM import_jobs WHERE job_id = ?", (job_id,)).fetchone()
        with self.store.transaction() as db:
            db.execute("UPDATE import_jobs SET status = 'IN_PROGRESS' WHERE job_id = ?", (job_id,))
        try:
            # Again at run time: a link may have been put in place since the job started.
            folder = self.resolve_input(job["input_uri"], "inputS3Uri")
            output = self.resolve_input(job["output_uri"], "outputS3Uri")
        except (ValidationException, AccessDeniedException) as refusal:
            self._end_import(job_id, "FAILED", refusal.message)
            return
        files, unread = self.import_root.files_under(folder) if folder.is_dir() else ([], [])
        documents, rejected = dicom_metadata.documents_from_files(files)
        rejected = unread + rejected
        created = self.import_documents(job["datastore_id"], documents)
        status = "COMPLETED" if documents else "FAILED"
        message = None if documents else f"No importable DICOM files found under the input ({len(rejected)} files rejected)."
        try:
            self._write_import_output(job, output, created, rejected)  # before the job ends: a client that sees it ended finds the output
        except (AccessDeniedException, OSError) as exc:
            status, message = "FAILED", f"The job output could not be written under {output}: {exc}"
        self._end_import(job_id, status, message)

    def _end_import(self, job_id: str, status: str, message: str | None) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE import_jobs SET status = ?, ended_at = ?, message = ? WHERE job_id = ?",
                       (status, time.time(), message, job_id))

    def import_documents(self, datastore_id: str, documents: list[dicom_metadata.SeriesDocument]) -> list[tuple[str, dicom_metadata.SeriesDocument]]:
        """Create one ACTIVE image set per series document, as an import does."""
        created: list[tuple[str, dicom_metadata.SeriesDocument]] = []
        with self.store.transaction() as db:
            now = time.time()
            for series in documents:
                (taken,) = db.execute(
                    "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND is_primary = 1 AND deleted_at IS NULL"
                    " AND instr(series_instance_uid, ?) > 0", (datastore_id, f"|{series.series_instance_uid}|"),
                ).fetchone()
                image_set_id = new_id()
                # [I] A series that already has a primary image set is imported as a non-primary one.
                self._insert_image_set(db, datastore_id, image_set_id, series.document, state="ACTIVE",
                                       workflow_status="CREATED", is_primary=not taken, now=now)
                created.append((image_set_id, series))
        return created

    def _write_import_output(self, job, folder: Path, created, rejected) -> None:
        """Write the job output (manifest, success and failure lists) into ``folder``, under ``--s3-root``."""
        root = self.import_root
        out = root.output_folder(folder / f"{job['datastore_id']}-DicomImport-{job['job_id']}")
        success = "".join(json.dumps({"inputFile": path, "importResponse": {"imageSetId": image_set_id}}) + "\n"
                          for image_set_id, series in created for path in series.source_files)
        failure = "".join(json.dumps({"inputFile": path, "exception": {"exceptionType": "ValidationException",
                                                                       "message": reason}}) + "\n"
                          for path, reason in rejected)
        write_text(root.output_folder(out / "SUCCESS") / "success.ndjson", success)
        write_text(root.output_folder(out / "FAILURE") / "failure.ndjson", failure)
        summary = {"jobId": job["job_id"], "datastoreId": job["datastore_id"], "imageSetsCreated": len(created),
                   "filesImported": sum(len(s.source_files) for _, s in created), "filesFailed": len(rejected)}
        write_text(out / "job-output-manifest.json", json.dumps(summary, indent=2))

    def _put_tags(self, db, arn: str, tags: dict[str, str]) -> None:
        db.executemany("INSERT OR REPLACE INTO tags VALUES (?,?,?)", [(arn, k, v) for k, v in tags.items()])

    # ------------------------------------------------------------------ asynchronous work

    def _schedule(self, db, kind: str, datastore_id: str, delay: float, payload: dict[str, Any], result: bytes | None = None) -> None:
        db.execute("INSERT INTO jobs (kind, datastore_id, due_at, payload, result) VALUES (?,?,?,?,?)",
                   (kind, datastore_id, time.time() + delay, json.dumps(payload), result))

    def _finish_version(self, db, datastore_id: str, image_set_id: str, version: int, status: str, result: bytes | None,
                        now: float, message: str | None = None, forced: bool | None = None) -> None:
        db.execute("UPDATE versions SET state = 'ACTIVE', workflow_status = ?, message = ?, updated_at = ?,"
                   " forced = COALESCE(?, forced), metadata = COALESCE(?, metadata)"
                   " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
                   (status, message, now, 1 if forced else None, result, datastore_id, image_set_id, version))
        db.execute("UPDATE image_sets SET updated_at = ? WHERE datastore_id = ? AND image_set_id = ?",
                   (now, datastore_id, image_set_id))
        if result is not None:
            self._index(db, datastore_id, image_set_id, decompress(result))
