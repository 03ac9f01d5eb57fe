"""Tests of healthimaging_emulator.dicom_metadata: documents from files, DICOMTags, synthetic data."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import types
import warnings
from collections import defaultdict
from pathlib import Path

import botocore.session
import pydicom
import pytest

from healthimaging_emulator import dicom_metadata as dm

FRAME_ID = re.compile(r"[0-9a-z]{32}")
UID = re.compile(r"[0-9.]+")


@pytest.fixture(scope="module")
def sample_files() -> list[str]:
    return dm.pydicom_sample_files()


@pytest.fixture(scope="module")
def sample_result(sample_files):
    return dm.documents_from_files(sample_files)


@pytest.fixture(scope="module")
def tag_shape():
    model = botocore.session.get_session().get_service_model("medical-imaging")
    return model.shape_for("DICOMTags")


def _by_name(files: list[str], name: str) -> str:
    matches = [f for f in files if os.path.basename(f) == name]
    assert len(matches) == 1, name
    return matches[0]


def _doc_of(documents: list[dm.SeriesDocument], path: str) -> dm.SeriesDocument:
    matches = [d for d in documents if path in d.source_files]
    assert len(matches) == 1, path
    return matches[0]


def _only_series(document: dict) -> dict:
    (series,) = document["Study"]["Series"].values()
    return series


def assert_valid_tags(tags: dict, shape) -> None:
    """Every DICOMTags value satisfies the model's type, length, range and pattern."""
    for name, value in tags.items():
        assert name in shape.members, name
        member = shape.members[name]
        meta = member.metadata
        if member.type_name == "integer":
            assert type(value) is int, (name, value)
            assert meta.get("min", value) <= value <= meta.get("max", value), (name, value)
        else:
            assert isinstance(value, str), (name, value)
            assert meta.get("min", 0) <= len(value) <= meta.get("max", len(value)), name
            if "pattern" in meta:
                assert re.fullmatch(meta["pattern"], value), (name, value)


def _write_ct_variant(tmp_path: Path, name: str, files: list[str], **changes) -> str:
    """A copy of CT_small.dcm with attributes changed (None deletes)."""
    ds = pydicom.dcmread(_by_name(files, "CT_small.dcm"))
    for keyword, value in changes.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# pydicom's sample files
# ---------------------------------------------------------------------------------------------


def test_sample_files_are_local_files_including_dicomdirtests(sample_files):
    assert len(sample_files) > 100
    assert all(os.path.isfile(f) for f in sample_files)
    assert any("dicomdirtests" in f for f in sample_files)
    assert any(f.endswith("CT_small.dcm") for f in sample_files)
    assert sample_files == sorted(sample_files)


def test_every_sample_file_is_used_or_reported(sample_files, sample_result):
    documents, skipped = sample_result
    used = [f for d in documents for f in d.source_files]
    assert len(used) == len(set(used))
    assert sorted(used + [p for p, _ in skipped]) == sorted(sample_files)
    assert all(isinstance(reason, str) and reason for _, reason in skipped)


def test_sample_grouping_is_one_image_set_per_series(sample_result):
    documents, _ = sample_result
    keys = [(d.study_instance_uid, d.series_instance_uid) for d in documents]
    assert len(keys) == len(set(keys))
    assert keys == sorted(keys)
    for doc in documents:
        assert dm.series_uids(doc.document) == [doc.series_instance_uid]
        assert doc.document["Study"]["DICOM"]["StudyInstanceUID"] == doc.study_instance_uid
        for path in doc.source_files:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.StudyInstanceUID == doc.study_instance_uid
            assert ds.SeriesInstanceUID == doc.series_instance_uid
            assert ds.SOPInstanceUID in dm.sop_instance_uids(doc.document)
        assert len(dm.sop_instance_uids(doc.document)) == len(doc.source_files)
        assert doc.frame_count == dm.frame_count(doc.document)
    # pydicom 3.0.2 (the pinned version): 36 series in 29 studies; these bounds stay plausible on upgrades
    assert 30 <= len(documents) <= 60
    assert 20 <= len({d.study_instance_uid for d in documents}) <= len(documents)


