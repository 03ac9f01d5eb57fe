"""HealthImaging image-set metadata documents built from DICOM files or generated synthetically.

No HTTP and no database here: this module turns DICOM Part 10 files into the JSON documents that
GetImageSetMetadata returns (one image set per series, as an import does), summarises a document as
the ``DICOMTags`` of SearchImageSets, and generates large numbers of synthetic documents quickly.

Document shape (SchemaVersion 1.1; the caller adds ``DatastoreID`` and ``ImageSetID``)::

    {"SchemaVersion": "1.1",
     "Patient": {"DICOM": {...}},
     "Study": {"DICOM": {...},
               "Series": {"<SeriesInstanceUID>": {
                   "DICOM": {...},
                   "Instances": {"<SOPInstanceUID>": {
                       "DICOM": {...},
                       "StoredTransferSyntaxUID": "1.2.840.10008.1.2.4.202",
                       "ImageFrames": [{"ID": "<32 chars>", "FrameSizeInBytes": n,
                                        "PixelDataChecksumFromBaseToFullResolution":
                                            [{"Width": w, "Height": h, "Checksum": c}]}]}}}}}}

Choices where AWS documents nothing [I]:

- Attribute values are JSON: text as str, PersonName as str, multi-valued as lists, IS/US/SS/… as
  int, DS/FL/FD as float (non-finite floats as str), sequences as lists of objects, a present but
  empty attribute as ``null`` (as AWS's examples show); bulk binary VRs are left out.
- Patient/Study/Series attributes come from the first instance of the series (instances sorted by
  InstanceNumber, then SOP Instance UID).
- An instance has image frames when it has Rows and Columns (the Image Pixel module, whose Pixel Data
  is mandatory): NumberOfFrames of them (1 if absent or invalid, none if 0).
- ``FrameSizeInBytes`` is the uncompressed frame size; the emulator keeps no pixel data, so the
  checksum is CRC-32 of the frame id (deterministic, not a pixel checksum), at full resolution only.
- Frame ids are the first 128 bits (32 lowercase hex chars, so ``[0-9a-z]{32}``) of BLAKE2b over
  study, series and SOP Instance UIDs and the frame index: deterministic and, in practice, unique.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import random
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

SCHEMA_VERSION = "1.1"
STORED_TRANSFER_SYNTAX_UID = "1.2.840.10008.1.2.4.202"  # HTJ2K lossless RPCL, as HealthImaging stores
DICOMDIR_SOP_CLASS_UID = "1.2.840.10008.1.3.10"

PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "QualityControlSubject",
)
STUDY_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
)
SERIES_KEYWORDS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "Laterality",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
    "PatientPosition",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)
INSTANCE_KEYWORDS: tuple[str, ...] = (
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
    "SpecificCharacterSet",
    "ImageType",
    "ContentDate",
    "ContentTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionNumber",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SliceLocation",
    "PixelSpacing",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "PixelAspectRatio",
    "NumberOfFrames",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
    "BurnedInAnnotation",
)

_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
_MAX_SEQUENCE_DEPTH = 4
MAX_FRAMES_PER_INSTANCE = 100_000  # a larger NumberOfFrames is taken for a corrupt header


@dataclass(slots=True)
class SeriesDocument:
    """One image set's metadata document (without DatastoreID/ImageSetID) and where it came from."""

    study_instance_uid: str
    series_instance_uid: str
    document: dict
    frame_count: int
    source_files: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Instance:
    """One accepted DICOM file, reduced to what a document needs."""

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    frames: int
    rows: int
    columns: int
    frame_size: int


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def _scalar_json(value: Any) -> Any:
    """One DICOM value as a JSON-friendly value."""
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    try:  # DSdecimal and similar numeric types
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(value)


def _element_json(element: DataElement, depth: int = 0) -> tuple[bool, Any]:
    """``(keep, value)`` for one element; bulk data and over-deep sequences are not kept."""
    if element.VR in _BULK_VRS:
        return False, None
    value = element.value
    if element.VR == "SQ":
        if depth >= _MAX_SEQUENCE_DEPTH:
            return False, None
        return True, [_dataset_json(item, depth + 1) for item in value]
    if value is None or value == "" or value == b"":
        return True, None
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_scalar_json(item) for item in value]
        return True, (items if items else None)
    return True, _scalar_json(value)


