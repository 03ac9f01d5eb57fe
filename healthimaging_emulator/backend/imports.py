"""DICOM imports: StartDICOMImportJob, GetDICOMImportJob, ListDICOMImportJobs, the import jobs that read
``--s3-root``, and the creation of ACTIVE image sets from documents (imports and seeding)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from healthimaging_emulator import dicom_metadata
from healthimaging_emulator.backend.core import BackendCore, new_id
from healthimaging_emulator.exceptions import AccessDeniedException, ResourceNotFoundException, ValidationException
from healthimaging_emulator.import_paths import LOCAL_FOLDER_PREFIX, no_root_refusal, write_text


class ImportsMixin(BackendCore):
    """The import job operations; an ``import`` job reads the input folder and writes the job output."""

    def resolve_input(self, uri: str, member: str = "inputS3Uri") -> Path:
        """The folder under ``--s3-root`` an import URI names: ``s3://bucket/key`` is ``ROOT/bucket/key``; a local
        folder (absolute path or ``file://`` URI, emulator extension) must lie under the root. Raises
        ValidationException or AccessDeniedException otherwise (``import_paths``)."""
        if self.import_root is None:
            raise no_root_refusal(uri, member)
        return self.import_root.resolve(uri, member)

    def start_dicom_import_job(
        self,
        dataAccessRoleArn: str,
        clientToken: str,
        datastoreId: str,
        inputS3Uri: str,
        outputS3Uri: str,
        jobName: str | None = None,
        inputOwnerAccountId: str | None = None,
        importConfiguration: dict | None = None,
    ) -> dict[str, Any]:
        with self.store.transaction() as db:
            self._datastore(db, datastoreId)
            # Refused here, before any job exists: a URI outside --s3-root never reaches the job runner.
            self.resolve_input(inputS3Uri, "inputS3Uri")
            self.resolve_input(outputS3Uri, "outputS3Uri")
            existing = db.execute(
                "SELECT * FROM import_jobs WHERE datastore_id = ? AND client_token = ?", (datastoreId, clientToken)
            ).fetchone()
            if existing is not None:
                row = existing
            else:
                job_id, now = new_id(), time.time()
                db.execute(
                    "INSERT INTO import_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job_id,
                        datastoreId,
                        jobName or f"import-{job_id[:8]}",
                        "SUBMITTED",
                        dataAccessRoleArn,
                        inputS3Uri,
                        outputS3Uri,
                        clientToken,
                        now,
                        None,
                        None,
                    ),
                )
                self._schedule(db, "import", datastoreId, self.realism.timing.import_seconds, {"job_id": job_id})
                row = db.execute("SELECT * FROM import_jobs WHERE job_id = ?", (job_id,)).fetchone()
        return {
            "datastoreId": datastoreId,
            "jobId": row["job_id"],
            "jobStatus": row["status"],
            "submittedAt": row["submitted_at"],
        }

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
            "jobId": row["job_id"],
            "jobName": row["job_name"],
            "jobStatus": row["status"],
            "datastoreId": row["datastore_id"],
            "dataAccessRoleArn": row["data_access_role_arn"],
            "endedAt": row["ended_at"],
            "submittedAt": row["submitted_at"],
            "inputS3Uri": self._reported_uri(row["input_uri"]),
            "outputS3Uri": self._reported_uri(row["output_uri"]),
            "message": row["message"],
        }

    def get_dicom_import_job(self, datastoreId: str, jobId: str) -> dict[str, Any]:
        with self.store.reading() as db:
            self._datastore(db, datastoreId, active=False)
            row = db.execute(
                "SELECT * FROM import_jobs WHERE datastore_id = ? AND job_id = ?", (datastoreId, jobId)
            ).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Import job {jobId} does not exist in datastore {datastoreId}.")
        return {"jobProperties": self._import_job_properties(row)}

    def list_dicom_import_jobs(
        self,
        datastoreId: str,
        jobStatus: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        with self.store.reading() as db:
            self._datastore(db, datastoreId, active=False)
        sql, args = "SELECT * FROM import_jobs WHERE datastore_id = ?", [datastoreId]
        if jobStatus:
            sql, args = sql + " AND status = ?", [*args, jobStatus]
        page, token = self._page(
            sql + " ORDER BY submitted_at DESC, job_id",
            args,
            nextToken,
            maxResults,
            ("ListDICOMImportJobs", datastoreId, jobStatus),
        )
        keys = (
            "jobId",
            "jobName",
            "jobStatus",
            "datastoreId",
            "dataAccessRoleArn",
            "endedAt",
            "submittedAt",
            "message",
        )
        return {
            "jobSummaries": [{k: self._import_job_properties(r)[k] for k in keys} for r in page],
            "nextToken": token,
        }

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
        message = (
            None if documents else f"No importable DICOM files found under the input ({len(rejected)} files rejected)."
        )
        try:
            self._write_import_output(
                job, output, created, rejected
            )  # before the job ends: a client that sees it ended finds the output
        except (AccessDeniedException, OSError) as exc:
            status, message = "FAILED", f"The job output could not be written under {output}: {exc}"
        self._end_import(job_id, status, message)

    def _end_import(self, job_id: str, status: str, message: str | None) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE import_jobs SET status = ?, ended_at = ?, message = ? WHERE job_id = ?",
                (status, time.time(), message, job_id),
            )

    def import_documents(
        self, datastore_id: str, documents: list[dicom_metadata.SeriesDocument]
    ) -> list[tuple[str, dicom_metadata.SeriesDocument]]:
        """Create one ACTIVE image set per series document, as an import does."""
        created: list[tuple[str, dicom_metadata.SeriesDocument]] = []
        with self.store.transaction() as db:
            now = time.time()
            for series in documents:
                (taken,) = db.execute(
                    "SELECT COUNT(*) FROM image_sets WHERE datastore_id = ? AND is_primary = 1 AND deleted_at IS NULL"
                    " AND instr(series_instance_uid, ?) > 0",
                    (datastore_id, f"|{series.series_instance_uid}|"),
                ).fetchone()
                image_set_id = new_id()
                # [I] A series that already has a primary image set is imported as a non-primary one.
                self._insert_image_set(
                    db,
                    datastore_id,
                    image_set_id,
                    series.document,
                    state="ACTIVE",
                    workflow_status="CREATED",
                    is_primary=not taken,
                    now=now,
                )
                created.append((image_set_id, series))
        return created

    def insert_image_sets(
        self,
        datastore_id: str,
        documents,
        *,
        is_primary=lambda i: True,
        workflow_status: str = "CREATED",
        level: int = 6,
        id_for=None,
    ) -> list[str]:
        """Create ACTIVE image sets from documents in one transaction (imports and seeding)."""
        ids = []
        now = time.time()
        with self.store.transaction() as db:
            for index, document in enumerate(documents):
                image_set_id = id_for(index) if id_for else new_id()
                self._insert_image_set(
                    db,
                    datastore_id,
                    image_set_id,
                    document,
                    state="ACTIVE",
                    workflow_status=workflow_status,
                    is_primary=is_primary(index),
                    now=now,
                    level=level,
                )
                ids.append(image_set_id)
        return ids

    def _write_import_output(self, job, folder: Path, created, rejected) -> None:
        """Write the job output (manifest, success and failure lists) into ``folder``, under ``--s3-root``."""
        root = self.import_root
        out = root.output_folder(folder / f"{job['datastore_id']}-DicomImport-{job['job_id']}")
        success = "".join(
            json.dumps({"inputFile": path, "importResponse": {"imageSetId": image_set_id}}) + "\n"
            for image_set_id, series in created
            for path in series.source_files
        )
        failure = "".join(
            json.dumps({"inputFile": path, "exception": {"exceptionType": "ValidationException", "message": reason}})
            + "\n"
            for path, reason in rejected
        )
        write_text(root.output_folder(out / "SUCCESS") / "success.ndjson", success)
        write_text(root.output_folder(out / "FAILURE") / "failure.ndjson", failure)
        summary = {
            "jobId": job["job_id"],
            "datastoreId": job["datastore_id"],
            "imageSetsCreated": len(created),
            "filesImported": sum(len(s.source_files) for _, s in created),
            "filesFailed": len(rejected),
        }
        write_text(out / "job-output-manifest.json", json.dumps(summary, indent=2))
