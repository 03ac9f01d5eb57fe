"""CopyImageSet end to end: real boto3 clients over HTTP against the emulator.

The service's behaviour these tests hold the emulator to, as AWS documents it:

- CopyImageSet copies the latest version of a source image set, whole or the SOP instances that
  ``DICOMCopies.copiableAttributes`` selects, into a new image set or into an existing destination
  image set given at its latest version (which gets a new version). While the copy runs the source is
  LOCKED in COPYING_WITH_READ_ONLY_ACCESS and the destination LOCKED in COPYING; the destination ends
  COPIED or COPY_FAILED.
- ``force`` overrides inconsistencies in the Patient, Study and Series level attributes;
  ``promoteToPrimary`` makes the destination a primary image set.
- A locked image set or a stale latestVersionId is a ConflictException; malformed arguments a
  ValidationException; an unknown data store or image set a ResourceNotFoundException; an exhausted
  quota (concurrent copies, frames per copy) a ServiceQuotaExceededException.

Sources: the AWS HealthImaging Developer Guide, "Copying an image set"
(https://docs.aws.amazon.com/healthimaging/latest/devguide/copy-image-set.html) and its quotas
(https://docs.aws.amazon.com/healthimaging/latest/devguide/endpoints-quotas.html); the API reference
for CopyImageSet (https://docs.aws.amazon.com/healthimaging/latest/APIReference/API_CopyImageSet.html);
the AWS CLI's copy-image-set examples (tests/fixtures/awscli/copy-image-set.rst).

Every test asserts outcomes a caller can observe: the CopyImageSet response, the image set states and versions
(GetImageSet, ListImageSetVersions) and the copied content (GetImageSetMetadata, gzip JSON).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from healthimaging_emulator import dicom_metadata, quotas
from healthimaging_emulator.backend import INJECTED_COPY_FAILURE
from tests.healthimaging_helpers import ImageSet, metadata

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"  # matches [0-9a-z]{32}, names nothing
LONG_COPY = {"copy_fixed_seconds": 5}  # a copy that is still in flight while the test goes on
SERIES_MISMATCH = "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match."
PATIENT_MISMATCH = "INVALID_REQUEST: Patient of SourceImageSet and DestinationImageSet don't match."


# ---------------------------------------------------------------------------------------- helpers


def wait_until_active(client, datastore_id: str, image_set_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """GetImageSet until the image set is no longer LOCKED; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        props = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        if props["imageSetState"] == "ACTIVE":
            return props
        if time.monotonic() > deadline:
            raise AssertionError(
                f"image set {image_set_id} still {props['imageSetState']}/"
                f"{props['imageSetWorkflowStatus']} after {timeout} s"
            )
        time.sleep(0.02)


def sop_uid_list(document: dict[str, Any]) -> list[str]:
    """Every SOP Instance UID of a document, across series, duplicates kept; checks key == DICOM value."""
    uids = []
    for series in document["Study"]["Series"].values():
        for uid, instance in series["Instances"].items():
            assert instance["DICOM"]["SOPInstanceUID"] == uid
            uids.append(uid)
    return uids


def sop_uids(document: dict[str, Any]) -> set[str]:
    return set(sop_uid_list(document))


def by_series(document: dict[str, Any]) -> dict[str, set[str]]:
    return {uid: set(series["Instances"]) for uid, series in document["Study"]["Series"].items()}


def frame_ids(document: dict[str, Any]) -> set[str]:
    return {
        frame["ID"]
        for series in document["Study"]["Series"].values()
        for instance in series["Instances"].values()
        for frame in instance.get("ImageFrames", [])
    }


def copiable(selection: dict[str, list[str]], schema_version: Any = "1.1") -> str:
    """A copiableAttributes string, in the CLI example's compact form: keys are DICOM UIDs."""
    study = {"Series": {series: {"Instances": {uid: {} for uid in uids}} for series, uids in selection.items()}}
    return json.dumps({"SchemaVersion": schema_version, "Study": study}, separators=(",", ":"))


def copy(
    client,
    datastore_id: str,
    source: str,
    version: str = "1",
    *,
    destination: str | None = None,
    destination_version: str | None = None,
    attributes: str | None = None,
    **flags: Any,
) -> dict[str, Any]:
    info: dict[str, Any] = {"sourceImageSet": {"latestVersionId": version}}
    if attributes is not None:
        info["sourceImageSet"]["DICOMCopies"] = {"copiableAttributes": attributes}
    if destination is not None:
        info["destinationImageSet"] = {"imageSetId": destination, "latestVersionId": destination_version or "1"}
    return client.copy_image_set(
        datastoreId=datastore_id, sourceImageSetId=source, copyImageSetInformation=info, **flags
    )


def versions(client, datastore_id: str, image_set_id: str) -> dict[str, dict[str, Any]]:
    """ListImageSetVersions (all pages) keyed by versionId."""
    items = []
    for page in client.get_paginator("list_image_set_versions").paginate(
        datastoreId=datastore_id, imageSetId=image_set_id
    ):
        items.extend(page["imageSetPropertiesList"])
    return {item["versionId"]: item for item in items}


def error_of(excinfo) -> tuple[str, int, str]:
    error = excinfo.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


@dataclass
class CatalogedImageSet(ImageSet):
    """An image set with its SearchImageSets primary flag."""

    is_primary: bool = False


