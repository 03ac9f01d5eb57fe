"""Which Patient, Study and Series attributes HealthImaging compares before a copy into a destination.

Without ``force`` they must agree, or the copy is accepted and its destination version ends COPY_FAILED
(https://docs.aws.amazon.com/healthimaging/latest/devguide/copy-image-set.html, and the ``force``
parameter of https://docs.aws.amazon.com/healthimaging/latest/APIReference/API_CopyImageSet.html).
The dry run uses this to tell which rows need ``force``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PATIENT_KEYS = ("PatientID",)
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyID")
SERIES_KEYS = ("SeriesInstanceUID", "SeriesNumber")


def disagreements(source: Mapping[str, Any], destination: Mapping[str, Any], series_uids: list[str]) -> list[str]:
    """The levels (Patient, Study, Series <n>) at which a copy of ``series_uids`` would need ``force``.

    Names only the level and the attribute keyword, never a value (values may be patient data).
    """
    found: list[str] = []

    def compare(level: str, a: Mapping[str, Any], b: Mapping[str, Any], keys: tuple[str, ...]) -> None:
        differing = [k for k in keys if a.get(k) != b.get(k)]
        if differing:
            found.append(f"{level} ({', '.join(differing)})")

    compare(
        "Patient",
        source.get("Patient", {}).get("DICOM", {}),
        destination.get("Patient", {}).get("DICOM", {}),
        PATIENT_KEYS,
    )
    compare(
        "Study", source.get("Study", {}).get("DICOM", {}), destination.get("Study", {}).get("DICOM", {}), STUDY_KEYS
    )
    destination_series = destination.get("Study", {}).get("Series", {})
    for number, uid in enumerate(sorted(series_uids), start=1):
        theirs = destination_series.get(uid)
        if theirs is None:
            found.append(f"Series {number} (not in the destination)")
            continue
        compare(
            f"Series {number}",
            source.get("Study", {}).get("Series", {}).get(uid, {}).get("DICOM", {}),
            theirs.get("DICOM", {}),
            SERIES_KEYS,
        )
    return found
