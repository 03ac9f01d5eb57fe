"""Reads of image sets: GetImageSet, GetImageSetMetadata, GetImageFrame, ListImageSetVersions, SearchImageSets."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from healthimaging_emulator.backend.core import BackendCore, decompress
from healthimaging_emulator.exceptions import ResourceNotFoundException, ValidationException

STORAGE_TIER = "FREQUENT_ACCESS"


class ImageSetReadsMixin(BackendCore):
    """The operations that read image sets and their versions, and the search over the index columns."""

    def _image_set_properties(self, image_set, version) -> dict[str, Any]:
        return {
            "imageSetId": image_set["image_set_id"],
            "versionId": str(version["version"]),
            "imageSetState": version["state"],
            "imageSetWorkflowStatus": version["workflow_status"],
            "createdAt": image_set["created_at"],
            "updatedAt": version["updated_at"],
            "deletedAt": image_set["deleted_at"] if version["state"] == "DELETED" else None,
            "message": version["message"],
            "overrides": {"forced": True} if version["forced"] else None,
            "isPrimary": bool(image_set["is_primary"]),
        }

    def get_image_set(self, datastoreId: str, imageSetId: str, versionId: str | None = None) -> dict[str, Any]:
        with self.store.reading() as db:
            image_set, version = self._version(db, datastoreId, imageSetId, versionId)
        props = self._image_set_properties(image_set, version)
        return {
            "datastoreId": datastoreId,
            **props,
            "imageSetArn": self.image_set_arn(datastoreId, imageSetId),
            "storageTier": STORAGE_TIER,
        }

    def get_image_set_metadata(self, datastoreId: str, imageSetId: str, versionId: str | None = None) -> dict[str, Any]:
        with self.store.reading() as db:
            _, version = self._version(db, datastoreId, imageSetId, versionId)
        return {
            "imageSetMetadataBlob": version["metadata"],
            "contentType": "application/json",
            "contentEncoding": "gzip",
        }

    def get_image_frame(
        self, datastoreId: str, imageSetId: str, imageFrameInformation: dict[str, str]
    ) -> dict[str, Any]:
        frame_id = imageFrameInformation["imageFrameId"]
        with self.store.reading() as db:
            image_set = self._image_set(db, datastoreId, imageSetId)
        document = decompress(image_set["metadata"])
        for series in document.get("Study", {}).get("Series", {}).values():
            for instance in series.get("Instances", {}).values():
                for frame in instance.get("ImageFrames", []):
                    if frame.get("ID") == frame_id:
                        # [I] No pixel data is kept: a deterministic stand-in for the HTJ2K frame.
                        return {
                            "imageFrameBlob": b"\xffO\xffQ" + hashlib.sha256(frame_id.encode()).digest(),
                            "contentType": "application/octet-stream",
                        }
        raise ResourceNotFoundException(f"Image frame {frame_id} does not exist in image set {imageSetId}.")

    def list_image_set_versions(
        self, datastoreId: str, imageSetId: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        with self.store.reading() as db:
            image_set = self._image_set(db, datastoreId, imageSetId, allow_deleted=True)
        page, token = self._page(
            "SELECT version, state, workflow_status, message, forced, created_at, updated_at, deleted_at FROM versions"
            " WHERE datastore_id = ? AND image_set_id = ? ORDER BY version DESC",
            [datastoreId, imageSetId],
            nextToken,
            maxResults,
            ("ListImageSetVersions", datastoreId, imageSetId),
        )
        items = []
        for row in page:
            items.append(
                {
                    "imageSetId": imageSetId,
                    "versionId": str(row["version"]),
                    "imageSetState": row["state"],
                    "ImageSetWorkflowStatus": row["workflow_status"],
                    "createdAt": row["created_at"],
                    "updatedAt": row["updated_at"],
                    "deletedAt": row["deleted_at"],
                    "message": row["message"],
                    "overrides": {"forced": True} if row["forced"] else None,
                    "isPrimary": bool(image_set["is_primary"]),
                }
            )
        return {"imageSetPropertiesList": items, "nextToken": token}

    _SEARCH_COLUMNS = {
        "DICOMPatientId": "patient_id",
        "DICOMAccessionNumber": "accession_number",
        "DICOMStudyId": "study_id",
        "DICOMStudyInstanceUID": "study_instance_uid",
        "createdAt": "created_at",
        "updatedAt": "updated_at",
        "DICOMStudyDateAndTime": "study_date_time",
        "isPrimary": "is_primary",
    }
    _RANGE_ATTRIBUTES = ("createdAt", "updatedAt", "DICOMStudyDateAndTime")
    _SORT_COLUMNS = {"updatedAt": "updated_at", "createdAt": "created_at", "DICOMStudyDateAndTime": "study_date_time"}

    @staticmethod
    def _search_value(attribute: str, value: Any) -> Any:
        if attribute == "DICOMStudyDateAndTime":
            return value["DICOMStudyDate"] + value.get("DICOMStudyTime", "").replace(":", "")
        if attribute == "isPrimary":
            return int(bool(value))
        return value

    def search_image_sets(
        self,
        datastoreId: str,
        searchCriteria: dict | None = None,
        maxResults: int | None = None,
        nextToken: str | None = None,
    ) -> dict[str, Any]:
        with self.store.reading() as db:
            self._datastore(db, datastoreId)
        criteria = searchCriteria or {}
        where, args = ["datastore_id = ?", "deleted_at IS NULL"], [datastoreId]
        for index, search_filter in enumerate(criteria.get("filters") or []):
            operator, values = search_filter["operator"], search_filter["values"]
            attributes = [next(iter(v)) for v in values]
            where_path = f"searchCriteria.filters[{index}]"
            if operator == "EQUAL":
                if len(values) != 1:
                    raise ValidationException(
                        f"{where_path}: the EQUAL operator takes exactly one value, got {len(values)}."
                    )
            else:
                if len(values) != 2 or attributes[0] != attributes[1]:
                    raise ValidationException(
                        f"{where_path}: the BETWEEN operator takes two values of the same attribute."
                    )
                if attributes[0] not in self._RANGE_ATTRIBUTES:
                    raise ValidationException(
                        f"{where_path}: BETWEEN applies to {', '.join(self._RANGE_ATTRIBUTES)} only, "
                        f"not {attributes[0]}."
                    )
            attribute = attributes[0]
            bounds = [self._search_value(attribute, v[attribute]) for v in values]
            if attribute == "DICOMSeriesInstanceUID":
                where.append("instr(series_instance_uid, ?) > 0")
                args.append(f"|{bounds[0]}|")
            elif operator == "EQUAL":
                where.append(f"{self._SEARCH_COLUMNS[attribute]} = ?")
                args.append(bounds[0])
            else:
                where.append(f"{self._SEARCH_COLUMNS[attribute]} BETWEEN ? AND ?")
                args.extend(bounds)
        sort = criteria.get("sort")
        order = "created_at ASC, image_set_id ASC"  # [I] AWS documents no default order
        if sort:
            order = f"{self._SORT_COLUMNS[sort['sortField']]} {sort['sortOrder']}, image_set_id {sort['sortOrder']}"
        sql = (
            f"SELECT image_set_id, latest_version, created_at, updated_at, dicom_tags, is_primary FROM image_sets"
            f" WHERE {' AND '.join(where)} ORDER BY {order}"
        )
        page, token = self._page(
            sql, args, nextToken, maxResults, ("SearchImageSets", datastoreId, json.dumps(criteria, sort_keys=True))
        )
        summaries = [
            {
                "imageSetId": row["image_set_id"],
                "version": row["latest_version"],
                "createdAt": row["created_at"],
                "updatedAt": row["updated_at"],
                "storageTier": STORAGE_TIER,
                "DICOMTags": json.loads(row["dicom_tags"]),
                "isPrimary": bool(row["is_primary"]),
            }
            for row in page
        ]
        return {"imageSetsMetadataSummaries": summaries, "sort": sort, "nextToken": token}
