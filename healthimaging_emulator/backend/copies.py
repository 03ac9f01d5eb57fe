"""Copies: CopyImageSet, and the copy jobs that complete it."""

from __future__ import annotations

import time
from typing import Any

from healthimaging_emulator import copy_rules
from healthimaging_emulator.backend.core import BackendCore, compress, decompress, new_id
from healthimaging_emulator.exceptions import ServiceQuotaExceededException, ValidationException

INJECTED_COPY_FAILURE = "INTERNAL_FAILURE: Copy failed due to an injected fault."


class CopiesMixin(BackendCore):
    """CopyImageSet: both image sets are LOCKED until the ``copy`` job ends the copy."""

    def copy_image_set(
        self,
        datastoreId: str,
        sourceImageSetId: str,
        copyImageSetInformation: dict[str, Any],
        force: bool | None = None,
        promoteToPrimary: bool | None = None,
        injected_failure: bool = False,
    ) -> dict[str, Any]:
        source_info = copyImageSetInformation["sourceImageSet"]
        destination_info = copyImageSetInformation.get("destinationImageSet")
        copiable = (source_info.get("DICOMCopies") or {}).get("copiableAttributes")
        selection = copy_rules.parse_copiable_attributes(copiable) if copiable is not None else None
        if destination_info and destination_info["imageSetId"] == sourceImageSetId:
            raise ValidationException("The destination image set must differ from the source image set.")
        timing = self.realism.timing
        with self.store.transaction() as db:
            source = self._image_set(db, datastoreId, sourceImageSetId)
            self._check_version(source, source_info["latestVersionId"], "source")
            self._check_writable(source, "source")
            destination = None
            if destination_info:
                destination = self._image_set(db, datastoreId, destination_info["imageSetId"])
                self._check_version(destination, destination_info["latestVersionId"], "destination")
                self._check_writable(destination, "destination")
            (in_flight,) = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'copy' AND done = 0 AND datastore_id = ?", (datastoreId,)
            ).fetchone()
            if in_flight >= self.realism.max_concurrent_copies:
                raise ServiceQuotaExceededException(
                    f"Datastore {datastoreId} already has {in_flight} copies in progress, the quota of concurrent "
                    f"CopyImageSet requests ({self.realism.max_concurrent_copies}); retry when one completes."
                )
            source_doc = decompress(source["metadata"])
            copied, missing = copy_rules.select(source_doc, selection)
            frames = copy_rules.frame_total(copied)
            if frames > self.realism.max_frames_per_copy:
                raise ServiceQuotaExceededException(
                    f"The copy holds {frames} image frames, over the quota of {self.realism.max_frames_per_copy} "
                    "image frames per CopyImageSet; copy a subset with copiableAttributes."
                )
            failure = None
            if injected_failure:
                failure = INJECTED_COPY_FAILURE
            elif missing:
                failure = f"INVALID_REQUEST: SourceImageSet does not contain {missing[0]}."
            now = time.time()
            if destination is None:
                destination_id, destination_version, created_at = new_id(), 1, now
                result = {**copied, "ImageSetID": destination_id}
                self._insert_image_set(
                    db,
                    datastoreId,
                    destination_id,
                    result,
                    state="LOCKED",
                    workflow_status="COPYING",
                    is_primary=False,
                    now=now,
                )
            else:
                destination_id = destination["image_set_id"]
                destination_version, created_at = destination["latest_version"] + 1, destination["created_at"]
                destination_doc = decompress(destination["metadata"])
                if failure is None and not force:
                    failure = copy_rules.consistency_problem(copied, destination_doc)
                result = copy_rules.merge(destination_doc, copied)
                db.execute(
                    "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        datastoreId,
                        destination_id,
                        destination_version,
                        "LOCKED",
                        "COPYING",
                        None,
                        None,
                        now,
                        now,
                        None,
                        destination["metadata"],
                    ),
                )
                db.execute(
                    "UPDATE image_sets SET latest_version = ?, updated_at = ? WHERE datastore_id = ? AND image_set_id "
                    "= ?",
                    (destination_version, now, datastoreId, destination_id),
                )
            db.execute(
                "UPDATE versions SET state = 'LOCKED', workflow_status = 'COPYING_WITH_READ_ONLY_ACCESS', updated_at "
                "= ?"
                " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
                (now, datastoreId, sourceImageSetId, source["latest_version"]),
            )
            payload = {
                "source_id": sourceImageSetId,
                "source_version": source["latest_version"],
                "source_status": source["workflow_status"],
                "destination_id": destination_id,
                "destination_version": destination_version,
                "failure": failure,
                "forced": bool(force),
                "promote": bool(promoteToPrimary),
            }
            self._schedule(
                db,
                "copy",
                datastoreId,
                timing.copy_duration(copy_rules.instance_count(copied)),
                payload,
                result=None if failure else compress(result),
            )
        return {
            "datastoreId": datastoreId,
            "sourceImageSetProperties": {
                "imageSetId": sourceImageSetId,
                "latestVersionId": str(source["latest_version"]),
                "imageSetState": "LOCKED",
                "imageSetWorkflowStatus": "COPYING_WITH_READ_ONLY_ACCESS",
                "createdAt": source["created_at"],
                "updatedAt": now,
                "imageSetArn": self.image_set_arn(datastoreId, sourceImageSetId),
            },
            "destinationImageSetProperties": {
                "imageSetId": destination_id,
                "latestVersionId": str(destination_version),
                "imageSetState": "LOCKED",
                "imageSetWorkflowStatus": "COPYING",
                "createdAt": created_at,
                "updatedAt": now,
                "imageSetArn": self.image_set_arn(datastoreId, destination_id),
            },
        }

    def _finish_copy(self, db, datastore_id: str, payload: dict[str, Any], result: bytes | None, now: float) -> None:
        # [I] The source returns to ACTIVE with the workflow status it had before the copy.
        db.execute(
            "UPDATE versions SET state = 'ACTIVE', workflow_status = ?, updated_at = ?"
            " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
            (payload["source_status"], now, datastore_id, payload["source_id"], payload["source_version"]),
        )
        failure = payload["failure"]
        self._finish_version(
            db,
            datastore_id,
            payload["destination_id"],
            payload["destination_version"],
            "COPY_FAILED" if failure else "COPIED",
            result,
            now,
            message=failure,
            forced=payload["forced"] and not failure,
        )
        if payload["promote"] and not failure:
            db.execute(
                "UPDATE image_sets SET is_primary = 1 WHERE datastore_id = ? AND image_set_id = ?",
                (datastore_id, payload["destination_id"]),
            )