@dataclass
class Seeded:
    handle: Any
    client: Any
    datastore_id: str
    image_sets: list[CatalogedImageSet]

    def copy(self, source: str, version: str = "1", **kwargs: Any) -> dict[str, Any]:
        return copy(self.client, self.datastore_id, source, version, **kwargs)

    def wait(self, image_set_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return wait_until_active(self.client, self.datastore_id, image_set_id, timeout)

    def get(self, image_set_id: str, version: str | None = None) -> dict[str, Any]:
        kwargs = {"versionId": version} if version else {}
        return self.client.get_image_set(datastoreId=self.datastore_id, imageSetId=image_set_id, **kwargs)

    def metadata(self, image_set_id: str, version: str | None = None) -> dict[str, Any]:
        return metadata(self.client, self.datastore_id, image_set_id, version)

    def versions(self, image_set_id: str) -> dict[str, dict[str, Any]]:
        return versions(self.client, self.datastore_id, image_set_id)

    def same_study_pair(self) -> tuple[CatalogedImageSet, CatalogedImageSet]:
        """Two image sets of one study (same patient) with different series."""
        for a in self.image_sets:
            for b in self.image_sets:
                if a is not b and a.study_uid == b.study_uid and a.series_uid != b.series_uid:
                    return a, b
        raise AssertionError("the seed has no study with two series")

    def other_patient_pair(self) -> tuple[CatalogedImageSet, CatalogedImageSet]:
        for a in self.image_sets:
            for b in self.image_sets:
                if a.patient_id != b.patient_id:
                    return a, b
        raise AssertionError("the seed has a single patient")

    def primary(self, index: int = 0) -> CatalogedImageSet:
        return [s for s in self.image_sets if s.is_primary][index]


def catalog(client, datastore_id: str) -> list[CatalogedImageSet]:
    found = []
    for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id):
        for summary in page["imageSetsMetadataSummaries"]:
            found.append(
                CatalogedImageSet(
                    summary["imageSetId"],
                    metadata(client, datastore_id, summary["imageSetId"]),
                    is_primary=summary["isPrimary"],
                )
            )
    return found


def seeded(handle, spec: str, with_catalog: bool = True) -> Seeded:
    datastore_id = handle.seed(spec)["datastoreId"]
    client = handle.client()
    return Seeded(handle, client, datastore_id, catalog(client, datastore_id) if with_catalog else [])


@pytest.fixture
def synthetic(healthimaging_emulator) -> Seeded:
    """20 synthetic image sets: one series of 3 instances (1 frame each) per image set."""
    return seeded(healthimaging_emulator, "synthetic:20")


@pytest.fixture
def sample(healthimaging_emulator) -> Seeded:
    """pydicom's sample files, one image set per series."""
    return seeded(healthimaging_emulator, "sample")


def multi_instance_sample(sample: Seeded) -> CatalogedImageSet:
    """The sample image set with the most instances, every one of them with image frames."""
    candidates = [
        s
        for s in sample.image_sets
        if len(s.document["Study"]["Series"]) == 1
        and all(i.get("ImageFrames") for i in s.document["Study"]["Series"][s.series_uid]["Instances"].values())
    ]
    best = max(candidates, key=lambda s: len(s.instances))
    assert len(best.instances) >= 3
    return best


def assert_cli_shape(response: dict[str, Any], datastore_id: str) -> None:
    """The members the AWS CLI example prints, with the types it prints."""
    assert response["datastoreId"] == datastore_id
    for side in ("sourceImageSetProperties", "destinationImageSetProperties"):
        props = response[side]
        assert {
            "latestVersionId",
            "imageSetWorkflowStatus",
            "updatedAt",
            "imageSetId",
            "imageSetState",
            "createdAt",
        } <= set(props)
        assert isinstance(props["latestVersionId"], str) and props["latestVersionId"].isdigit()
        assert props["imageSetArn"].endswith(f"datastore/{datastore_id}/imageset/{props['imageSetId']}")
    assert response["sourceImageSetProperties"]["imageSetState"] == "LOCKED"
    assert response["sourceImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    assert response["destinationImageSetProperties"]["imageSetState"] == "LOCKED"
    assert response["destinationImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING"


# ---------------------------------------------------------------------------------------- the three CLI examples


def test_cli_example_1_copy_without_destination_makes_a_new_image_set_version_1(sample):
    source = multi_instance_sample(sample)
    before = sample.get(source.image_set_id)
    sample.handle.configure(timing=LONG_COPY)  # still running when it is read back below
    response = sample.client.copy_image_set(
        datastoreId=sample.datastore_id,
        sourceImageSetId=source.image_set_id,
        copyImageSetInformation=json.loads('{"sourceImageSet": {"latestVersionId": "1" } }'),
    )

    assert_cli_shape(response, sample.datastore_id)
    src, dst = response["sourceImageSetProperties"], response["destinationImageSetProperties"]
    assert src["imageSetId"] == source.image_set_id and src["latestVersionId"] == "1"
    assert dst["imageSetId"] not in {s.image_set_id for s in sample.image_sets}
    assert dst["latestVersionId"] == "1"  # the CLI's "2" for a new image set is a documentation slip
    assert dst["createdAt"] == dst["updatedAt"]
    assert src["createdAt"] == before["createdAt"] < src["updatedAt"]
    # while the copy runs, both read as locked
    running = sample.get(dst["imageSetId"]), sample.get(source.image_set_id)
    assert [(r["imageSetState"], r["imageSetWorkflowStatus"]) for r in running] == [
        ("LOCKED", "COPYING"),
        ("LOCKED", "COPYING_WITH_READ_ONLY_ACCESS"),
    ]

    done = sample.wait(dst["imageSetId"], timeout=30)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["versionId"]) == ("ACTIVE", "COPIED", "1")
    assert "message" not in done and "overrides" not in done
    assert done["isPrimary"] is False
    after = sample.wait(source.image_set_id)
    assert (after["imageSetWorkflowStatus"], after["versionId"]) == (before["imageSetWorkflowStatus"], "1")
    assert list(sample.versions(source.image_set_id)) == ["1"]

    copied = sample.metadata(dst["imageSetId"])
    assert copied["ImageSetID"] == dst["imageSetId"] and copied["DatastoreID"] == sample.datastore_id
    assert sop_uids(copied) == set(source.instances)
    assert frame_ids(copied) == frame_ids(source.document)
    assert copied["Patient"] == source.document["Patient"]
    assert copied["Study"]["DICOM"] == source.document["Study"]["DICOM"]
    assert sample.metadata(source.image_set_id) == source.document  # the source is untouched


def test_cli_example_2_copy_into_a_destination_makes_version_old_plus_1(sample):
    source = multi_instance_sample(sample)
    first = sample.copy(source.image_set_id)  # example 2's destination is example 1's new image set
    destination = first["destinationImageSetProperties"]["imageSetId"]
    sample.wait(destination)
    sample.wait(source.image_set_id)

    response = sample.client.copy_image_set(
        datastoreId=sample.datastore_id,
        sourceImageSetId=source.image_set_id,
        copyImageSetInformation=json.loads(
            '{"sourceImageSet": {"latestVersionId": "1" }, "destinationImageSet": { "imageSetId": "%s", '
            '"latestVersionId": "1"} }' % destination
        ),
    )

    assert_cli_shape(response, sample.datastore_id)
    assert response["sourceImageSetProperties"]["latestVersionId"] == "1"
    dst = response["destinationImageSetProperties"]
    assert (dst["imageSetId"], dst["latestVersionId"]) == (destination, "2")
    assert dst["createdAt"] == first["destinationImageSetProperties"]["createdAt"] < dst["updatedAt"]

    done = sample.wait(destination)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["versionId"]) == ("ACTIVE", "COPIED", "2")
    assert sample.wait(source.image_set_id)["versionId"] == "1"
    merged = sample.metadata(destination)
    uids = sop_uid_list(merged)
    assert len(uids) == len(set(uids)) == len(source.instances)  # the same instances again: still unique
    assert set(uids) == set(source.instances)
    assert merged["ImageSetID"] == destination