def _dataset_json(dataset: Dataset, depth: int = 0) -> dict[str, Any]:
    """A sequence item as a keyword-keyed dict (private and unknown tags left out)."""
    result: dict[str, Any] = {}
    for element in dataset:
        keyword = element.keyword
        if not keyword:
            continue
        try:
            keep, value = _element_json(element, depth)
        except Exception:  # noqa: BLE001 - a malformed value is left out, never fatal
            continue
        if keep:
            result[keyword] = value
    return result


def _attributes(dataset: Dataset, keywords: Iterable[str]) -> dict[str, Any]:
    """The listed top-level attributes present in ``dataset``, as JSON-friendly values."""
    result: dict[str, Any] = {}
    for keyword in keywords:
        try:
            element = dataset[keyword] if keyword in dataset else None
            if element is None:
                continue
            keep, value = _element_json(element)
        except Exception:  # noqa: BLE001 - a malformed value is left out, never fatal
            continue
        if keep:
            result[keyword] = value
    return result


def _as_int(value: Any, default: int | None = None) -> int | None:
    """``value`` as an int if it is one (or an integral number/numeric string), else ``default``."""
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int):
        return int(value)
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return default
    return int(number) if math.isfinite(number) and number == int(number) else default


def _uid(dataset: Dataset, keyword: str) -> str | None:
    """A UID attribute as a non-empty stripped string, or None."""
    try:
        value = dataset.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    if value is None or isinstance(value, (list, MultiValue)):
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text or None


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def frame_id(study_uid: str, series_uid: str, sop_uid: str, index: int) -> str:
    """The deterministic image frame id (32 chars of ``[0-9a-z]``) of frame ``index`` of an instance."""
    key = f"{study_uid}/{series_uid}/{sop_uid}/{index}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def _image_frames(
    study_uid: str, series_uid: str, sop_uid: str, count: int, rows: int, columns: int, size: int
) -> list[dict[str, Any]]:
    """The ImageFrames list of one instance."""
    frames = []
    for index in range(count):
        fid = frame_id(study_uid, series_uid, sop_uid, index)
        frames.append(
            {
                "ID": fid,
                "FrameSizeInBytes": size,
                "PixelDataChecksumFromBaseToFullResolution": [
                    {"Width": columns, "Height": rows, "Checksum": zlib.crc32(fid.encode())}
                ],
            }
        )
    return frames