def test_pydicom_3_0_2_samples_make_36_series_in_29_studies(sample_result):
    # requirements.txt pins pydicom 3.0.2; a new pin that changes the sample files must change these counts.
    assert pydicom.__version__ == "3.0.2", f"the counts below are pydicom 3.0.2's, not {pydicom.__version__}'s"
    documents, _ = sample_result
    assert len(documents) == 36
    assert len({d.study_instance_uid for d in documents}) == 29


def test_sample_skip_reasons(sample_files, sample_result):
    _, skipped = sample_result
    reasons = dict(skipped)
    dicomdirs = [f for f in sample_files if os.path.basename(f).startswith("DICOMDIR")]
    assert dicomdirs
    assert all("DICOMDIR" in reasons[f] for f in dicomdirs)
    readme = next(f for f in sample_files if f.endswith(os.path.join("test_files", "README.txt")))
    assert "not a DICOM" in reasons[readme]
    assert "missing" in reasons[_by_name(sample_files, "UN_sequence.dcm")]
    assert any("duplicate" in r for r in reasons.values())


def test_ct_small_values_are_in_the_right_places(sample_files, sample_result):
    path = _by_name(sample_files, "CT_small.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    doc = _doc_of(sample_result[0], path)
    document = doc.document
    assert document["SchemaVersion"] == "1.1"
    assert "DatastoreID" not in document and "ImageSetID" not in document
    assert document["Patient"]["DICOM"]["PatientID"] == ds.PatientID
    assert document["Patient"]["DICOM"]["PatientName"] == str(ds.PatientName)
    study = document["Study"]["DICOM"]
    assert study["StudyInstanceUID"] == ds.StudyInstanceUID
    assert study["StudyDate"] == ds.StudyDate
    assert document["Study"]["Series"].keys() == {ds.SeriesInstanceUID}
    series = document["Study"]["Series"][ds.SeriesInstanceUID]
    assert series["DICOM"]["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert series["DICOM"]["Modality"] == "CT"
    assert series["DICOM"]["SeriesNumber"] == int(ds.SeriesNumber)
    assert "Modality" not in study and "Modality" not in document["Patient"]["DICOM"]
    instance = series["Instances"][ds.SOPInstanceUID]
    assert instance["DICOM"]["SOPInstanceUID"] == ds.SOPInstanceUID
    assert instance["DICOM"]["SOPClassUID"] == ds.SOPClassUID
    assert instance["DICOM"]["Rows"] == 128 and instance["DICOM"]["Columns"] == 128
    assert instance["DICOM"]["ImageType"] == list(ds.ImageType)
    assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.202"
    (frame,) = instance["ImageFrames"]
    assert FRAME_ID.fullmatch(frame["ID"])
    assert frame["FrameSizeInBytes"] == 128 * 128 * 2
    (level,) = frame["PixelDataChecksumFromBaseToFullResolution"]
    assert level["Width"] == 128 and level["Height"] == 128 and isinstance(level["Checksum"], int)
    assert '"PixelData"' not in json.dumps(document)


def test_multiframe_and_frameless_instances(sample_files, sample_result):
    documents, _ = sample_result
    # rtdose.dcm shares its SOP Instance UID with badVR.dcm (kept first), so read it alone
    path = _by_name(sample_files, "rtdose.dcm")
    (rtdose,), _ = dm.documents_from_files([path])
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    frames = _only_series(rtdose.document)["Instances"][sop]["ImageFrames"]
    assert len(frames) == 15
    assert len({f["ID"] for f in frames}) == 15
    for name in ("rtplan.dcm", "test-SR.dcm", "reportsi.dcm"):
        path = _by_name(sample_files, name)
        sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        doc = _doc_of(documents, path)
        assert _only_series(doc.document)["Instances"][sop]["ImageFrames"] == []


def test_sample_documents_are_strict_json_with_unique_deterministic_frame_ids(sample_files, sample_result):
    documents, _ = sample_result
    for doc in documents:
        json.dumps(doc.document, allow_nan=False)
    ids = [i for d in documents for i in dm.frame_ids(d.document)]
    assert all(FRAME_ID.fullmatch(i) for i in ids)
    assert len(ids) == len(set(ids)) == sum(d.frame_count for d in documents)
    again, _ = dm.documents_from_files(sample_files)
    assert [d.document for d in again] == [d.document for d in documents]


def test_sample_dicom_tags_satisfy_the_model(sample_result, tag_shape):
    for doc in sample_result[0]:
        tags = dm.dicom_tags(doc.document)
        assert_valid_tags(tags, tag_shape)
        assert tags["DICOMSeriesInstanceUID"] == doc.series_instance_uid
        assert tags["DICOMNumberOfStudyRelatedSeries"] == 1
        assert tags["DICOMNumberOfStudyRelatedInstances"] == len(doc.source_files)


# ---------------------------------------------------------------------------------------------
# Bad files and duplicates
# ---------------------------------------------------------------------------------------------


def test_bad_files_are_reported_not_raised(tmp_path, sample_files):
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("this is not DICOM\n")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(_by_name(sample_files, "CT_small.dcm")).read_bytes()[:140])
    no_series = _write_ct_variant(tmp_path, "no_series.dcm", sample_files, SeriesInstanceUID=None)
    no_sop = _write_ct_variant(tmp_path, "no_sop.dcm", sample_files, SOPInstanceUID=None)
    good = _by_name(sample_files, "CT_small.dcm")
    missing = tmp_path / "does-not-exist.dcm"
    paths = [not_dicom, empty, truncated, no_series, no_sop, tmp_path, missing, good]

    documents, skipped = dm.documents_from_files(paths)

    assert [d.source_files for d in documents] == [[good]]
    reasons = dict(skipped)
    assert set(reasons) == {os.fspath(p) for p in paths if p != good}
    assert "not a DICOM" in reasons[str(not_dicom)]
    assert "SeriesInstanceUID" in reasons[no_series]
    assert "SOPInstanceUID" in reasons[no_sop]
    patient_name = str(pydicom.dcmread(good, stop_before_pixels=True).PatientName)
    assert all(patient_name not in r for r in reasons.values())


def test_empty_input():
    assert dm.documents_from_files([]) == ([], [])


def test_duplicate_sop_in_one_series_keeps_the_first(tmp_path, sample_files):
    source = _by_name(sample_files, "CT_small.dcm")
    first, second = tmp_path / "a.dcm", tmp_path / "b.dcm"
    shutil.copy(source, first)
    shutil.copy(source, second)
    documents, skipped = dm.documents_from_files([first, second])
    (doc,) = documents
    assert doc.source_files == [str(first)]
    assert len(dm.sop_instance_uids(doc.document)) == 1
    assert doc.frame_count == 1
    assert skipped == [(str(second), skipped[0][1])]
    assert "duplicate" in skipped[0][1]


def test_same_sop_in_another_series_is_a_separate_image_set(tmp_path, sample_files):
    source = _by_name(sample_files, "CT_small.dcm")
    other = _write_ct_variant(tmp_path, "other.dcm", sample_files, SeriesInstanceUID="1.2.3.4.5")
    documents, skipped = dm.documents_from_files([source, other])
    assert skipped == []
    assert len(documents) == 2
    assert dm.sop_instance_uids(documents[0].document) == dm.sop_instance_uids(documents[1].document)
    assert dm.frame_ids(documents[0].document).isdisjoint(dm.frame_ids(documents[1].document))


def test_instances_of_a_series_are_grouped_and_ordered(tmp_path, sample_files):
    paths = [
        _write_ct_variant(tmp_path, f"i{n}.dcm", sample_files, SOPInstanceUID=f"1.2.3.{n}", InstanceNumber=n)
        for n in (3, 1, 2)
    ]
    (doc,), skipped = dm.documents_from_files(paths)
    assert skipped == []
    instances = _only_series(doc.document)["Instances"]
    assert list(instances) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert doc.source_files == [paths[1], paths[2], paths[0]]
    assert doc.frame_count == 3 == dm.frame_count(doc.document)


# ---------------------------------------------------------------------------------------------
# DICOMTags
# ---------------------------------------------------------------------------------------------


def test_dicom_tags_omit_values_that_break_the_model(tag_shape):
    document = {
        "SchemaVersion": "1.1",
        "Patient": {
            "DICOM": {"PatientID": "P" * 600, "PatientName": "DOE^JANE", "PatientSex": None, "PatientBirthDate": ""}
        },
        "Study": {
            "DICOM": {"StudyInstanceUID": "1.2.abc", "StudyDate": "20240101", "StudyTime": "1" * 57},
            "Series": {
                "1.2.3": {
                    "DICOM": {"SeriesInstanceUID": "1.2.3", "SeriesNumber": "x7", "Modality": "MR"},
                    "Instances": {},
                }
            },
        },
    }
    tags = dm.dicom_tags(document)
    assert_valid_tags(tags, tag_shape)
    assert tags == {
        "DICOMPatientName": "DOE^JANE",
        "DICOMNumberOfStudyRelatedSeries": 1,
        "DICOMNumberOfStudyRelatedInstances": 0,
        "DICOMSeriesInstanceUID": "1.2.3",
        "DICOMSeriesModality": "MR",
        "DICOMStudyDate": "20240101",
    }


def test_dicom_tags_series_number_is_an_int():
    document = next(dm.synthetic_documents(1)).document
    _only_series(document)["DICOM"]["SeriesNumber"] = "12"
    assert dm.dicom_tags(document)["DICOMSeriesNumber"] == 12


def test_dicom_tags_of_a_merged_image_set(tag_shape):
    a, b = list(dm.synthetic_documents(2, seed=3, instances_per_series=2))
    merged = copy.deepcopy(b.document)
    merged["Study"]["Series"].update(copy.deepcopy(a.document["Study"]["Series"]))
    tags = dm.dicom_tags(merged)
    assert_valid_tags(tags, tag_shape)
    first = min(a.series_instance_uid, b.series_instance_uid)
    assert tags["DICOMSeriesInstanceUID"] == first
    assert tags["DICOMNumberOfStudyRelatedSeries"] == 2
    assert tags["DICOMNumberOfStudyRelatedInstances"] == 4
    assert dm.series_uids(merged) == sorted([a.series_instance_uid, b.series_instance_uid])
    assert dm.frame_count(merged) == 4
    assert dm.sop_instance_uids(merged) == (dm.sop_instance_uids(a.document) | dm.sop_instance_uids(b.document))


def test_document_helpers_tolerate_empty_documents():
    assert dm.series_uids({}) == []
    assert dm.sop_instance_uids({}) == set()
    assert dm.frame_count({}) == 0
    assert dm.dicom_tags({}) == {
        "DICOMNumberOfStudyRelatedSeries": 0,
        "DICOMNumberOfStudyRelatedInstances": 0,
    }


# ---------------------------------------------------------------------------------------------
# Synthetic documents
# ---------------------------------------------------------------------------------------------


def _valid_uid(uid: str) -> bool:
    return (
        len(uid) <= 64
        and UID.fullmatch(uid) is not None
        and all(part == "0" or (part and not part.startswith("0")) for part in uid.split("."))
    )


def test_synthetic_documents_are_unique_and_consistent(tag_shape):
    docs = list(dm.synthetic_documents(1000, seed=7))
    assert len(docs) == 1000
    series = [d.series_instance_uid for d in docs]
    assert len(set(series)) == 1000
    sops = [s for d in docs for s in dm.sop_instance_uids(d.document)]
    assert len(sops) == len(set(sops)) == 3000
    frames = [f for d in docs for f in dm.frame_ids(d.document)]
    assert len(frames) == len(set(frames)) == 3000
    assert all(FRAME_ID.fullmatch(f) for f in frames)

    patients: dict[str, dict] = {}
    studies: dict[str, tuple[dict, str]] = {}
    for doc in docs:
        document = doc.document
        json.dumps(document, allow_nan=False)
        assert doc.source_files == []
        assert doc.frame_count == dm.frame_count(document) == 3
        patient = document["Patient"]["DICOM"]
        study = document["Study"]["DICOM"]
        assert patient["PatientName"].startswith("SYNTHETIC^PATIENT")
        assert study["StudyInstanceUID"] == doc.study_instance_uid
        assert patients.setdefault(patient["PatientID"], patient) == patient
        assert studies.setdefault(doc.study_instance_uid, (study, patient["PatientID"])) == (
            study,
            patient["PatientID"],
        )
        (uid,) = document["Study"]["Series"]
        assert uid == doc.series_instance_uid
        entry = document["Study"]["Series"][uid]
        assert entry["DICOM"]["SeriesInstanceUID"] == uid
        for sop, instance in entry["Instances"].items():
            assert instance["DICOM"]["SOPInstanceUID"] == sop
            assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.202"
            assert _valid_uid(sop)
        assert _valid_uid(uid) and _valid_uid(doc.study_instance_uid)
        tags = dm.dicom_tags(document)
        assert_valid_tags(tags, tag_shape)
        assert len(tags) == len(tag_shape.members)

    series_per_study = 1000 / len(studies)
    studies_per_patient = len(studies) / len(patients)
    assert 3.5 <= series_per_study <= 6.5
    assert 1.5 <= studies_per_patient <= 2.5
    # the series of one study share one patient and are numbered 1, 2, ... within the study
    numbers = defaultdict(list)
    for doc in docs:
        numbers[doc.study_instance_uid].append(_only_series(doc.document)["DICOM"]["SeriesNumber"])
    assert all(n == list(range(1, len(n) + 1)) for n in numbers.values())


def test_synthetic_documents_are_deterministic_per_seed():
    a = [d.document for d in dm.synthetic_documents(50, seed=1)]
    b = [d.document for d in dm.synthetic_documents(50, seed=1)]
    c = [d.series_instance_uid for d in dm.synthetic_documents(50, seed=2)]
    assert a == b
    assert set(c).isdisjoint(d["Study"]["DICOM"]["StudyInstanceUID"] for d in a)
    assert set(c).isdisjoint(uid for d in a for uid in dm.series_uids(d))


def test_synthetic_documents_shape_options():
    (doc,) = dm.synthetic_documents(1, instances_per_series=4, frames_per_instance=2)
    assert doc.frame_count == 8 == dm.frame_count(doc.document)
    assert all(i["DICOM"]["NumberOfFrames"] == 2 for i in _only_series(doc.document)["Instances"].values())
    (frameless,) = dm.synthetic_documents(1, frames_per_instance=0)
    assert frameless.frame_count == 0
    assert list(dm.synthetic_documents(0)) == []
    with pytest.raises(ValueError):
        list(dm.synthetic_documents(1, instances_per_series=0))


def test_synthetic_documents_stream_100_000_distinct_series():
    """A generator (the emulator's synthetic:N seed streams them into its store, N up to 100,000 and more):
    its first document comes before the rest are made, and 100,000 of them hold 100,000 distinct series and
    SOP instances. How long that takes is the machine's business, not asserted."""
    documents = dm.synthetic_documents(100_000)
    assert isinstance(documents, types.GeneratorType)
    first = next(documents)
    assert first.document["Patient"]["DICOM"]["PatientName"] == "SYNTHETIC^PATIENT000001"
    series, studies = {first.series_instance_uid}, {first.study_instance_uid}
    instances = set(dm.sop_instance_uids(first.document))
    count = 1
    for doc in documents:
        count += 1
        series.add(doc.series_instance_uid)
        studies.add(doc.study_instance_uid)
        instances.update(dm.sop_instance_uids(doc.document))
    assert count == len(series) == 100_000
    assert len(instances) == 3 * 100_000  # instances_per_series=3 by default
    assert 100_000 / 9 <= len(studies) <= 100_000  # 1 to 9 series a study


def test_implausible_frame_count_is_reported(tmp_path, sample_files):
    path = _write_ct_variant(tmp_path, "many.dcm", sample_files, NumberOfFrames=10**9)
    documents, skipped = dm.documents_from_files([path])
    assert documents == []
    assert "NumberOfFrames" in skipped[0][1]