def test_cli_example_3_forced_subset_copy_of_one_instance_into_a_destination(sample):
    source = multi_instance_sample(sample)
    destination = next(
        s
        for s in sample.image_sets
        if s.patient_id != source.patient_id and s.study_uid != source.study_uid and s.instances
    )
    series_uid, sop_uid = source.series_uid, source.instances[1]
    info = (
        '{"sourceImageSet": {"latestVersionId": "1","DICOMCopies": {"copiableAttributes": "{\\"SchemaVersion\\":'
        '\\"1.1\\",\\"Study\\":{\\"Series\\":{\\"%s\\":{\\"Instances\\":{\\"%s\\":{}}}}}}"}},"destinationImageSet": '
        '{"imageSetId": "%s","latestVersionId": "1"}}' % (series_uid, sop_uid, destination.image_set_id)
    )
    parsed = json.loads(info)
    assert json.loads(parsed["sourceImageSet"]["DICOMCopies"]["copiableAttributes"]) == json.loads(
        copiable({series_uid: [sop_uid]})
    )

    response = sample.client.copy_image_set(
        datastoreId=sample.datastore_id,
        sourceImageSetId=source.image_set_id,
        copyImageSetInformation=parsed,
        force=True,
    )

    assert_cli_shape(response, sample.datastore_id)
    assert response["destinationImageSetProperties"]["latestVersionId"] == "2"
    done = sample.wait(destination.image_set_id)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["versionId"]) == ("ACTIVE", "COPIED", "2")
    assert done["overrides"] == {"forced": True}
    assert sample.wait(source.image_set_id)["imageSetWorkflowStatus"] == "CREATED"
    merged = sample.metadata(destination.image_set_id)
    assert sop_uids(merged) == set(destination.instances) | {sop_uid}
    assert by_series(merged)[series_uid] == {sop_uid}
    assert merged["Patient"] == destination.document["Patient"]  # forced: the destination keeps its own
    assert merged["Study"]["DICOM"] == destination.document["Study"]["DICOM"]


# ---------------------------------------------------------------------------------------- content of copies


@pytest.mark.parametrize("schema_version", ["1.1", 1.1], ids=["string", "number"])
def test_subset_copy_to_a_new_image_set_holds_exactly_the_selected_instances(synthetic, schema_version):
    source = synthetic.primary()
    chosen = source.instances[:2]
    attributes = copiable({source.series_uid: chosen}, schema_version)
    assert ('"SchemaVersion":"1.1"' in attributes) == (schema_version == "1.1")
    new = synthetic.copy(source.image_set_id, attributes=attributes)["destinationImageSetProperties"]["imageSetId"]

    done = synthetic.wait(new)
    assert (done["imageSetWorkflowStatus"], done["versionId"]) == ("COPIED", "1")
    copied = synthetic.metadata(new)
    assert by_series(copied) == {source.series_uid: set(chosen)}
    source_instances = source.document["Study"]["Series"][source.series_uid]["Instances"]
    for uid in chosen:
        assert copied["Study"]["Series"][source.series_uid]["Instances"][uid] == source_instances[uid]
    assert (
        copied["Study"]["Series"][source.series_uid]["DICOM"]
        == source.document["Study"]["Series"][source.series_uid]["DICOM"]
    )