def _frame_geometry(dataset: Dataset) -> tuple[int, int, int, int]:
    """``(frames, rows, columns, frame_size_in_bytes)``; no frames without Rows and Columns."""
    try:
        rows = _as_int(dataset.get("Rows"), 0) or 0
        columns = _as_int(dataset.get("Columns"), 0) or 0
        samples = _as_int(dataset.get("SamplesPerPixel"), 1) or 1
        bits = _as_int(dataset.get("BitsAllocated"), 8) or 8
        frames = _as_int(dataset.get("NumberOfFrames"), 1) if "NumberOfFrames" in dataset else 1
    except Exception:  # noqa: BLE001 - unreadable geometry: treat as no pixel data
        return 0, 0, 0, 0
    if rows <= 0 or columns <= 0:
        return 0, 0, 0, 0
    frames = max(frames if frames is not None else 1, 0)
    return frames, rows, columns, (rows * columns * samples * bits + 7) // 8


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _read_instance(path: str) -> _Instance | str:
    """The instance in ``path``, or the reason it is not accepted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=False)
            return _instance_from_dataset(path, dataset)
    except InvalidDicomError:
        return "not a DICOM Part 10 file (no preamble/DICM prefix)"
    except IsADirectoryError:
        return "is a directory"
    except OSError as exc:
        return f"cannot read file ({type(exc).__name__})"
    except Exception as exc:  # noqa: BLE001 - a bad file is reported, never raised
        return f"cannot parse DICOM ({type(exc).__name__})"


def _instance_from_dataset(path: str, dataset: Dataset) -> _Instance | str:
    """Reduce a parsed dataset to an instance, or give the reason it is not accepted."""
    meta = getattr(dataset, "file_meta", None)
    media_class = _uid(meta, "MediaStorageSOPClassUID") if meta is not None else None
    if media_class == DICOMDIR_SOP_CLASS_UID:
        return "DICOMDIR (media storage directory), not an instance"
    uids = {kw: _uid(dataset, kw) for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    missing = [kw for kw, value in uids.items() if not value]
    if missing:
        return "missing " + ", ".join(missing)
    frames, rows, columns, size = _frame_geometry(dataset)
    if frames > MAX_FRAMES_PER_INSTANCE:
        return f"implausible NumberOfFrames (more than {MAX_FRAMES_PER_INSTANCE})"
    instance = _attributes(dataset, INSTANCE_KEYWORDS)
    instance["SOPInstanceUID"] = uids["SOPInstanceUID"]
    if "SOPClassUID" not in instance and media_class:
        instance["SOPClassUID"] = media_class
    study = _attributes(dataset, STUDY_KEYWORDS)
    study["StudyInstanceUID"] = uids["StudyInstanceUID"]
    series = _attributes(dataset, SERIES_KEYWORDS)
    series["SeriesInstanceUID"] = uids["SeriesInstanceUID"]
    return _Instance(
        path=path,
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        patient=_attributes(dataset, PATIENT_KEYWORDS),
        study=study,
        series=series,
        instance=instance,
        frames=frames,
        rows=rows,
        columns=columns,
        frame_size=size,
    )


def _instance_order(instance: _Instance) -> tuple[int, int, str]:
    number = _as_int(instance.instance.get("InstanceNumber"))
    return (0, number, instance.sop_uid) if number is not None else (1, 0, instance.sop_uid)


def _series_document(instances: list[_Instance]) -> SeriesDocument:
    """The document of one series (all ``instances`` share study and series UIDs)."""
    ordered = sorted(instances, key=_instance_order)
    first = ordered[0]
    entries: dict[str, Any] = {}
    total_frames = 0
    for inst in ordered:
        frames = _image_frames(
            inst.study_uid,
            inst.series_uid,
            inst.sop_uid,
            inst.frames,
            inst.rows,
            inst.columns,
            inst.frame_size,
        )
        total_frames += len(frames)
        entries[inst.sop_uid] = {
            "DICOM": inst.instance,
            "StoredTransferSyntaxUID": STORED_TRANSFER_SYNTAX_UID,
            "ImageFrames": frames,
        }
    document = {
        "SchemaVersion": SCHEMA_VERSION,
        "Patient": {"DICOM": dict(first.patient)},
        "Study": {
            "DICOM": dict(first.study),
            "Series": {first.series_uid: {"DICOM": dict(first.series), "Instances": entries}},
        },
    }
    return SeriesDocument(
        study_instance_uid=first.study_uid,
        series_instance_uid=first.series_uid,
        document=document,
        frame_count=total_frames,
        source_files=[inst.path for inst in ordered],
    )


def documents_from_files(
    paths: Iterable[str | Path],
) -> tuple[list[SeriesDocument], list[tuple[str, str]]]:
    """Read DICOM files and build one metadata document per (study, series).

    Returns ``(documents, skipped)``: documents sorted by study then series UID, and
    ``(path, reason)`` for every file not used (not DICOM, unreadable, DICOMDIR, missing a UID, or a
    duplicate SOP Instance UID within its series, of which the first file given is kept). Never
    raises for a bad file. Pixel data is not read.
    """
    groups: dict[tuple[str, str], dict[str, _Instance]] = {}
    skipped: list[tuple[str, str]] = []
    for raw_path in paths:
        path = os.fspath(raw_path)
        result = _read_instance(path)
        if isinstance(result, str):
            skipped.append((path, result))
            continue
        series = groups.setdefault((result.study_uid, result.series_uid), {})
        kept = series.get(result.sop_uid)
        if kept is not None:
            skipped.append((path, f"duplicate SOP Instance UID in its series; kept {kept.path}"))
            continue
        series[result.sop_uid] = result
    documents = [_series_document(list(groups[key].values())) for key in sorted(groups)]
    return documents, skipped


def pydicom_sample_files() -> list[str]:
    """pydicom's bundled test files (regular files, including ``dicomdirtests/``), sorted.

    Lists ``pydicom/data/test_files`` on disk, which is exactly the local part of
    ``pydicom.data.get_testdata_files()``. That function is not called because with any pattern
    other than its default it tries to download pydicom-data files; this never touches the network.
    """
    root = Path(pydicom.data.DATA_ROOT) / "test_files"
    return sorted(os.fspath(p) for p in root.rglob("*") if p.is_file() and p.suffix != ".py")


# --------------------------------------------------------------------------------------------
# Reading documents
# --------------------------------------------------------------------------------------------


def _series_map(document: dict) -> dict[str, Any]:
    series = (document.get("Study") or {}).get("Series") or {}
    return series if isinstance(series, dict) else {}


def series_uids(document: dict) -> list[str]:
    """The Series Instance UIDs of a document, sorted."""
    return sorted(_series_map(document))


def sop_instance_uids(document: dict) -> set[str]:
    """All SOP Instance UIDs of a document (every series)."""
    return {sop for series in _series_map(document).values() for sop in ((series or {}).get("Instances") or {})}


def _instances(document: dict) -> Iterator[dict]:
    for series in _series_map(document).values():
        yield from ((series or {}).get("Instances") or {}).values()


def frame_ids(document: dict) -> set[str]:
    """All image frame ids of a document."""
    return {
        frame["ID"]
        for instance in _instances(document)
        for frame in ((instance or {}).get("ImageFrames") or [])
        if isinstance(frame, dict) and "ID" in frame
    }


def frame_count(document: dict) -> int:
    """The number of image frames in a document (every series and instance)."""
    return sum(len((instance or {}).get("ImageFrames") or []) for instance in _instances(document))


# --------------------------------------------------------------------------------------------
# DICOMTags (SearchImageSets summaries)
# --------------------------------------------------------------------------------------------

# DICOMTags member -> (document level, DICOM keyword)
_TAG_SOURCES: dict[str, tuple[str, str]] = {
    "DICOMPatientId": ("Patient", "PatientID"),
    "DICOMPatientName": ("Patient", "PatientName"),
    "DICOMPatientBirthDate": ("Patient", "PatientBirthDate"),
    "DICOMPatientSex": ("Patient", "PatientSex"),
    "DICOMStudyInstanceUID": ("Study", "StudyInstanceUID"),
    "DICOMStudyId": ("Study", "StudyID"),
    "DICOMStudyDescription": ("Study", "StudyDescription"),
    "DICOMAccessionNumber": ("Study", "AccessionNumber"),
    "DICOMStudyDate": ("Study", "StudyDate"),
    "DICOMStudyTime": ("Study", "StudyTime"),
    "DICOMSeriesInstanceUID": ("Series", "SeriesInstanceUID"),
    "DICOMSeriesModality": ("Series", "Modality"),
    "DICOMSeriesBodyPart": ("Series", "BodyPartExamined"),
    "DICOMSeriesNumber": ("Series", "SeriesNumber"),
}


@functools.cache
def _tag_constraints() -> dict[str, tuple[str, int | None, int | None, str | None]]:
    """DICOMTags member -> (type, min, max, pattern) from botocore's service model."""
    from healthimaging_emulator.service_model import service_model

    shape = service_model().shape_for("DICOMTags")
    return {
        name: (member.type_name, member.metadata.get("min"), member.metadata.get("max"), member.metadata.get("pattern"))
        for name, member in shape.members.items()
    }


