"""The content rules of CopyImageSet, on metadata documents (no state, no HTTP).

- ``copiableAttributes`` selects SOP instances by DICOM UIDs:
  ``{"SchemaVersion": "1.1", "Study": {"Series": {"<SeriesUID>": {"Instances": {"<SOPUID>": {}}}}}}``.
- Without ``force``, the Patient, Study and Series level attributes that HealthImaging compares must
  agree between source and destination; otherwise the copy ends COPY_FAILED with a message.
- With ``force``, the destination keeps its own Patient, Study and Series metadata.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from healthimaging_emulator.exceptions import ValidationException

PATIENT_KEYS = ("PatientID",)
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyID")
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber")
SCHEMA_VERSIONS = ("1.1", 1.1)
_UID = re.compile(r"[0-9.]{1,64}")

Selection = dict[str, set[str]]


def parse_copiable_attributes(text: str) -> Selection:
    """The series → SOP instances a copiableAttributes string selects; ValidationException if malformed."""
    where = "copyImageSetInformation.sourceImageSet.DICOMCopies.copiableAttributes"
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ValidationException(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValidationException(f"{where} must be a JSON object")
    unknown = set(doc) - {"SchemaVersion", "Study"}
    if unknown:
        raise ValidationException(f"{where} has unknown keys {sorted(unknown)}; expected SchemaVersion and Study")
    if doc.get("SchemaVersion") not in SCHEMA_VERSIONS:
        raise ValidationException(f'{where}.SchemaVersion must be "1.1", got {doc.get("SchemaVersion")!r}')
    study = doc.get("Study")
    series_map = study.get("Series") if isinstance(study, dict) else None
    if not isinstance(series_map, dict) or not series_map:
        raise ValidationException(f"{where}.Study.Series must be a non-empty object keyed by SeriesInstanceUID")
    selection: Selection = {}
    for series_uid, series in series_map.items():
        if not _UID.fullmatch(series_uid):
            raise ValidationException(f"{where}: {series_uid!r} is not a DICOM SeriesInstanceUID (digits and dots)")
        instances = series.get("Instances") if isinstance(series, dict) else None
        if not isinstance(instances, dict) or not instances:
            raise ValidationException(
                f"{where}: series {series_uid} needs a non-empty Instances object keyed by SOPInstanceUID"
            )
        for sop_uid, value in instances.items():
            if not _UID.fullmatch(sop_uid):
                raise ValidationException(f"{where}: {sop_uid!r} is not a DICOM SOPInstanceUID (digits and dots)")
            if value not in ({}, None):
                raise ValidationException(f"{where}: instance {sop_uid} must map to {{}}")
        selection[series_uid] = set(instances)
    return selection


def select(document: dict[str, Any], selection: Selection | None) -> tuple[dict[str, Any], list[str]]:
    """The part of ``document`` a selection copies (all of it when None), and the selected UIDs it lacks."""
    result = copy.deepcopy(document)
    if selection is None:
        return result, []
    missing: list[str] = []
    all_series = result.get("Study", {}).get("Series", {})
    kept: dict[str, Any] = {}
    for series_uid, sop_uids in selection.items():
        series = all_series.get(series_uid)
        if series is None:
            missing.append(f"SeriesInstanceUID {series_uid}")
            continue
        instances = series.get("Instances", {})
        missing.extend(f"SOPInstanceUID {uid}" for uid in sorted(sop_uids) if uid not in instances)
        kept[series_uid] = {**series, "Instances": {uid: instances[uid] for uid in sop_uids if uid in instances}}
    result.setdefault("Study", {})["Series"] = kept
    return result, missing


def consistency_problem(source: dict[str, Any], destination: dict[str, Any]) -> str | None:
    """The COPY_FAILED message when source and destination disagree at Patient, Study or Series level."""

    def differs(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> bool:
        return any(a.get(k) != b.get(k) for k in keys)

    if differs(
        source.get("Patient", {}).get("DICOM", {}), destination.get("Patient", {}).get("DICOM", {}), PATIENT_KEYS
    ):
        return "INVALID_REQUEST: Patient of SourceImageSet and DestinationImageSet don't match."
    if differs(source.get("Study", {}).get("DICOM", {}), destination.get("Study", {}).get("DICOM", {}), STUDY_KEYS):
        return "INVALID_REQUEST: Study of SourceImageSet and DestinationImageSet don't match."
    dest_series = destination.get("Study", {}).get("Series", {})
    for series_uid, series in source.get("Study", {}).get("Series", {}).items():
        other = dest_series.get(series_uid)
        if other is None or differs(series.get("DICOM", {}), other.get("DICOM", {}), SERIES_KEYS):
            return "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match."
    return None


def merge(destination: dict[str, Any], copied: dict[str, Any]) -> dict[str, Any]:
    """``copied``'s instances added to ``destination``, whose Patient, Study and Series metadata stay.

    An instance already present (same SOPInstanceUID) is replaced: SOP Instance UIDs stay unique.
    """
    result = copy.deepcopy(destination)
    dest_series = result.setdefault("Study", {}).setdefault("Series", {})
    for series_uid, series in copied.get("Study", {}).get("Series", {}).items():
        target = dest_series.get(series_uid)
        if target is None:
            dest_series[series_uid] = copy.deepcopy(series)
        else:
            target.setdefault("Instances", {}).update(copy.deepcopy(series.get("Instances", {})))
    return result


def instance_count(document: dict[str, Any]) -> int:
    return sum(len(s.get("Instances", {})) for s in document.get("Study", {}).get("Series", {}).values())


def frame_total(document: dict[str, Any]) -> int:
    return sum(
        len(i.get("ImageFrames", []))
        for s in document.get("Study", {}).get("Series", {}).values()
        for i in s.get("Instances", {}).values()
    )