def test_merge_into_a_destination_adds_instances_and_keeps_sop_uids_unique(synthetic):
    source = synthetic.primary()
    a, b, c = source.instances
    first = synthetic.copy(source.image_set_id, attributes=copiable({source.series_uid: [a]}))
    destination = first["destinationImageSetProperties"]["imageSetId"]
    synthetic.wait(destination)
    synthetic.wait(source.image_set_id)

    # b and c added; a again (already there) must not appear twice
    second = synthetic.copy(
        source.image_set_id,
        destination=destination,
        destination_version="1",
        attributes=copiable({source.series_uid: [a, b, c]}),
    )
    assert second["destinationImageSetProperties"]["latestVersionId"] == "2"
    assert synthetic.wait(destination)["imageSetWorkflowStatus"] == "COPIED"
    uids = sop_uid_list(synthetic.metadata(destination))
    assert sorted(uids) == sorted([a, b, c])
    assert sop_uids(synthetic.metadata(destination, "1")) == {a}  # the old version is kept as it was


def test_merging_two_image_sets_of_the_same_series_without_force_succeeds(synthetic):
    source = synthetic.primary()
    a, b, c = source.instances
    left = synthetic.copy(source.image_set_id, attributes=copiable({source.series_uid: [a]}))
    left_id = left["destinationImageSetProperties"]["imageSetId"]
    synthetic.wait(left_id)
    synthetic.wait(source.image_set_id)
    right = synthetic.copy(source.image_set_id, attributes=copiable({source.series_uid: [b, c]}))
    right_id = right["destinationImageSetProperties"]["imageSetId"]
    synthetic.wait(right_id)

    synthetic.copy(left_id, destination=right_id, destination_version="1")
    done = synthetic.wait(right_id)
    assert (done["imageSetWorkflowStatus"], done["versionId"]) == ("COPIED", "2")
    assert "overrides" not in done and "message" not in done
    assert by_series(synthetic.metadata(right_id)) == {source.series_uid: {a, b, c}}
    assert synthetic.wait(left_id)["imageSetWorkflowStatus"] == "COPIED"  # the source's status before the copy


def test_source_returns_to_its_previous_workflow_status_and_keeps_its_version(synthetic):
    source = synthetic.primary()
    new = synthetic.copy(source.image_set_id)["destinationImageSetProperties"]["imageSetId"]
    synthetic.wait(new)
    assert synthetic.wait(source.image_set_id)["imageSetWorkflowStatus"] == "CREATED"
    # now the COPIED image set is a source: it must come back COPIED, still at version 1
    response = synthetic.copy(new)
    assert response["sourceImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    synthetic.wait(response["destinationImageSetProperties"]["imageSetId"])
    back = synthetic.wait(new)
    assert (back["imageSetState"], back["imageSetWorkflowStatus"], back["versionId"]) == ("ACTIVE", "COPIED", "1")
    assert list(synthetic.versions(new)) == ["1"]


# ---------------------------------------------------------------------------------------- force and consistency


def test_series_mismatch_without_force_ends_copy_failed_and_consumes_a_version(synthetic):
    source, destination = synthetic.same_study_pair()
    response = synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1")
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["destinationImageSetProperties"]["latestVersionId"] == "2"

    done = synthetic.wait(destination.image_set_id)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["versionId"]) == ("ACTIVE", "COPY_FAILED", "2")
    assert done["message"] == SERIES_MISMATCH
    assert "overrides" not in done
    assert sop_uids(synthetic.metadata(destination.image_set_id)) == set(destination.instances)  # nothing copied
    assert synthetic.wait(source.image_set_id)["imageSetWorkflowStatus"] == "CREATED"
    # the failed copy used version 2: the next copy must name it
    with pytest.raises(ClientError) as stale:
        synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1")
    assert error_of(stale)[:2] == ("ConflictException", 409)
    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="2", force=True)
    assert synthetic.wait(destination.image_set_id)["versionId"] == "3"


def test_patient_mismatch_without_force_ends_copy_failed_with_the_patient_message(synthetic):
    source, destination = synthetic.other_patient_pair()
    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1")
    done = synthetic.wait(destination.image_set_id)
    assert (done["imageSetWorkflowStatus"], done["message"]) == ("COPY_FAILED", PATIENT_MISMATCH)


def test_forced_copy_completes_records_forced_and_keeps_the_destination_patient_and_study(synthetic):
    source, destination = synthetic.other_patient_pair()
    assert source.document["Patient"]["DICOM"] != destination.document["Patient"]["DICOM"]
    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1", force=True)

    done = synthetic.wait(destination.image_set_id)
    assert (done["imageSetWorkflowStatus"], done["versionId"]) == ("COPIED", "2")
    assert done["overrides"] == {"forced": True}
    assert "message" not in done
    merged = synthetic.metadata(destination.image_set_id)
    assert merged["Patient"] == destination.document["Patient"]
    assert merged["Study"]["DICOM"] == destination.document["Study"]["DICOM"]
    assert (
        merged["Study"]["Series"][destination.series_uid]
        == destination.document["Study"]["Series"][destination.series_uid]
    )
    assert by_series(merged) == {
        destination.series_uid: set(destination.instances),
        source.series_uid: set(source.instances),
    }
    listed = synthetic.versions(destination.image_set_id)
    assert listed["2"]["overrides"] == {"forced": True}
    assert "overrides" not in listed["1"]
    assert "overrides" not in synthetic.get(destination.image_set_id, "1")


# ---------------------------------------------------------------------------------------- promoteToPrimary


def test_copy_to_a_new_image_set_is_not_primary_unless_promoted(synthetic):
    source = synthetic.primary()
    plain = synthetic.copy(source.image_set_id)["destinationImageSetProperties"]["imageSetId"]
    assert synthetic.wait(plain)["isPrimary"] is False
    synthetic.wait(source.image_set_id)

    promoted = synthetic.copy(source.image_set_id, promoteToPrimary=True)["destinationImageSetProperties"]["imageSetId"]
    done = synthetic.wait(promoted)
    assert (done["imageSetWorkflowStatus"], done["isPrimary"]) == ("COPIED", True)


