"""Changes to image sets: UpdateImageSetMetadata and DeleteImageSet, and the jobs that complete them."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from healthimaging_emulator import copy_rules
from healthimaging_emulator.backend.core import BackendCore, compress, decompress
from healthimaging_emulator.exceptions import ValidationException


class ImageSetWritesMixin(BackendCore):
    """UpdateImageSetMetadata and DeleteImageSet: the image set is LOCKED until its ``update`` or ``delete``
    job ends."""

    def delete_image_set(self, datastoreId: str, imageSetId: str) -> dict[str, Any]:
        with self.store.transaction() as db:
            image_set = self._image_set(db, datastoreId, imageSetId)
            self._check_writable(image_set, "")
            now = time.time()
            db.execute(
                "UPDATE versions SET state = 'LOCKED', workflow_status = 'DELETING', updated_at = ?"
                " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
                (now, datastoreId, imageSetId, image_set["latest_version"]),
            )
            self._schedule(
                db,
                "delete",
                datastoreId,
                self.realism.timing.delete_seconds,
                {"image_set_id": imageSetId, "version": image_set["latest_version"]},
            )
        return {
            "datastoreId": datastoreId,
            "imageSetId": imageSetId,
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "DELETING",
        }

    def update_image_set_metadata(
        self,
        datastoreId: str,
        imageSetId: str,
        latestVersionId: str,
        updateImageSetMetadataUpdates: dict[str, Any],
        force: bool | None = None,
        includeStudyImageSets: bool | None = None,
    ) -> dict[str, Any]:
        with self.store.transaction() as db:
            image_set = self._image_set(db, datastoreId, imageSetId)
            self._check_version(image_set, latestVersionId, "")
            self._check_writable(image_set, "")
            if "revertToVersionId" in updateImageSetMetadataUpdates:
                _, old = self._version(db, datastoreId, imageSetId, updateImageSetMetadataUpdates["revertToVersionId"])
                updated = decompress(old["metadata"])
            else:
                updated = apply_dicom_updates(
                    decompress(image_set["metadata"]), updateImageSetMetadataUpdates.get("DICOMUpdates") or {}
                )
            now = time.time()
            version = image_set["latest_version"] + 1
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    datastoreId,
                    imageSetId,
                    version,
                    "LOCKED",
                    "UPDATING",
                    None,
                    1 if force else None,
                    now,
                    now,
                    None,
                    image_set["metadata"],
                ),
            )
            db.execute(
                "UPDATE image_sets SET latest_version = ?, updated_at = ? WHERE datastore_id = ? AND image_set_id = ?",
                (version, now, datastoreId, imageSetId),
            )
            self._schedule(
                db,
                "update",
                datastoreId,
                self.realism.timing.update_seconds,
                {"image_set_id": imageSetId, "version": version},
                result=compress(updated),
            )
        return {
            "datastoreId": datastoreId,
            "imageSetId": imageSetId,
            "latestVersionId": str(version),
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "UPDATING",
            "createdAt": image_set["created_at"],
            "updatedAt": now,
        }

    def _finish_update(
        self, db: sqlite3.Connection, datastore_id: str, payload: dict[str, Any], result: bytes | None, now: float
    ) -> None:
        """An ``update`` job: the new version, with the updated document, becomes ACTIVE."""
        self._finish_version(db, datastore_id, payload["image_set_id"], payload["version"], "UPDATED", result, now)

    def _finish_delete(self, db: sqlite3.Connection, datastore_id: str, payload: dict[str, Any], now: float) -> None:
        """A ``delete`` job: the version it locked, and the image set, are DELETED."""
        db.execute(
            "UPDATE versions SET state = 'DELETED', workflow_status = 'DELETED', updated_at = ?, deleted_at = ?"
            " WHERE datastore_id = ? AND image_set_id = ? AND version = ?",
            (now, now, datastore_id, payload["image_set_id"], payload["version"]),
        )
        db.execute(
            "UPDATE image_sets SET deleted_at = ?, updated_at = ? WHERE datastore_id = ? AND image_set_id = ?",
            (now, now, datastore_id, payload["image_set_id"]),
        )


def apply_dicom_updates(document: dict[str, Any], updates: dict[str, bytes]) -> dict[str, Any]:
    """A document with UpdateImageSetMetadata's ``DICOMUpdates`` applied (updatable, then removable)."""
    result = json.loads(json.dumps(document))
    for member in ("updatableAttributes", "removableAttributes"):
        blob = updates.get(member)
        if blob is None:
            continue
        try:
            change = json.loads(blob)
        except ValueError as exc:
            raise ValidationException(f"DICOMUpdates.{member} is not valid JSON: {exc}") from None
        if not isinstance(change, dict) or change.get("SchemaVersion") not in copy_rules.SCHEMA_VERSIONS:
            raise ValidationException(f"DICOMUpdates.{member} must be a JSON object with SchemaVersion 1.1")
        _apply_level(
            result,
            {k: v for k, v in change.items() if k != "SchemaVersion"},
            remove=member == "removableAttributes",
            where=f"DICOMUpdates.{member}",
        )
    return result


def _apply_level(target: dict[str, Any], change: dict[str, Any], *, remove: bool, where: str) -> None:
    for key, value in change.items():
        path = f"{where}.{key}"
        if key == "DICOM":
            if not isinstance(value, dict):
                raise ValidationException(f"{path} must be an object of DICOM attributes")
            dicom = target.setdefault("DICOM", {})
            for attribute, new in value.items():
                if remove:
                    dicom.pop(attribute, None)
                else:
                    dicom[attribute] = new
            continue
        if key not in target or not isinstance(target[key], dict):
            raise ValidationException(f"{path} does not exist in the image set")
        if not isinstance(value, dict):
            raise ValidationException(f"{path} must be an object")
        if remove and value == {} and key not in ("Patient", "Study", "Series", "Instances"):
            del target[key]  # an entity (series or instance) given as {} is removed
            continue
        _apply_level(target[key], value, remove=remove, where=path)