def _tag_string(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, bool)):
        return None
    if isinstance(value, list):
        parts = [str(v) for v in value if v is not None and not isinstance(v, (dict, list))]
        return "\\".join(parts) if parts else None
    return str(value)


def _tag_value(name: str, value: Any) -> str | int | None:
    """``value`` for DICOMTags member ``name`` if it satisfies the model's constraints, else None."""
    kind, low, high, pattern = _tag_constraints().get(name, ("string", None, None, None))
    if kind == "integer":
        number = _as_int(value[0] if isinstance(value, list) and len(value) == 1 else value)
        if number is None or (low is not None and number < low) or (high is not None and number > high):
            return None
        return number
    text = _tag_string(value)
    if not text:
        return None
    if (high is not None and len(text) > high) or (low is not None and len(text) < low):
        return None
    if pattern and not re.fullmatch(pattern, text):
        return None
    return text


def dicom_tags(document: dict) -> dict[str, str | int]:
    """The ``DICOMTags`` summary of a document for SearchImageSets.

    Absent and empty attributes are omitted, and so is any value that would break the model's
    constraints (length, UID pattern, integer range). With several series, series-level tags come
    from the first series by Series Instance UID; the counts cover the whole document.
    """
    series_map = _series_map(document)
    first_series = series_map[min(series_map)] if series_map else {}
    levels = {
        "Patient": ((document.get("Patient") or {}).get("DICOM")) or {},
        "Study": ((document.get("Study") or {}).get("DICOM")) or {},
        "Series": ((first_series or {}).get("DICOM")) or {},
    }
    tags: dict[str, str | int] = {}
    for name, (level, keyword) in _TAG_SOURCES.items():
        value = _tag_value(name, levels[level].get(keyword))
        if value is not None:
            tags[name] = value
    counts = {
        "DICOMNumberOfStudyRelatedSeries": len(series_map),
        "DICOMNumberOfStudyRelatedInstances": len(sop_instance_uids(document)),
    }
    for name, count in counts.items():
        value = _tag_value(name, count)
        if value is not None:
            tags[name] = value
    return {name: tags[name] for name in _tag_constraints() if name in tags}