def test_promote_to_primary_makes_a_non_primary_destination_primary(synthetic):
    source = synthetic.primary()
    a, b, _ = source.instances
    copy_a = synthetic.copy(source.image_set_id, attributes=copiable({source.series_uid: [a]}))
    destination = copy_a["destinationImageSetProperties"]["imageSetId"]
    assert synthetic.wait(destination)["isPrimary"] is False
    synthetic.wait(source.image_set_id)

    synthetic.copy(
        source.image_set_id,
        destination=destination,
        destination_version="1",
        attributes=copiable({source.series_uid: [b]}),
        promoteToPrimary=True,
    )
    done = synthetic.wait(destination)
    assert (done["imageSetWorkflowStatus"], done["versionId"], done["isPrimary"]) == ("COPIED", "2", True)
    primaries = synthetic.client.search_image_sets(
        datastoreId=synthetic.datastore_id,
        searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"isPrimary": True}]}]},
    )
    assert destination in {s["imageSetId"] for s in primaries["imageSetsMetadataSummaries"]}


def test_a_failed_copy_does_not_promote(synthetic):
    source = synthetic.primary()
    synthetic.handle.configure(script={"CopyImageSet": ["copy_failed"]})
    new = synthetic.copy(source.image_set_id, promoteToPrimary=True)["destinationImageSetProperties"]["imageSetId"]
    done = synthetic.wait(new)
    assert (done["imageSetWorkflowStatus"], done["isPrimary"]) == ("COPY_FAILED", False)


# ---------------------------------------------------------------------------------------- failures after 200


def test_injected_copy_failure_ends_copy_failed_with_the_injected_message(synthetic):
    source, destination = synthetic.same_study_pair()
    synthetic.handle.configure(script={"CopyImageSet": ["copy_failed", "copy_failed"]})

    new = synthetic.copy(source.image_set_id)["destinationImageSetProperties"]["imageSetId"]
    done = synthetic.wait(new)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["message"]) == (
        "ACTIVE",
        "COPY_FAILED",
        INJECTED_COPY_FAILURE,
    )
    synthetic.wait(source.image_set_id)

    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1", force=True)
    done = synthetic.wait(destination.image_set_id)
    assert (done["imageSetWorkflowStatus"], done["versionId"], done["message"]) == (
        "COPY_FAILED",
        "2",
        INJECTED_COPY_FAILURE,
    )
    assert "overrides" not in done  # forced only when the forced copy happened
    assert synthetic.metadata(destination.image_set_id) == synthetic.metadata(destination.image_set_id, "1")
    assert synthetic.wait(source.image_set_id)["imageSetWorkflowStatus"] == "CREATED"
    counters = synthetic.handle.counters()["CopyImageSet"]
    assert counters["faults"] == {"copy_failed": 2} and counters["succeeded"] == 2


@pytest.mark.parametrize("what", ["instance", "series"])
def test_subset_naming_a_uid_the_source_lacks_ends_copy_failed(synthetic, what):
    source, destination = synthetic.same_study_pair()
    if what == "instance":
        missing = source.instances[0] + ".999"
        selection = {source.series_uid: [source.instances[0], missing]}
    else:
        missing = destination.series_uid
        selection = {missing: destination.instances[:1]}

    response = synthetic.copy(source.image_set_id, attributes=copiable(selection))
    new = response["destinationImageSetProperties"]["imageSetId"]
    done = synthetic.wait(new)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"]) == ("ACTIVE", "COPY_FAILED")
    assert done["message"].startswith("INVALID_REQUEST:") and missing in done["message"]
    assert synthetic.wait(source.image_set_id)["imageSetWorkflowStatus"] == "CREATED"

    # into a destination: a new, failed version; the content stays
    synthetic.copy(
        source.image_set_id,
        destination=destination.image_set_id,
        destination_version="1",
        attributes=copiable(selection),
        force=True,
    )
    done = synthetic.wait(destination.image_set_id)
    assert (done["imageSetWorkflowStatus"], done["versionId"]) == ("COPY_FAILED", "2")
    assert missing in done["message"]
    assert sop_uids(synthetic.metadata(destination.image_set_id)) == set(destination.instances)


# ---------------------------------------------------------------------------------------- conflicts


def test_conflict_while_source_or_destination_is_locked(synthetic):
    source, other = synthetic.same_study_pair()
    third = next(s for s in synthetic.image_sets if s not in (source, other))
    synthetic.handle.configure(timing=LONG_COPY)
    response = synthetic.copy(source.image_set_id)
    destination = response["destinationImageSetProperties"]["imageSetId"]
    assert synthetic.get(source.image_set_id)["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    assert synthetic.get(destination)["imageSetState"] == "LOCKED"
    # the locked source stays readable
    assert synthetic.metadata(source.image_set_id) == source.document

    attempts = {
        "source is a copy's source": lambda: synthetic.copy(source.image_set_id),
        "destination is a copy's source": lambda: synthetic.copy(
            other.image_set_id, destination=source.image_set_id, destination_version="1", force=True
        ),
        "source is a copy's destination": lambda: synthetic.copy(destination),
        "destination is a copy's destination": lambda: synthetic.copy(
            third.image_set_id, destination=destination, destination_version="1", force=True
        ),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ClientError) as excinfo:
            attempt()
        code, status, message = error_of(excinfo)
        assert (code, status) == ("ConflictException", 409), name
        assert "locked" in message, name
    # no other write either
    with pytest.raises(ClientError) as excinfo:
        synthetic.client.delete_image_set(datastoreId=synthetic.datastore_id, imageSetId=source.image_set_id)
    assert error_of(excinfo)[:2] == ("ConflictException", 409)
    # the refused calls left no trace
    assert list(synthetic.versions(other.image_set_id)) == ["1"]
    assert list(synthetic.versions(destination)) == ["1"]
    assert synthetic.get(other.image_set_id)["imageSetState"] == "ACTIVE"
    assert synthetic.get(third.image_set_id)["imageSetState"] == "ACTIVE"


def test_conflict_for_a_stale_latest_version_of_source_or_destination(synthetic):
    source, destination = synthetic.same_study_pair()
    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1", force=True)
    synthetic.wait(destination.image_set_id)
    synthetic.wait(source.image_set_id)
    # the destination is now at version 2
    cases = [
        dict(source=destination.image_set_id, version="1"),
        dict(source=source.image_set_id, version="2"),
        dict(source=source.image_set_id, version="9" * 30),
        dict(source=source.image_set_id, version="1", destination=destination.image_set_id, destination_version="1"),
        dict(source=source.image_set_id, version="1", destination=destination.image_set_id, destination_version="3"),
    ]
    for case in cases:
        with pytest.raises(ClientError) as excinfo:
            synthetic.copy(**case, force=True)
        code, status, message = error_of(excinfo)
        assert (code, status) == ("ConflictException", 409), case
        assert "latestVersionId" in message, case
    for image_set in (source, destination):
        assert synthetic.get(image_set.image_set_id)["imageSetState"] == "ACTIVE"
    assert sorted(synthetic.versions(destination.image_set_id)) == ["1", "2"]
    # the right versions work
    synthetic.copy(source.image_set_id, "1", destination=destination.image_set_id, destination_version="2", force=True)
    assert synthetic.wait(destination.image_set_id)["versionId"] == "3"


def test_a_lost_response_still_starts_the_copy_and_a_blind_retry_conflicts(synthetic):
    source = synthetic.primary()
    synthetic.handle.configure(timing=LONG_COPY, script={"CopyImageSet": ["lost_response"]})
    with pytest.raises((HTTPClientError, BotoConnectionError)):
        synthetic.copy(source.image_set_id)
    assert synthetic.get(source.image_set_id)["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(source.image_set_id)
    assert error_of(excinfo)[:2] == ("ConflictException", 409)


# ---------------------------------------------------------------------------------------- validation and not found


@pytest.mark.parametrize(
    "field",
    [
        "datastoreId",
        "sourceImageSetId",
        "destination imageSetId",
        "source latestVersionId",
        "destination latestVersionId",
    ],
)
def test_bad_ids_are_a_validation_exception(synthetic, field):
    source, destination = synthetic.same_study_pair()
    kwargs = dict(
        datastoreId=synthetic.datastore_id,
        sourceImageSetId=source.image_set_id,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1"},
            "destinationImageSet": {"imageSetId": destination.image_set_id, "latestVersionId": "1"},
        },
    )
    info = kwargs["copyImageSetInformation"]
    if field == "datastoreId":
        kwargs["datastoreId"] = synthetic.datastore_id[:-1] + "Z"
    elif field == "sourceImageSetId":
        kwargs["sourceImageSetId"] = source.image_set_id[:31]
    elif field == "destination imageSetId":
        info["destinationImageSet"]["imageSetId"] = destination.image_set_id + "0"
    elif field == "source latestVersionId":
        info["sourceImageSet"]["latestVersionId"] = "one"
    else:
        info["destinationImageSet"]["latestVersionId"] = "1a"
    with pytest.raises(ClientError) as excinfo:
        synthetic.client.copy_image_set(**kwargs, force=True)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert "regular expression pattern" in message
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"
    assert list(synthetic.versions(destination.image_set_id)) == ["1"]


def test_destination_equal_to_source_is_a_validation_exception(synthetic):
    source = synthetic.primary()
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(source.image_set_id, destination=source.image_set_id, destination_version="1")
    assert error_of(excinfo)[:2] == ("ValidationException", 400)
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"


MALFORMED = {
    "not JSON": "{SchemaVersion: 1.1",
    "not an object": '["1.1"]',
    "no Study": '{"SchemaVersion":"1.1"}',
    "no Study.Series": '{"SchemaVersion":"1.1","Study":{}}',
    "empty Study.Series": '{"SchemaVersion":"1.1","Study":{"Series":{}}}',
    "no SchemaVersion": '{"Study":{"Series":{"1.2.3":{"Instances":{"1.2.3.4":{}}}}}}',
    "SchemaVersion 2": '{"SchemaVersion":"2.0","Study":{"Series":{"1.2.3":{"Instances":{"1.2.3.4":{}}}}}}',
    "no Instances": '{"SchemaVersion":"1.1","Study":{"Series":{"1.2.3":{}}}}',
    "unknown top-level key": (
        '{"SchemaVersion":"1.1","Patient":{},"Study":{"Series":{"1.2.3":{"Instances":{"1.2.3.4":{}}}}}}'
    ),
}


@pytest.mark.parametrize(
    "name", [*MALFORMED, "series keyed by image set id", "instance keyed by a name", "over 260,000 characters"]
)
def test_malformed_copiable_attributes_are_a_validation_exception(synthetic, name):
    source = synthetic.primary()
    if name == "series keyed by image set id":  # the AWS SDK code examples' mistake
        text = copiable({source.image_set_id: source.instances[:1]})
    elif name == "instance keyed by a name":
        text = copiable({source.series_uid: ["instance-1"]})
    elif name == "over 260,000 characters":
        text = copiable({source.series_uid: source.instances[:1]})
        text = text[:-1] + " " * (260_001 - len(text)) + "}"
        assert len(text) == 260_001
    else:
        text = MALFORMED[name]
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(source.image_set_id, attributes=text)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert "copiableAttributes" in message
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"
    assert (
        len(synthetic.client.search_image_sets(datastoreId=synthetic.datastore_id)["imageSetsMetadataSummaries"]) == 20
    )


def test_copiable_attributes_of_exactly_260000_characters_are_accepted(synthetic):
    source = synthetic.primary()
    text = copiable({source.series_uid: source.instances[:1]})
    text = text[:-1] + " " * (260_000 - len(text)) + "}"
    assert len(text) == 260_000
    new = synthetic.copy(source.image_set_id, attributes=text)["destinationImageSetProperties"]["imageSetId"]
    assert synthetic.wait(new)["imageSetWorkflowStatus"] == "COPIED"
    assert sop_uids(synthetic.metadata(new)) == set(source.instances[:1])


def test_unknown_data_store_source_or_destination_is_resource_not_found(synthetic):
    source = synthetic.primary()
    cases = {
        "data store": lambda: copy(synthetic.client, UNKNOWN_ID, source.image_set_id),
        "source": lambda: synthetic.copy(UNKNOWN_ID),
        "destination": lambda: synthetic.copy(source.image_set_id, destination=UNKNOWN_ID, destination_version="1"),
    }
    for name, attempt in cases.items():
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404), name
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"