# --------------------------------------------------------------------------------------------
# Synthetic documents
# --------------------------------------------------------------------------------------------

# modality -> (SOP Class UID, body parts, rows, columns, bits allocated, samples, photometric)
_SYNTHETIC_MODALITIES: tuple[tuple[str, str, tuple[str, ...], int, int, int, int, str], ...] = (
    ("CT", "1.2.840.10008.5.1.4.1.1.2", ("CHEST", "ABDOMEN", "HEAD", "PELVIS"), 512, 512, 16, 1, "MONOCHROME2"),
    ("MR", "1.2.840.10008.5.1.4.1.1.4", ("BRAIN", "KNEE", "SPINE", "HEART"), 256, 256, 16, 1, "MONOCHROME2"),
    ("CR", "1.2.840.10008.5.1.4.1.1.1", ("CHEST", "HAND", "FOOT"), 2048, 2048, 16, 1, "MONOCHROME1"),
    ("DX", "1.2.840.10008.5.1.4.1.1.1.1", ("CHEST", "SHOULDER", "HIP"), 2048, 1680, 16, 1, "MONOCHROME2"),
    ("US", "1.2.840.10008.5.1.4.1.1.6.1", ("ABDOMEN", "HEART", "NECK"), 480, 640, 8, 3, "RGB"),
    ("PT", "1.2.840.10008.5.1.4.1.1.128", ("WHOLEBODY", "BRAIN"), 128, 128, 16, 1, "MONOCHROME2"),
    ("MG", "1.2.840.10008.5.1.4.1.1.1.2", ("BREAST",), 3328, 2560, 16, 1, "MONOCHROME2"),
)
_SYNTHETIC_EPOCH = date(2000, 1, 1)


def synthetic_documents(
    n: int, seed: int = 0, instances_per_series: int = 3, frames_per_instance: int = 1
) -> Iterator[SeriesDocument]:
    """Generate ``n`` synthetic series documents (no real patient data), deterministic per seed.

    UIDs are ``2.25.<96-bit seeded root>.<kind>.<counter>…`` (unique within a seed, ``[0-9.]+``,
    at most 64 chars); each study has 1–9 series (about 5) and each patient 1–3 studies (about 2).
    Names look like ``SYNTHETIC^PATIENT000001``. ``source_files`` is empty.
    """
    if n < 0 or instances_per_series < 1 or frames_per_instance < 0:
        raise ValueError("n, instances_per_series and frames_per_instance must be non-negative (instances >= 1)")
    rng = random.Random(seed)
    root = f"2.25.{rng.getrandbits(96) | 1}"
    patient_no = study_no = 0
    studies_left = series_left = 0
    patient: dict[str, Any] = {}
    study: dict[str, Any] = {}
    series_in_study = 0
    for series_no in range(n):
        if series_left == 0:
            if studies_left == 0:
                patient_no += 1
                studies_left = rng.randint(1, 3)
                patient = _synthetic_patient(rng, patient_no)
            studies_left -= 1
            study_no += 1
            series_left = rng.randint(1, 9)
            series_in_study = 0
            study = _synthetic_study(rng, root, study_no)
        series_left -= 1
        series_in_study += 1
        yield _synthetic_series(
            rng,
            root,
            series_no + 1,
            series_in_study,
            patient,
            study,
            instances_per_series,
            frames_per_instance,
        )


def _synthetic_patient(rng: random.Random, number: int) -> dict[str, Any]:
    birth = _SYNTHETIC_EPOCH - timedelta(days=rng.randrange(365 * 90))
    return {
        "PatientName": f"SYNTHETIC^PATIENT{number:06d}",
        "PatientID": f"SYN{number:08d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": rng.choice(("F", "M", "O")),
    }


def _synthetic_study(rng: random.Random, root: str, number: int) -> dict[str, Any]:
    day = _SYNTHETIC_EPOCH + timedelta(days=rng.randrange(365 * 25))
    seconds = rng.randrange(7 * 3600, 20 * 3600)
    return {
        "StudyInstanceUID": f"{root}.1.{number}",
        "StudyDate": day.strftime("%Y%m%d"),
        "StudyTime": f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        "AccessionNumber": f"SACC{number:010d}",
        "StudyID": str(number % 100000),
        "StudyDescription": f"SYNTHETIC STUDY {number}",
        "ReferringPhysicianName": "SYNTHETIC^REFERRER",
    }


def _synthetic_series(
    rng: random.Random,
    root: str,
    number: int,
    number_in_study: int,
    patient: dict,
    study: dict,
    instances: int,
    frames: int,
) -> SeriesDocument:
    modality, sop_class, parts, rows, columns, bits, samples, photometric = rng.choice(_SYNTHETIC_MODALITIES)
    study_uid = study["StudyInstanceUID"]
    series_uid = f"{root}.2.{number}"
    size = rows * columns * samples * bits // 8
    pixel = {
        "SamplesPerPixel": samples,
        "PhotometricInterpretation": photometric,
        "Rows": rows,
        "Columns": columns,
        "BitsAllocated": bits,
        "BitsStored": bits if bits == 8 else 12,
        "HighBit": 7 if bits == 8 else 11,
        "PixelRepresentation": 0,
    }
    if frames != 1:
        pixel["NumberOfFrames"] = frames
    entries = {}
    for index in range(1, instances + 1):
        sop_uid = f"{root}.3.{number}.{index}"
        dicom = {"SOPInstanceUID": sop_uid, "SOPClassUID": sop_class, "InstanceNumber": index}
        dicom.update(pixel)
        entries[sop_uid] = {
            "DICOM": dicom,
            "StoredTransferSyntaxUID": STORED_TRANSFER_SYNTAX_UID,
            "ImageFrames": _image_frames(study_uid, series_uid, sop_uid, frames, rows, columns, size),
        }
    series = {
        "SeriesInstanceUID": series_uid,
        "Modality": modality,
        "SeriesNumber": number_in_study,
        "BodyPartExamined": rng.choice(parts),
        "SeriesDescription": f"SYNTHETIC {modality} SERIES",
    }
    document = {
        "SchemaVersion": SCHEMA_VERSION,
        "Patient": {"DICOM": dict(patient)},
        "Study": {"DICOM": dict(study), "Series": {series_uid: {"DICOM": series, "Instances": entries}}},
    }
    return SeriesDocument(study_uid, series_uid, document, instances * frames, [])