def test_a_deleted_image_set_is_not_found_as_source_or_destination(synthetic):
    source, gone = synthetic.same_study_pair()
    synthetic.client.delete_image_set(datastoreId=synthetic.datastore_id, imageSetId=gone.image_set_id)
    deadline = time.monotonic() + 10
    while synthetic.get(gone.image_set_id)["imageSetState"] != "DELETED":
        assert time.monotonic() < deadline, "the delete did not complete"
        time.sleep(0.02)
    for attempt in (
        lambda: synthetic.copy(gone.image_set_id),
        lambda: synthetic.copy(source.image_set_id, destination=gone.image_set_id, force=True),
    ):
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"


def test_a_destination_in_another_data_store_is_not_found(healthimaging_emulator, synthetic):
    other = seeded(healthimaging_emulator, "sample", with_catalog=False)
    foreign = other.client.search_image_sets(datastoreId=other.datastore_id)["imageSetsMetadataSummaries"][0]
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(synthetic.primary().image_set_id, destination=foreign["imageSetId"], force=True)
    assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)


# ---------------------------------------------------------------------------------------- quotas


def test_frame_quota_counts_the_frames_a_copy_holds(synthetic):
    source, destination = synthetic.same_study_pair()
    assert len(frame_ids(source.document)) == 3
    synthetic.handle.configure(max_frames_per_copy=2)
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(source.image_set_id)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ServiceQuotaExceededException", 402)
    assert "3 image frames" in message
    assert synthetic.get(source.image_set_id)["imageSetState"] == "ACTIVE"
    assert (
        len(synthetic.client.search_image_sets(datastoreId=synthetic.datastore_id)["imageSetsMetadataSummaries"]) == 20
    )

    # a two-instance subset fits, even into a destination that ends with five frames
    synthetic.copy(
        source.image_set_id,
        destination=destination.image_set_id,
        destination_version="1",
        force=True,
        attributes=copiable({source.series_uid: source.instances[:2]}),
    )
    done = synthetic.wait(destination.image_set_id)
    assert done["imageSetWorkflowStatus"] == "COPIED"
    assert len(frame_ids(synthetic.metadata(destination.image_set_id))) == 5


def test_frame_quota_default_is_1000_frames(synthetic):
    assert synthetic.handle.configure()["max_frames_per_copy"] == quotas.MAX_FRAMES_PER_COPY == 1000
    over, exact = (
        next(dicom_metadata.synthetic_documents(1, seed=seed, instances_per_series=n, frames_per_instance=f)).document
        for seed, n, f in ((7, 7, 143), (8, 8, 125))
    )
    over_id, exact_id = synthetic.handle.backend.insert_image_sets(synthetic.datastore_id, [over, exact])
    assert len(frame_ids(synthetic.metadata(over_id))) == 1001
    assert len(frame_ids(synthetic.metadata(exact_id))) == 1000

    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(over_id)
    assert error_of(excinfo)[:2] == ("ServiceQuotaExceededException", 402)
    assert synthetic.get(over_id)["imageSetState"] == "ACTIVE"

    exact_copy = synthetic.copy(exact_id)["destinationImageSetProperties"]["imageSetId"]
    (series_uid,) = over["Study"]["Series"]
    six = sorted(over["Study"]["Series"][series_uid]["Instances"])[:6]
    subset_copy = synthetic.copy(over_id, attributes=copiable({series_uid: six}))["destinationImageSetProperties"][
        "imageSetId"
    ]
    assert synthetic.wait(exact_copy)["imageSetWorkflowStatus"] == "COPIED"
    assert len(frame_ids(synthetic.metadata(exact_copy))) == 1000
    assert synthetic.wait(subset_copy)["imageSetWorkflowStatus"] == "COPIED"
    assert len(frame_ids(synthetic.metadata(subset_copy))) == 6 * 143


def test_concurrent_copy_quota_is_per_data_store_and_frees_when_a_copy_completes(healthimaging_emulator, synthetic):
    healthimaging_emulator.configure(max_concurrent_copies=2, timing={"copy_fixed_seconds": 1})
    first, second, third = (s.image_set_id for s in synthetic.image_sets[:3])
    running = [synthetic.copy(first), synthetic.copy(second)]
    with pytest.raises(ClientError) as excinfo:
        synthetic.copy(third)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ServiceQuotaExceededException", 402)
    assert "2 copies in progress" in message
    assert synthetic.get(third)["imageSetState"] == "ACTIVE"

    other = seeded(healthimaging_emulator, "sample", with_catalog=False)
    elsewhere = other.client.search_image_sets(datastoreId=other.datastore_id)["imageSetsMetadataSummaries"][0]
    assert copy(other.client, other.datastore_id, elsewhere["imageSetId"])["destinationImageSetProperties"]

    for response in running:
        assert (
            synthetic.wait(response["destinationImageSetProperties"]["imageSetId"])["imageSetWorkflowStatus"]
            == "COPIED"
        )
    new = synthetic.copy(third)["destinationImageSetProperties"]["imageSetId"]
    assert synthetic.wait(new)["imageSetWorkflowStatus"] == "COPIED"


def test_concurrent_copy_quota_default_is_100_per_data_store(healthimaging_emulator):
    assert (
        healthimaging_emulator.configure()["max_concurrent_copies"] == quotas.MAX_CONCURRENT_COPIES_PER_DATASTORE == 100
    )
    store = seeded(healthimaging_emulator, "synthetic:120", with_catalog=False)
    ids = [
        s["imageSetId"]
        for page in store.client.get_paginator("search_image_sets").paginate(datastoreId=store.datastore_id)
        for s in page["imageSetsMetadataSummaries"]
    ]
    assert len(ids) == 120
    healthimaging_emulator.configure(timing=LONG_COPY)
    for image_set_id in ids[:100]:
        store.copy(image_set_id)
    with pytest.raises(ClientError) as excinfo:
        store.copy(ids[100])
    code, status, message = error_of(excinfo)
    assert (code, status) == ("ServiceQuotaExceededException", 402)
    assert "100 copies in progress" in message
    assert store.get(ids[100])["imageSetState"] == "ACTIVE"
    assert store.get(ids[99])["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"
    counters = healthimaging_emulator.counters()["CopyImageSet"]
    assert counters["succeeded"] == 100 and counters["errors"] == {"ServiceQuotaExceededException": 1}


# ---------------------------------------------------------------------------------------- versions


def test_versions_after_two_merges_and_a_failed_one(synthetic):
    source, destination = synthetic.same_study_pair()
    own = destination.instances
    # two image sets of the destination's series, made by splitting it, then merged back in turn
    parts = []
    for chosen in ([own[0]], [own[1]]):
        response = synthetic.copy(destination.image_set_id, attributes=copiable({destination.series_uid: chosen}))
        parts.append(response["destinationImageSetProperties"]["imageSetId"])
        synthetic.wait(parts[-1])
        synthetic.wait(destination.image_set_id)
    target = parts[0]
    synthetic.copy(parts[1], destination=target, destination_version="1")
    assert synthetic.wait(target)["versionId"] == "2"
    synthetic.copy(destination.image_set_id, destination=target, destination_version="2")
    assert synthetic.wait(target)["versionId"] == "3"
    synthetic.copy(source.image_set_id, destination=target, destination_version="3")  # another series: fails
    assert synthetic.wait(target)["versionId"] == "4"

    listed = synthetic.versions(target)
    assert list(listed) == ["4", "3", "2", "1"]  # newest first
    assert {v: (p["imageSetState"], p["ImageSetWorkflowStatus"]) for v, p in listed.items()} == {
        "1": ("ACTIVE", "COPIED"),
        "2": ("ACTIVE", "COPIED"),
        "3": ("ACTIVE", "COPIED"),
        "4": ("ACTIVE", "COPY_FAILED"),
    }
    assert listed["4"]["message"] == SERIES_MISMATCH
    assert all("message" not in listed[v] for v in "123")

    contents = {v: sop_uids(synthetic.metadata(target, v)) for v in "1234"}
    assert contents == {"1": {own[0]}, "2": {own[0], own[1]}, "3": set(own), "4": set(own)}
    for version in "1234":
        props = synthetic.get(target, version)
        assert props["versionId"] == version
        assert props["imageSetWorkflowStatus"] == listed[version]["ImageSetWorkflowStatus"]
    summary = synthetic.client.search_image_sets(
        datastoreId=synthetic.datastore_id,
        searchCriteria={
            "filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": destination.series_uid}]}]
        },
    )
    assert {s["imageSetId"]: s["version"] for s in summary["imageSetsMetadataSummaries"]}[target] == 4


def test_get_image_set_with_a_version_id_returns_that_versions_state_during_a_copy(synthetic):
    source, destination = synthetic.same_study_pair()
    synthetic.handle.configure(timing=LONG_COPY)
    synthetic.copy(source.image_set_id, destination=destination.image_set_id, destination_version="1", force=True)
    latest = synthetic.get(destination.image_set_id)
    assert (latest["versionId"], latest["imageSetState"], latest["imageSetWorkflowStatus"]) == (
        "2",
        "LOCKED",
        "COPYING",
    )
    old = synthetic.get(destination.image_set_id, "1")
    assert (old["versionId"], old["imageSetState"], old["imageSetWorkflowStatus"]) == ("1", "ACTIVE", "CREATED")
    listed = synthetic.versions(destination.image_set_id)
    assert (listed["2"]["imageSetState"], listed["2"]["ImageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
    for missing in ("3", "9" * 30):  # the second is beyond a 64-bit integer
        with pytest.raises(ClientError) as excinfo:
            synthetic.get(destination.image_set_id, missing)
        assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)
        with pytest.raises(ClientError) as excinfo:
            synthetic.metadata(destination.image_set_id, missing)
        assert error_of(excinfo)[:2] == ("ResourceNotFoundException", 404)
