"""End-to-end tests of every non-copy operation of the emulator, through real boto3 clients over HTTP.

Each test gets a fresh emulator (``healthimaging_emulator`` fixture: fast rates, 50 ms asynchronous
work). Every response is validated against botocore's service model by the fixture, which fails the
test at teardown if any broke it (including error codes not declared for the operation).

Tests that must observe an intermediate state (CREATING, UPDATING, DELETING, SUBMITTED) lengthen the
relevant timing with ``configure(timing=...)`` first.
"""

from __future__ import annotations

import datetime
import gzip
import http.client
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pydicom.data
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from healthimaging_emulator.pytest_plugin import running_emulator

ACCOUNT = "123456789012"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ImportRole"
UNKNOWN_ID = "0" * 32
UTC = datetime.timezone.utc
FAR_PAST = datetime.datetime(1990, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime.datetime(2999, 1, 1, tzinfo=UTC)

# pydicom test files that are bundled locally (get_testdata_file downloads names it does not bundle).
CT_SMALL = "CT_small.dcm"
MR_SMALL = "MR_small.dcm"
DICOMDIR_ROOT = Path(pydicom.data.DATA_ROOT) / "test_files" / "dicomdirtests"
TWO_FILE_SERIES = ("98892001/CT2N/6293", "98892001/CT2N/6924")  # one series, two instances


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def wait_until(fetch, done, timeout: float = 5.0, interval: float = 0.02):
    """Call ``fetch`` until ``done(value)``; the value, or AssertionError with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s; last value: {value!r}")
        time.sleep(interval)


def error(call, /, **kwargs) -> tuple[str, int, str]:
    """(code, HTTP status, message) of a call that must fail with a ClientError."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"].get("Message", ""),
    )


def datastore_arn(datastore_id: str) -> str:
    return f"arn:aws:medical-imaging:{REGION}:{ACCOUNT}:datastore/{datastore_id}"


def image_set_arn(datastore_id: str, image_set_id: str) -> str:
    return f"{datastore_arn(datastore_id)}/imageset/{image_set_id}"


def search_all(client, datastore_id: str, criteria: dict | None = None, page: int = 50) -> list[dict]:
    """Every summary of a search, following nextToken; checks that pages never exceed ``page``."""
    items: list[dict] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"datastoreId": datastore_id, "maxResults": page}
        if criteria is not None:
            kwargs["searchCriteria"] = criteria
        if token:
            kwargs["nextToken"] = token
        response = client.search_image_sets(**kwargs)
        assert len(response["imageSetsMetadataSummaries"]) <= page
        items.extend(response["imageSetsMetadataSummaries"])
        token = response.get("nextToken")
        if not token:
            return items


def equal(attribute: str, value: Any) -> dict:
    return {"filters": [{"operator": "EQUAL", "values": [{attribute: value}]}]}


def ids(summaries: list[dict]) -> list[str]:
    return [s["imageSetId"] for s in summaries]


def metadata(client, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    kwargs = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version is not None:
        kwargs["versionId"] = version
    response = client.get_image_set_metadata(**kwargs)
    return json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))


def image_set(client, datastore_id: str, image_set_id: str, version: str | None = None) -> dict:
    kwargs = {"datastoreId": datastore_id, "imageSetId": image_set_id}
    if version is not None:
        kwargs["versionId"] = version
    return client.get_image_set(**kwargs)


def wait_image_set(client, datastore_id: str, image_set_id: str, state: str = "ACTIVE") -> dict:
    return wait_until(lambda: image_set(client, datastore_id, image_set_id), lambda r: r["imageSetState"] == state)


def new_datastore(emulator, client, name: str = "ops") -> str:
    """An ACTIVE data store created through the API (datastore_seconds 0 makes it ACTIVE at once)."""
    emulator.configure(timing={"datastore_seconds": 0})
    created = client.create_datastore(datastoreName=name)
    assert created["datastoreStatus"] == "ACTIVE"
    emulator.configure(timing={"datastore_seconds": 0.05})
    return created["datastoreId"]


def update(
    client,
    datastore_id: str,
    image_set_id: str,
    latest: str,
    *,
    updatable: dict | None = None,
    removable: dict | None = None,
    revert: str | None = None,
    **kwargs,
) -> dict:
    if revert is not None:
        updates: dict[str, Any] = {"revertToVersionId": revert}
    else:
        dicom: dict[str, bytes] = {}
        if updatable is not None:
            dicom["updatableAttributes"] = json.dumps(updatable).encode()
        if removable is not None:
            dicom["removableAttributes"] = json.dumps(removable).encode()
        updates = {"DICOMUpdates": dicom}
    return client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId=latest,
        updateImageSetMetadataUpdates=updates,
        **kwargs,
    )


def copy_pydicom_files(folder: Path, *, with_junk: bool = True) -> list[Path]:
    """CT_small, MR_small and a two-instance series (three series, four DICOM files), plus a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Path(pydicom.data.get_testdata_file(CT_SMALL)), Path(pydicom.data.get_testdata_file(MR_SMALL))]
    sources += [DICOMDIR_ROOT / relative for relative in TWO_FILE_SERIES]
    copied = []
    for index, source in enumerate(sources):
        target = folder / f"{index:02d}-{source.name}"
        shutil.copyfile(source, target)
        copied.append(target)
    if with_junk:
        (folder / "notes.txt").write_text("this is not a DICOM file\n")
    return copied


def series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def start_import(client, datastore_id: str, source: Path, output: Path, token: str | None = None, **kwargs) -> dict:
    args = dict(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE, inputS3Uri=str(source), outputS3Uri=str(output), **kwargs
    )
    if token is not None:
        args["clientToken"] = token
    return client.start_dicom_import_job(**args)


def wait_job(client, datastore_id: str, job_id: str) -> dict:
    return wait_until(
        lambda: client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"],
        lambda p: p["jobStatus"] in ("COMPLETED", "FAILED"),
    )


@pytest.fixture
def healthimaging_emulator(tmp_path):
    """The plugin's emulator with ``--s3-root`` at this test's tmp_path: imports read and write only under it."""
    with running_emulator(s3_root=tmp_path) as handle:
        yield handle


@pytest.fixture
def emulator(healthimaging_emulator):
    return healthimaging_emulator


@pytest.fixture
def client(healthimaging_emulator):
    return healthimaging_emulator.client()


@pytest.fixture
def unvalidated(healthimaging_emulator):
    """A client that sends whatever it is given, so that the server has to reject it."""
    return healthimaging_emulator.client(parameter_validation=False)


@pytest.fixture
def sample(emulator, client) -> tuple[str, list[dict]]:
    """The ``sample`` seed (pydicom's test files): its data store id and every search summary."""
    datastore_id = emulator.seed("sample")["datastoreId"]
    return datastore_id, search_all(client, datastore_id)


@pytest.fixture
def synthetic(emulator, client) -> tuple[str, list[dict]]:
    """The ``synthetic:200`` seed: its data store id and every search summary."""
    seeded = emulator.seed("synthetic:200")
    assert seeded["imageSets"] == 200
    return seeded["datastoreId"], search_all(client, seeded["datastoreId"])


# --------------------------------------------------------------------------------------------
# data stores
# --------------------------------------------------------------------------------------------


def test_create_datastore_is_creating_then_active_with_name_and_tags(emulator, client):
    emulator.configure(timing={"datastore_seconds": 0.3})
    created = client.create_datastore(
        datastoreName="my-store.1", clientToken="token-1", tags={"team": "imaging", "env": "test"}
    )
    datastore_id = created["datastoreId"]
    assert created["datastoreStatus"] == "CREATING"
    assert len(datastore_id) == 32 and datastore_id.isalnum() and datastore_id == datastore_id.lower()
    props = client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]
    assert props["datastoreStatus"] == "CREATING"
    assert props["datastoreName"] == "my-store.1"
    assert props["datastoreArn"] == datastore_arn(datastore_id)
    assert isinstance(props["createdAt"], datetime.datetime)

    active = wait_until(
        lambda: client.get_datastore(datastoreId=datastore_id)["datastoreProperties"],
        lambda p: p["datastoreStatus"] == "ACTIVE",
    )
    assert active["datastoreName"] == "my-store.1"
    assert active["updatedAt"] > active["createdAt"]
    assert client.list_tags_for_resource(resourceArn=datastore_arn(datastore_id))["tags"] == {
        "team": "imaging",
        "env": "test",
    }


def test_creating_datastore_refuses_image_set_work_and_deletion(emulator, client):
    emulator.configure(timing={"datastore_seconds": 30})
    datastore_id = client.create_datastore(datastoreName="slow")["datastoreId"]
    assert error(client.delete_datastore, datastoreId=datastore_id)[:2] == ("ConflictException", 409)
    assert error(client.search_image_sets, datastoreId=datastore_id)[:2] == ("ConflictException", 409)


def test_create_datastore_client_token_is_idempotent(client):
    first = client.create_datastore(datastoreName="idem", clientToken="same-token")
    again = client.create_datastore(datastoreName="idem", clientToken="same-token")
    other = client.create_datastore(datastoreName="idem", clientToken="other-token")
    assert again["datastoreId"] == first["datastoreId"]
    assert other["datastoreId"] != first["datastoreId"]
    listed = [d["datastoreId"] for d in client.list_datastores()["datastoreSummaries"]]
    assert sorted(listed) == sorted({first["datastoreId"], other["datastoreId"]})


def test_create_datastore_without_token_gets_one_from_botocore(client):
    # clientToken is an idempotency token: botocore fills in a fresh one, so two calls make two stores.
    one = client.create_datastore(datastoreName="auto")["datastoreId"]
    two = client.create_datastore(datastoreName="auto")["datastoreId"]
    assert one != two


def test_list_datastores_status_filter_and_pagination(emulator, client):
    emulator.configure(timing={"datastore_seconds": 0})
    active = {client.create_datastore(datastoreName=f"active-{i}")["datastoreId"] for i in range(3)}
    emulator.configure(timing={"datastore_seconds": 30})
    creating = {client.create_datastore(datastoreName=f"creating-{i}")["datastoreId"] for i in range(2)}

    def listed(**kwargs) -> set[str]:
        return {d["datastoreId"] for d in client.list_datastores(**kwargs)["datastoreSummaries"]}

    assert listed(datastoreStatus="ACTIVE") == active
    assert listed(datastoreStatus="CREATING") == creating
    assert listed(datastoreStatus="DELETED") == set()
    assert listed() == active | creating

    pages, token = [], None
    while True:
        kwargs: dict[str, Any] = {"maxResults": 2}
        if token:
            kwargs["nextToken"] = token
        response = client.list_datastores(**kwargs)
        pages.append([d["datastoreId"] for d in response["datastoreSummaries"]])
        token = response.get("nextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    flat = [i for p in pages for i in p]
    assert len(flat) == len(set(flat)) and set(flat) == active | creating
    summary = client.list_datastores(maxResults=1)["datastoreSummaries"][0]
    assert summary["datastoreArn"] == datastore_arn(summary["datastoreId"])

    paginated = [
        d["datastoreId"]
        for page in client.get_paginator("list_datastores").paginate(PaginationConfig={"PageSize": 2})
        for d in page["datastoreSummaries"]
    ]
    assert paginated == flat


def test_list_datastores_rejects_garbled_and_foreign_tokens(emulator, client):
    emulator.configure(timing={"datastore_seconds": 0})
    for i in range(3):
        client.create_datastore(datastoreName=f"d{i}")
    token = client.list_datastores(maxResults=1, datastoreStatus="ACTIVE")["nextToken"]
    assert client.list_datastores(maxResults=1, datastoreStatus="ACTIVE", nextToken=token)["datastoreSummaries"]

    assert error(client.list_datastores, nextToken="not-a-token")[:2] == ("ValidationException", 400)
    # a token of the same operation with other parameters
    assert error(client.list_datastores, nextToken=token, datastoreStatus="CREATING")[:2] == (
        "ValidationException",
        400,
    )
    # a token of another operation
    datastore_id = emulator.seed("synthetic:3")["datastoreId"]
    search_token = client.search_image_sets(datastoreId=datastore_id, maxResults=1)["nextToken"]
    assert error(client.list_datastores, nextToken=search_token)[:2] == ("ValidationException", 400)
    # and a data-store token given to SearchImageSets
    assert error(client.search_image_sets, datastoreId=datastore_id, nextToken=token)[:2] == (
        "ValidationException",
        400,
    )


def test_delete_datastore_conflicts_while_it_holds_image_sets_then_goes_deleting_and_deleted(emulator, client):
    datastore_id = emulator.seed("synthetic:2")["datastoreId"]
    code, status, message = error(client.delete_datastore, datastoreId=datastore_id)
    assert (code, status) == ("ConflictException", 409)
    assert "2 image sets" in message

    image_set_ids = ids(search_all(client, datastore_id))
    client.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_ids[0])
    wait_image_set(client, datastore_id, image_set_ids[0], "DELETED")
    assert error(client.delete_datastore, datastoreId=datastore_id)[0] == "ConflictException"  # one left
    client.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_ids[1])
    wait_image_set(client, datastore_id, image_set_ids[1], "DELETED")

    emulator.configure(timing={"datastore_seconds": 0.3})
    deleted = client.delete_datastore(datastoreId=datastore_id)
    assert deleted == {**deleted, "datastoreId": datastore_id, "datastoreStatus": "DELETING"}
    assert client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "DELETING"
    assert error(client.delete_datastore, datastoreId=datastore_id)[0] == "ConflictException"  # already deleting
    wait_until(
        lambda: client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"],
        lambda s: s == "DELETED",
    )
    listed = client.list_datastores(datastoreStatus="DELETED")["datastoreSummaries"]
    assert [d["datastoreId"] for d in listed] == [datastore_id]
    assert datastore_id not in {
        d["datastoreId"] for d in client.list_datastores(datastoreStatus="ACTIVE")["datastoreSummaries"]
    }
    # a deleted data store takes no more work
    assert error(client.delete_datastore, datastoreId=datastore_id)[0] == "ResourceNotFoundException"
    assert error(client.search_image_sets, datastoreId=datastore_id)[0] == "ResourceNotFoundException"
    assert (
        error(client.get_image_set, datastoreId=datastore_id, imageSetId=image_set_ids[0])[0]
        == "ResourceNotFoundException"
    )


def test_unknown_ids_are_resource_not_found(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    calls = [
        (client.get_datastore, {"datastoreId": UNKNOWN_ID}),
        (client.delete_datastore, {"datastoreId": UNKNOWN_ID}),
        (client.search_image_sets, {"datastoreId": UNKNOWN_ID}),
        (client.get_image_set, {"datastoreId": UNKNOWN_ID, "imageSetId": UNKNOWN_ID}),
        (client.get_image_set, {"datastoreId": datastore_id, "imageSetId": UNKNOWN_ID}),
        (client.get_image_set_metadata, {"datastoreId": datastore_id, "imageSetId": UNKNOWN_ID}),
        (
            client.get_image_frame,
            {
                "datastoreId": datastore_id,
                "imageSetId": UNKNOWN_ID,
                "imageFrameInformation": {"imageFrameId": UNKNOWN_ID},
            },
        ),
        (client.list_image_set_versions, {"datastoreId": datastore_id, "imageSetId": UNKNOWN_ID}),
        (client.delete_image_set, {"datastoreId": datastore_id, "imageSetId": UNKNOWN_ID}),
        (
            client.update_image_set_metadata,
            {
                "datastoreId": datastore_id,
                "imageSetId": UNKNOWN_ID,
                "latestVersionId": "1",
                "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
            },
        ),
        (client.list_dicom_import_jobs, {"datastoreId": UNKNOWN_ID}),
        (client.get_dicom_import_job, {"datastoreId": datastore_id, "jobId": UNKNOWN_ID}),
        (client.get_dicom_import_job, {"datastoreId": UNKNOWN_ID, "jobId": UNKNOWN_ID}),
        (
            client.start_dicom_import_job,
            {"datastoreId": UNKNOWN_ID, "dataAccessRoleArn": ROLE, "inputS3Uri": "/tmp/in", "outputS3Uri": "/tmp/out"},
        ),
    ]
    for call, kwargs in calls:
        code, status, _ = error(call, **kwargs)
        assert (code, status) == ("ResourceNotFoundException", 404), (call.__name__, kwargs)


@pytest.mark.parametrize(
    "bad_id", ["ABCDEF0123456789ABCDEF0123456789", "0" * 31, "0" * 33, "0123456789abcdef0123456789abcde_"]
)
def test_ids_that_break_the_pattern_are_validation_errors(emulator, client, bad_id):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    calls = [  # (operation, arguments, the member the service names)
        (client.get_datastore, {"datastoreId": bad_id}, "datastoreId"),
        (client.delete_datastore, {"datastoreId": bad_id}, "datastoreId"),
        (client.search_image_sets, {"datastoreId": bad_id}, "datastoreId"),
        (client.get_image_set, {"datastoreId": datastore_id, "imageSetId": bad_id}, "imageSetId"),
        (client.get_image_set, {"datastoreId": bad_id, "imageSetId": image_set_id}, "datastoreId"),
        (client.get_image_set_metadata, {"datastoreId": datastore_id, "imageSetId": bad_id}, "imageSetId"),
        (
            client.get_image_frame,
            {
                "datastoreId": datastore_id,
                "imageSetId": image_set_id,
                "imageFrameInformation": {"imageFrameId": bad_id},
            },
            "imageFrameInformation.imageFrameId",
        ),
        (client.list_image_set_versions, {"datastoreId": datastore_id, "imageSetId": bad_id}, "imageSetId"),
        (client.delete_image_set, {"datastoreId": datastore_id, "imageSetId": bad_id}, "imageSetId"),
        (client.list_dicom_import_jobs, {"datastoreId": bad_id}, "datastoreId"),
    ]
    for call, kwargs, member in calls:
        code, status, message = error(call, **kwargs)
        assert (code, status) == ("ValidationException", 400), (call.__name__, kwargs)
        # The service's wording for a pattern constraint, naming the value, the member and the pattern.
        assert message == (
            f"1 validation error detected: Value '{bad_id}' at '{member}' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: [0-9a-z]{32}"
        ), (call.__name__, message)
    # nothing happened to the image set
    assert image_set(client, datastore_id, image_set_id)["imageSetState"] == "ACTIVE"


# --------------------------------------------------------------------------------------------
# image set reads
# --------------------------------------------------------------------------------------------


def test_get_image_set_latest_and_given_version(emulator, client, sample):
    datastore_id, summaries = sample
    image_set_id = summaries[0]["imageSetId"]
    latest = image_set(client, datastore_id, image_set_id)
    assert latest["datastoreId"] == datastore_id and latest["imageSetId"] == image_set_id
    assert latest["versionId"] == "1"
    assert (latest["imageSetState"], latest["imageSetWorkflowStatus"]) == ("ACTIVE", "CREATED")
    assert latest["isPrimary"] is True
    assert latest["storageTier"] == "FREQUENT_ACCESS"
    assert latest["imageSetArn"] == image_set_arn(datastore_id, image_set_id)
    assert "deletedAt" not in latest and "overrides" not in latest

    update(
        client,
        datastore_id,
        image_set_id,
        "1",
        updatable={"SchemaVersion": "1.1", "Patient": {"DICOM": {"PatientName": "NEW^NAME"}}},
    )
    second = wait_image_set(client, datastore_id, image_set_id)
    assert second["versionId"] == "2" and second["imageSetWorkflowStatus"] == "UPDATED"
    first = image_set(client, datastore_id, image_set_id, version="1")
    assert first["versionId"] == "1" and first["imageSetWorkflowStatus"] == "CREATED"
    assert image_set(client, datastore_id, image_set_id, version="2")["versionId"] == "2"

    code, status, _ = error(client.get_image_set, datastoreId=datastore_id, imageSetId=image_set_id, versionId="7")
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert (
        error(client.get_image_set_metadata, datastoreId=datastore_id, imageSetId=image_set_id, versionId="7")[0]
        == "ResourceNotFoundException"
    )
    assert (
        error(client.get_image_set, datastoreId=datastore_id, imageSetId=image_set_id, versionId="v1")[0]
        == "ValidationException"
    )


def test_get_image_set_metadata_is_gzip_json_with_the_document_structure(client, sample):
    datastore_id, summaries = sample
    summary = next(s for s in summaries if s["DICOMTags"].get("DICOMPatientId") == "1CT1")  # CT_small
    response = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=summary["imageSetId"])
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-encoding"] == "gzip"
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/json"
    assert response["contentEncoding"] == "gzip" and response["contentType"] == "application/json"
    raw = response["imageSetMetadataBlob"].read()
    assert raw[:2] == b"\x1f\x8b"  # botocore hands over the gzip bytes as they are
    document = json.loads(gzip.decompress(raw))

    assert document["SchemaVersion"] == "1.1"
    assert document["DatastoreID"] == datastore_id
    assert document["ImageSetID"] == summary["imageSetId"]
    assert document["Patient"]["DICOM"]["PatientID"] == "1CT1"
    study = document["Study"]
    assert study["DICOM"]["StudyInstanceUID"] == summary["DICOMTags"]["DICOMStudyInstanceUID"]
    ct = pydicom.dcmread(pydicom.data.get_testdata_file(CT_SMALL), stop_before_pixels=True)
    assert list(study["Series"]) == [ct.SeriesInstanceUID]
    series = study["Series"][ct.SeriesInstanceUID]
    assert series["DICOM"]["SeriesInstanceUID"] == ct.SeriesInstanceUID
    assert series["DICOM"]["Modality"] == "CT"
    instance = series["Instances"][ct.SOPInstanceUID]
    assert instance["DICOM"]["SOPInstanceUID"] == ct.SOPInstanceUID
    assert instance["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.202"
    [frame] = instance["ImageFrames"]
    assert len(frame["ID"]) == 32 and frame["FrameSizeInBytes"] == 128 * 128 * 2


def test_get_image_frame_returns_bytes_for_a_frame_of_the_metadata(client, sample):
    datastore_id, summaries = sample
    summary = next(s for s in summaries if s["DICOMTags"].get("DICOMPatientId") == "1CT1")
    document = metadata(client, datastore_id, summary["imageSetId"])
    frame_ids = [
        f["ID"]
        for series in document["Study"]["Series"].values()
        for inst in series["Instances"].values()
        for f in inst["ImageFrames"]
    ]
    assert frame_ids
    response = client.get_image_frame(
        datastoreId=datastore_id, imageSetId=summary["imageSetId"], imageFrameInformation={"imageFrameId": frame_ids[0]}
    )
    blob = response["imageFrameBlob"].read()
    assert len(blob) > 0 and blob[:4] == b"\xff\x4f\xff\x51"  # a JPEG 2000 codestream starts with SOC, SIZ
    assert response["contentType"] == "application/octet-stream"

    code, status, _ = error(
        client.get_image_frame,
        datastoreId=datastore_id,
        imageSetId=summary["imageSetId"],
        imageFrameInformation={"imageFrameId": UNKNOWN_ID},
    )
    assert (code, status) == ("ResourceNotFoundException", 404)
    # a frame of another image set is not in this one
    other = next(s for s in summaries if s["imageSetId"] != summary["imageSetId"])
    assert (
        error(
            client.get_image_frame,
            datastoreId=datastore_id,
            imageSetId=other["imageSetId"],
            imageFrameInformation={"imageFrameId": frame_ids[0]},
        )[0]
        == "ResourceNotFoundException"
    )


def test_list_image_set_versions_paginates_with_capital_workflow_status(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    for latest in ("1", "2"):
        update(
            client,
            datastore_id,
            image_set_id,
            latest,
            updatable={"SchemaVersion": "1.1", "Study": {"DICOM": {"StudyDescription": f"after {latest}"}}},
        )
        wait_image_set(client, datastore_id, image_set_id)

    pages, token = [], None
    while True:
        kwargs: dict[str, Any] = {"datastoreId": datastore_id, "imageSetId": image_set_id, "maxResults": 1}
        if token:
            kwargs["nextToken"] = token
        response = client.list_image_set_versions(**kwargs)
        pages.append(response["imageSetPropertiesList"])
        token = response.get("nextToken")
        if not token:
            break
    assert [len(p) for p in pages] == [1, 1, 1]
    versions = [p[0] for p in pages]
    assert [v["versionId"] for v in versions] == ["3", "2", "1"]
    # botocore keeps the capital-I key of the model and would drop a lower-case one
    assert [v["ImageSetWorkflowStatus"] for v in versions] == ["UPDATED", "UPDATED", "CREATED"]
    assert all("imageSetWorkflowStatus" not in v for v in versions)
    assert all(v["imageSetState"] == "ACTIVE" and v["imageSetId"] == image_set_id for v in versions)
    whole = client.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)
    assert [v["versionId"] for v in whole["imageSetPropertiesList"]] == ["3", "2", "1"] and "nextToken" not in whole
    assert (
        error(client.list_image_set_versions, datastoreId=datastore_id, imageSetId=image_set_id, nextToken="garbage")[0]
        == "ValidationException"
    )


# --------------------------------------------------------------------------------------------
# SearchImageSets
# --------------------------------------------------------------------------------------------


def test_search_without_criteria_returns_every_image_set(emulator, client, synthetic):
    datastore_id, summaries = synthetic
    assert len(summaries) == 200 and len(set(ids(summaries))) == 200
    for summary in summaries:
        assert isinstance(summary["version"], int) and summary["version"] == 1
        assert summary["storageTier"] == "FREQUENT_ACCESS"
        assert isinstance(summary["createdAt"], datetime.datetime)
        assert summary["DICOMTags"]["DICOMPatientId"].startswith("SYN")
    first = client.search_image_sets(datastoreId=datastore_id)
    assert len(first["imageSetsMetadataSummaries"]) == 50 and first["nextToken"]  # the default page size
    paginated = [
        s["imageSetId"]
        for page in client.get_paginator("search_image_sets").paginate(
            datastoreId=datastore_id, PaginationConfig={"PageSize": 30}
        )
        for s in page["imageSetsMetadataSummaries"]
    ]
    assert paginated == ids(summaries)
    # an empty criteria object means the same as none
    assert ids(search_all(client, datastore_id, criteria={})) == ids(summaries)


def _pick(summaries: list[dict], tag: str) -> tuple[Any, set[str]]:
    """The value of ``tag`` shared by the most image sets (but not all), and those image sets."""
    groups: dict[Any, set[str]] = {}
    for s in summaries:
        if tag in s["DICOMTags"]:
            groups.setdefault(s["DICOMTags"][tag], set()).add(s["imageSetId"])
    value = max((v for v in groups if len(groups[v]) < len(summaries)), key=lambda v: len(groups[v]))
    return value, groups[value]


@pytest.mark.parametrize(
    "attribute", ["DICOMPatientId", "DICOMStudyInstanceUID", "DICOMAccessionNumber", "DICOMStudyId"]
)
def test_search_equal_on_study_level_attributes(client, sample, attribute):
    datastore_id, summaries = sample
    value, expected = _pick(summaries, attribute)
    assert 1 <= len(expected) < len(summaries)
    found = search_all(client, datastore_id, equal(attribute, value))
    assert set(ids(found)) == expected and len(found) == len(expected)
    assert all(s["DICOMTags"][attribute] == value for s in found)
    assert (
        search_all(client, datastore_id, equal(attribute, "9.9.9.9" if "UID" in attribute else "no-such-value")) == []
    )


def test_search_equal_on_series_instance_uid_finds_exactly_that_series(client, sample):
    datastore_id, summaries = sample
    for summary in summaries[:5]:
        uid = summary["DICOMTags"]["DICOMSeriesInstanceUID"]
        found = search_all(client, datastore_id, equal("DICOMSeriesInstanceUID", uid))
        assert ids(found) == [summary["imageSetId"]]
    # a prefix of a UID is not a match
    prefix = summaries[0]["DICOMTags"]["DICOMSeriesInstanceUID"].rsplit(".", 1)[0]
    assert search_all(client, datastore_id, equal("DICOMSeriesInstanceUID", prefix)) == []


def test_search_equal_on_is_primary(client, synthetic):
    datastore_id, summaries = synthetic
    primary = {s["imageSetId"] for s in summaries if s["isPrimary"]}
    secondary = {s["imageSetId"] for s in summaries if not s["isPrimary"]}
    assert len(secondary) == 20 and len(primary) == 180
    assert set(ids(search_all(client, datastore_id, equal("isPrimary", False)))) == secondary
    assert set(ids(search_all(client, datastore_id, equal("isPrimary", True)))) == primary


def test_two_filters_are_anded(client, synthetic):
    datastore_id, summaries = synthetic
    study, in_study = _pick(summaries, "DICOMStudyInstanceUID")
    assert len(in_study) > 1
    member = next(s for s in summaries if s["imageSetId"] in in_study)
    series = member["DICOMTags"]["DICOMSeriesInstanceUID"]
    both = {
        "filters": [
            {"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]},
            {"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]},
        ]
    }
    assert ids(search_all(client, datastore_id, both)) == [member["imageSetId"]]

    patient = member["DICOMTags"]["DICOMPatientId"]
    patient_sets = {s["imageSetId"] for s in summaries if s["DICOMTags"]["DICOMPatientId"] == patient}
    non_primary = {s["imageSetId"] for s in summaries if not s["isPrimary"]}
    with_primary = {
        "filters": [
            {"operator": "EQUAL", "values": [{"DICOMPatientId": patient}]},
            {"operator": "EQUAL", "values": [{"isPrimary": True}]},
        ]
    }
    assert set(ids(search_all(client, datastore_id, with_primary))) == patient_sets - non_primary
    other_patient = next(
        s["DICOMTags"]["DICOMPatientId"] for s in summaries if s["DICOMTags"]["DICOMPatientId"] != patient
    )
    disjoint = {
        "filters": [
            {"operator": "EQUAL", "values": [{"DICOMPatientId": other_patient}]},
            {"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]},
        ]
    }
    assert search_all(client, datastore_id, disjoint) == []


def _study_date_time(summary: dict) -> str:
    tags = summary["DICOMTags"]
    return tags["DICOMStudyDate"] + tags.get("DICOMStudyTime", "")


def test_search_between_on_study_date_and_time(client, synthetic):
    datastore_id, summaries = synthetic
    moments = sorted({_study_date_time(s) for s in summaries})
    assert all(len(m) == 14 for m in moments)
    low, high = moments[len(moments) // 4], moments[3 * len(moments) // 4]
    expected = {s["imageSetId"] for s in summaries if low <= _study_date_time(s) <= high}
    assert 1 < len(expected) < len(summaries)
    criteria = {
        "filters": [
            {
                "operator": "BETWEEN",
                "values": [
                    {"DICOMStudyDateAndTime": {"DICOMStudyDate": low[:8], "DICOMStudyTime": low[8:]}},
                    {"DICOMStudyDateAndTime": {"DICOMStudyDate": high[:8], "DICOMStudyTime": high[8:]}},
                ],
            }
        ]
    }
    found = search_all(client, datastore_id, criteria)
    assert set(ids(found)) == expected and len(found) == len(expected)  # the bounds are inclusive

    ordered = search_all(client, datastore_id, {"sort": {"sortField": "DICOMStudyDateAndTime", "sortOrder": "ASC"}})
    keys = [_study_date_time(s) for s in ordered]
    assert keys == sorted(keys) and len(keys) == 200


def test_search_between_on_created_and_updated_at(emulator, client, synthetic, tmp_path):
    datastore_id, summaries = synthetic
    time.sleep(0.02)
    mark = datetime.datetime.now(UTC)
    # a later import creates one image set after the mark
    source = tmp_path / "in"
    copy_pydicom_files(source, with_junk=False)
    for path in list(source.iterdir())[1:]:
        path.unlink()
    job = start_import(client, datastore_id, source, tmp_path / "out")
    assert wait_job(client, datastore_id, job["jobId"])["jobStatus"] == "COMPLETED"
    created_after = search_all(
        client,
        datastore_id,
        {"filters": [{"operator": "BETWEEN", "values": [{"createdAt": mark}, {"createdAt": FAR_FUTURE}]}]},
    )
    assert len(created_after) == 1 and created_after[0]["imageSetId"] not in ids(summaries)
    created_before = search_all(
        client,
        datastore_id,
        {"filters": [{"operator": "BETWEEN", "values": [{"createdAt": FAR_PAST}, {"createdAt": mark}]}]},
    )
    assert set(ids(created_before)) == set(ids(summaries))

    # updates move updatedAt, not createdAt
    time.sleep(0.02)
    mark2 = datetime.datetime.now(UTC)
    touched = ids(summaries)[10:12]
    for image_set_id in touched:
        update(
            client,
            datastore_id,
            image_set_id,
            "1",
            updatable={"SchemaVersion": "1.1", "Study": {"DICOM": {"StudyDescription": "touched"}}},
        )
    for image_set_id in touched:
        wait_image_set(client, datastore_id, image_set_id)
    updated_after = search_all(
        client,
        datastore_id,
        {"filters": [{"operator": "BETWEEN", "values": [{"updatedAt": mark2}, {"updatedAt": FAR_FUTURE}]}]},
    )
    assert set(ids(updated_after)) == set(touched)
    assert all(s["version"] == 2 for s in updated_after)
    assert (
        len(
            search_all(
                client,
                datastore_id,
                {"filters": [{"operator": "BETWEEN", "values": [{"createdAt": mark2}, {"createdAt": FAR_FUTURE}]}]},
            )
        )
        == 0
    )
    # both ranges at once
    both = search_all(
        client,
        datastore_id,
        {
            "filters": [
                {"operator": "BETWEEN", "values": [{"updatedAt": mark2}, {"updatedAt": FAR_FUTURE}]},
                {"operator": "BETWEEN", "values": [{"createdAt": FAR_PAST}, {"createdAt": mark}]},
            ]
        },
    )
    assert set(ids(both)) == set(touched)


def test_search_sorts_by_updated_and_created_at(emulator, client, tmp_path):
    datastore_id = emulator.seed("synthetic:12")["datastoreId"]
    seeded = ids(search_all(client, datastore_id))
    # give three image sets distinct, later updatedAt values, in this order
    order = [seeded[7], seeded[2], seeded[9]]
    for image_set_id in order:
        update(
            client,
            datastore_id,
            image_set_id,
            "1",
            updatable={"SchemaVersion": "1.1", "Patient": {"DICOM": {"PatientComments": "sorted"}}},
        )
        wait_image_set(client, datastore_id, image_set_id)
    # and one image set created later than all others
    source = tmp_path / "in"
    copy_pydicom_files(source, with_junk=False)
    for path in list(source.iterdir())[1:]:
        path.unlink()
    job = start_import(client, datastore_id, source, tmp_path / "out")
    wait_job(client, datastore_id, job["jobId"])
    imported = next(i for i in ids(search_all(client, datastore_id)) if i not in seeded)

    def sorted_by(field: str, direction: str) -> list[dict]:
        return search_all(client, datastore_id, {"sort": {"sortField": field, "sortOrder": direction}}, page=5)

    desc = sorted_by("updatedAt", "DESC")
    assert len(desc) == 13
    stamps = [s["updatedAt"] for s in desc]
    assert stamps == sorted(stamps, reverse=True)
    assert ids(desc)[:4] == [imported, *reversed(order)]
    asc = sorted_by("updatedAt", "ASC")
    assert [s["updatedAt"] for s in asc] == sorted(stamps)
    assert ids(asc)[-4:] == [*order, imported]
    assert ids(asc) == list(reversed(ids(desc)))

    created_desc = sorted_by("createdAt", "DESC")
    assert ids(created_desc)[0] == imported
    assert [s["createdAt"] for s in created_desc] == sorted((s["createdAt"] for s in created_desc), reverse=True)
    created_asc = sorted_by("createdAt", "ASC")
    assert ids(created_asc)[-1] == imported
    assert [s["createdAt"] for s in created_asc] == sorted(s["createdAt"] for s in created_asc)

    response = client.search_image_sets(
        datastoreId=datastore_id, searchCriteria={"sort": {"sortField": "updatedAt", "sortOrder": "DESC"}}
    )
    assert response["sort"] == {"sortField": "updatedAt", "sortOrder": "DESC"}


INVALID_SEARCHES = {
    "between-one-value": {
        "searchCriteria": {"filters": [{"operator": "BETWEEN", "values": [{"createdAt": FAR_PAST}]}]}
    },
    "between-on-patient-id": {
        "searchCriteria": {
            "filters": [{"operator": "BETWEEN", "values": [{"DICOMPatientId": "A"}, {"DICOMPatientId": "Z"}]}]
        }
    },
    "between-mixed-attributes": {
        "searchCriteria": {
            "filters": [{"operator": "BETWEEN", "values": [{"createdAt": FAR_PAST}, {"updatedAt": FAR_FUTURE}]}]
        }
    },
    "equal-two-values": {
        "searchCriteria": {
            "filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "A"}, {"DICOMPatientId": "B"}]}]
        }
    },
    "three-filters": {
        "searchCriteria": {
            "filters": [
                {"operator": "EQUAL", "values": [{"DICOMPatientId": "A"}]},
                {"operator": "EQUAL", "values": [{"isPrimary": True}]},
                {"operator": "EQUAL", "values": [{"DICOMAccessionNumber": "B"}]},
            ]
        }
    },
    "unknown-operator": {"searchCriteria": {"filters": [{"operator": "LIKE", "values": [{"DICOMPatientId": "A"}]}]}},
    "two-union-members": {
        "searchCriteria": {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "A", "DICOMStudyId": "B"}]}]}
    },
    "bad-sort-field": {"searchCriteria": {"sort": {"sortField": "patientName", "sortOrder": "ASC"}}},
    "max-results-0": {"maxResults": 0},
    "max-results-51": {"maxResults": 51},
}


@pytest.mark.parametrize("case", list(INVALID_SEARCHES))
def test_invalid_searches_are_validation_errors(emulator, unvalidated, case):
    datastore_id = emulator.seed("synthetic:3")["datastoreId"]
    code, status, message = error(unvalidated.search_image_sets, datastoreId=datastore_id, **INVALID_SEARCHES[case])
    assert (code, status) == ("ValidationException", 400), message
    assert message


def test_search_excludes_deleted_image_sets(emulator, client, synthetic):
    datastore_id, summaries = synthetic
    victim = summaries[5]
    uid = victim["DICOMTags"]["DICOMSeriesInstanceUID"]
    client.delete_image_set(datastoreId=datastore_id, imageSetId=victim["imageSetId"])
    wait_image_set(client, datastore_id, victim["imageSetId"], "DELETED")
    assert search_all(client, datastore_id, equal("DICOMSeriesInstanceUID", uid)) == []
    remaining = search_all(client, datastore_id)
    assert len(remaining) == 199 and victim["imageSetId"] not in ids(remaining)
    patient = victim["DICOMTags"]["DICOMPatientId"]
    assert victim["imageSetId"] not in ids(search_all(client, datastore_id, equal("DICOMPatientId", patient)))


# --------------------------------------------------------------------------------------------
# UpdateImageSetMetadata
# --------------------------------------------------------------------------------------------


def test_update_changes_patient_and_study_attributes_in_a_new_version(emulator, client):
    datastore_id = emulator.seed("synthetic:3")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    before = metadata(client, datastore_id, image_set_id)
    emulator.configure(timing={"update_seconds": 0.3})
    response = update(
        client,
        datastore_id,
        image_set_id,
        "1",
        updatable={
            "SchemaVersion": "1.1",
            "Patient": {"DICOM": {"PatientName": "RENAMED^PATIENT", "PatientID": "NEWPID42"}},
            "Study": {"DICOM": {"StudyDescription": "Updated description"}},
        },
    )
    assert response["latestVersionId"] == "2"
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("LOCKED", "UPDATING")
    during = image_set(client, datastore_id, image_set_id)
    assert (during["versionId"], during["imageSetState"], during["imageSetWorkflowStatus"]) == (
        "2",
        "LOCKED",
        "UPDATING",
    )

    after = wait_image_set(client, datastore_id, image_set_id)
    assert (after["versionId"], after["imageSetWorkflowStatus"]) == ("2", "UPDATED")
    new = metadata(client, datastore_id, image_set_id)
    assert new["Patient"]["DICOM"]["PatientName"] == "RENAMED^PATIENT"
    assert new["Patient"]["DICOM"]["PatientID"] == "NEWPID42"
    assert new["Patient"]["DICOM"]["PatientBirthDate"] == before["Patient"]["DICOM"]["PatientBirthDate"]
    assert new["Study"]["DICOM"]["StudyDescription"] == "Updated description"
    assert new["Study"]["Series"] == before["Study"]["Series"]
    assert metadata(client, datastore_id, image_set_id, version="1") == before
    # the search index follows the latest version
    found = search_all(client, datastore_id, equal("DICOMPatientId", "NEWPID42"))
    assert ids(found) == [image_set_id]
    assert found[0]["version"] == 2 and found[0]["DICOMTags"]["DICOMPatientName"] == "RENAMED^PATIENT"
    old_pid = before["Patient"]["DICOM"]["PatientID"]
    assert image_set_id not in ids(search_all(client, datastore_id, equal("DICOMPatientId", old_pid)))


def test_update_removable_attributes_removes_an_instance(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    before = metadata(client, datastore_id, image_set_id)
    [(series_uid_, series)] = before["Study"]["Series"].items()
    instances = sorted(series["Instances"])
    assert len(instances) == 3
    update(
        client,
        datastore_id,
        image_set_id,
        "1",
        removable={"SchemaVersion": "1.1", "Study": {"Series": {series_uid_: {"Instances": {instances[0]: {}}}}}},
    )
    wait_image_set(client, datastore_id, image_set_id)
    after = metadata(client, datastore_id, image_set_id)
    assert sorted(after["Study"]["Series"][series_uid_]["Instances"]) == instances[1:]
    assert (
        sorted(metadata(client, datastore_id, image_set_id, version="1")["Study"]["Series"][series_uid_]["Instances"])
        == instances
    )
    [summary] = search_all(client, datastore_id)
    assert summary["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 2

    # removing an attribute
    update(
        client,
        datastore_id,
        image_set_id,
        "2",
        removable={"SchemaVersion": "1.1", "Study": {"DICOM": {"StudyDescription": ""}}},
    )
    wait_image_set(client, datastore_id, image_set_id)
    assert "StudyDescription" not in metadata(client, datastore_id, image_set_id)["Study"]["DICOM"]


def test_revert_to_version_restores_the_old_document(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    original = metadata(client, datastore_id, image_set_id)
    update(
        client,
        datastore_id,
        image_set_id,
        "1",
        updatable={"SchemaVersion": 1.1, "Patient": {"DICOM": {"PatientName": "CHANGED^ONCE"}}},
    )
    wait_image_set(client, datastore_id, image_set_id)
    assert metadata(client, datastore_id, image_set_id) != original

    response = update(client, datastore_id, image_set_id, "2", revert="1")
    assert response["latestVersionId"] == "3"
    reverted = wait_image_set(client, datastore_id, image_set_id)
    assert reverted["versionId"] == "3"
    assert metadata(client, datastore_id, image_set_id) == original
    assert (
        metadata(client, datastore_id, image_set_id, version="2")["Patient"]["DICOM"]["PatientName"] == "CHANGED^ONCE"
    )
    [summary] = search_all(client, datastore_id)
    assert summary["DICOMTags"]["DICOMPatientName"] == original["Patient"]["DICOM"]["PatientName"]
    assert (
        error(
            client.update_image_set_metadata,
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            latestVersionId="3",
            updateImageSetMetadataUpdates={"revertToVersionId": "9"},
        )[0]
        == "ResourceNotFoundException"
    )


def test_update_conflicts_on_a_stale_version_and_while_locked(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    change = {"SchemaVersion": "1.1", "Patient": {"DICOM": {"PatientName": "A^B"}}}
    update(client, datastore_id, image_set_id, "1", updatable=change)
    wait_image_set(client, datastore_id, image_set_id)

    with pytest.raises(ClientError) as stale:
        update(client, datastore_id, image_set_id, "1", updatable=change)
    assert stale.value.response["Error"]["Code"] == "ConflictException"
    assert stale.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert image_set(client, datastore_id, image_set_id)["versionId"] == "2"  # nothing consumed

    emulator.configure(timing={"update_seconds": 30})
    update(client, datastore_id, image_set_id, "2", updatable=change)
    for latest in ("3", "2"):  # the locked version, and the one before it
        with pytest.raises(ClientError) as locked:
            update(client, datastore_id, image_set_id, latest, updatable=change)
        assert locked.value.response["Error"]["Code"] == "ConflictException"
    assert error(client.delete_image_set, datastoreId=datastore_id, imageSetId=image_set_id)[:2] == (
        "ConflictException",
        409,
    )
    # a locked image set is still readable
    assert image_set(client, datastore_id, image_set_id)["imageSetWorkflowStatus"] == "UPDATING"
    assert metadata(client, datastore_id, image_set_id)["ImageSetID"] == image_set_id


@pytest.mark.parametrize(
    "blob",
    [
        b"{not json",
        b"[1, 2]",
        b'{"Patient": {"DICOM": {"PatientName": "X"}}}',
        b'{"SchemaVersion": "1.1", "Study": {"Series": {"1.2.3": {"DICOM": {"Modality": "MR"}}}}}',
    ],
)
def test_update_with_a_bad_blob_is_a_validation_error(emulator, client, blob):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    code, status, _ = error(
        client.update_image_set_metadata,
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": blob}},
    )
    assert (code, status) == ("ValidationException", 400)
    versions = client.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)[
        "imageSetPropertiesList"
    ]
    assert [v["versionId"] for v in versions] == ["1"]
    assert image_set(client, datastore_id, image_set_id)["imageSetState"] == "ACTIVE"


def test_update_needs_exactly_one_kind_of_change(emulator, unvalidated):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(unvalidated, datastore_id))[0]
    both = {"revertToVersionId": "1", "DICOMUpdates": {"updatableAttributes": b'{"SchemaVersion": "1.1"}'}}
    for updates in (both, {}):
        assert (
            error(
                unvalidated.update_image_set_metadata,
                datastoreId=datastore_id,
                imageSetId=image_set_id,
                latestVersionId="1",
                updateImageSetMetadataUpdates=updates,
            )[0]
            == "ValidationException"
        )


# --------------------------------------------------------------------------------------------
# DeleteImageSet
# --------------------------------------------------------------------------------------------


def test_delete_image_set_goes_deleting_then_deleted(emulator, client):
    datastore_id = emulator.seed("synthetic:2")["datastoreId"]
    image_set_id, other_id = ids(search_all(client, datastore_id))
    emulator.configure(timing={"delete_seconds": 0.3})
    response = client.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    assert response["imageSetId"] == image_set_id and response["datastoreId"] == datastore_id
    assert (response["imageSetState"], response["imageSetWorkflowStatus"]) == ("LOCKED", "DELETING")
    during = image_set(client, datastore_id, image_set_id)
    assert (during["imageSetState"], during["imageSetWorkflowStatus"]) == ("LOCKED", "DELETING")
    assert error(client.delete_image_set, datastoreId=datastore_id, imageSetId=image_set_id)[0] == "ConflictException"

    gone = wait_image_set(client, datastore_id, image_set_id, "DELETED")
    assert gone["imageSetWorkflowStatus"] == "DELETED"
    assert isinstance(gone["deletedAt"], datetime.datetime)
    versions = client.list_image_set_versions(datastoreId=datastore_id, imageSetId=image_set_id)[
        "imageSetPropertiesList"
    ]
    assert [(v["versionId"], v["imageSetState"]) for v in versions] == [("1", "DELETED")]

    source_only = {"sourceImageSet": {"latestVersionId": "1"}}
    into_deleted = {
        "sourceImageSet": {"latestVersionId": "1"},
        "destinationImageSet": {"imageSetId": image_set_id, "latestVersionId": "1"},
    }
    for call, kwargs in [
        (client.delete_image_set, {"imageSetId": image_set_id}),
        (
            client.update_image_set_metadata,
            {
                "imageSetId": image_set_id,
                "latestVersionId": "1",
                "updateImageSetMetadataUpdates": {"revertToVersionId": "1"},
            },
        ),
        (client.copy_image_set, {"sourceImageSetId": image_set_id, "copyImageSetInformation": source_only}),
        (client.copy_image_set, {"sourceImageSetId": other_id, "copyImageSetInformation": into_deleted}),
    ]:
        code, status, _ = error(call, datastoreId=datastore_id, **kwargs)
        assert (code, status) == ("ResourceNotFoundException", 404), (call.__name__, kwargs)
    # the other image set is untouched
    assert image_set(client, datastore_id, other_id)["imageSetState"] == "ACTIVE"
    assert (
        error(
            client.get_image_frame,
            datastoreId=datastore_id,
            imageSetId=image_set_id,
            imageFrameInformation={"imageFrameId": UNKNOWN_ID},
        )[0]
        == "ResourceNotFoundException"
    )


# --------------------------------------------------------------------------------------------
# tags
# --------------------------------------------------------------------------------------------


def test_tag_untag_and_list_for_data_store_and_image_set(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    store_arn, set_arn = datastore_arn(datastore_id), image_set_arn(datastore_id, image_set_id)
    assert image_set(client, datastore_id, image_set_id)["imageSetArn"] == set_arn
    assert client.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreArn"] == store_arn

    assert client.list_tags_for_resource(resourceArn=store_arn)["tags"] == {}
    client.tag_resource(resourceArn=store_arn, tags={"owner": "radiology", "cost-center": "42"})
    client.tag_resource(resourceArn=set_arn, tags={"study": "baseline", "owner": "someone-else"})
    assert client.list_tags_for_resource(resourceArn=store_arn)["tags"] == {"owner": "radiology", "cost-center": "42"}
    assert client.list_tags_for_resource(resourceArn=set_arn)["tags"] == {"study": "baseline", "owner": "someone-else"}

    client.tag_resource(resourceArn=store_arn, tags={"owner": "oncology"})  # overwrite one value
    client.untag_resource(resourceArn=store_arn, tagKeys=["cost-center", "never-set"])
    assert client.list_tags_for_resource(resourceArn=store_arn)["tags"] == {"owner": "oncology"}
    client.untag_resource(resourceArn=set_arn, tagKeys=["study", "owner"])
    assert client.list_tags_for_resource(resourceArn=set_arn)["tags"] == {}
    assert client.list_tags_for_resource(resourceArn=store_arn)["tags"] == {"owner": "oncology"}


def test_tagging_unknown_and_malformed_arns(emulator, client):
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    unknown = [
        datastore_arn(UNKNOWN_ID),
        image_set_arn(datastore_id, UNKNOWN_ID),
        image_set_arn(UNKNOWN_ID, UNKNOWN_ID),
        f"arn:aws:medical-imaging:eu-west-1:{ACCOUNT}:datastore/{datastore_id}",  # another region
        f"arn:aws:medical-imaging:{REGION}:210987654321:datastore/{datastore_id}",  # another account
    ]
    for arn in unknown:
        assert error(client.list_tags_for_resource, resourceArn=arn)[:2] == ("ResourceNotFoundException", 404), arn
        assert error(client.tag_resource, resourceArn=arn, tags={"a": "b"})[0] == "ResourceNotFoundException", arn
        assert error(client.untag_resource, resourceArn=arn, tagKeys=["a"])[0] == "ResourceNotFoundException", arn
    malformed = [
        "arn:aws:s3:::my-bucket",
        f"arn:aws:medical-imaging:{REGION}:{ACCOUNT}:datastore/NOT-AN-ID",
        f"arn:aws:medical-imaging:{REGION}:{ACCOUNT}:datastore/{datastore_id}/imageset/short",
        "not-an-arn",
    ]
    for arn in malformed:
        assert error(client.list_tags_for_resource, resourceArn=arn)[:2] == ("ValidationException", 400), arn
        assert error(client.tag_resource, resourceArn=arn, tags={"a": "b"})[0] == "ValidationException", arn
        assert error(client.untag_resource, resourceArn=arn, tagKeys=["a"])[0] == "ValidationException", arn


def test_tags_work_while_a_data_store_is_creating_or_deleting(emulator, client):
    # the tagging operations declare no ConflictException: a data store in transition is still taggable
    emulator.configure(timing={"datastore_seconds": 30})
    creating = client.create_datastore(datastoreName="slow", tags={"a": "1"})["datastoreId"]
    client.tag_resource(resourceArn=datastore_arn(creating), tags={"b": "2"})
    assert client.list_tags_for_resource(resourceArn=datastore_arn(creating))["tags"] == {"a": "1", "b": "2"}

    emulator.configure(timing={"datastore_seconds": 0.05})
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    image_set_id = ids(search_all(client, datastore_id))[0]
    client.tag_resource(resourceArn=image_set_arn(datastore_id, image_set_id), tags={"keep": "me"})
    client.delete_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    wait_image_set(client, datastore_id, image_set_id, "DELETED")
    emulator.configure(timing={"datastore_seconds": 30})
    client.delete_datastore(datastoreId=datastore_id)
    arn = image_set_arn(datastore_id, image_set_id)
    assert client.list_tags_for_resource(resourceArn=arn)["tags"] == {"keep": "me"}
    client.untag_resource(resourceArn=arn, tagKeys=["keep"])
    assert client.list_tags_for_resource(resourceArn=datastore_arn(datastore_id))["tags"] == {}


# --------------------------------------------------------------------------------------------
# DICOM import jobs
# --------------------------------------------------------------------------------------------


def test_import_from_a_local_folder_creates_one_image_set_per_series(emulator, client, tmp_path):
    datastore_id = new_datastore(emulator, client)
    source, output = tmp_path / "input", tmp_path / "output"
    files = copy_pydicom_files(source)
    expected_series = {series_uid(p) for p in files}
    assert len(expected_series) == 3 and len(files) == 4

    emulator.configure(timing={"import_seconds": 0.3})
    started = start_import(client, datastore_id, source, output, token="import-1", jobName="first-import")
    assert started["jobStatus"] == "SUBMITTED" and started["datastoreId"] == datastore_id
    job_id = started["jobId"]
    submitted = client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]
    assert submitted["jobStatus"] == "SUBMITTED" and "endedAt" not in submitted
    assert submitted["jobName"] == "first-import" and submitted["dataAccessRoleArn"] == ROLE
    # the model wants s3:// URIs back, so local folders are reported under a placeholder bucket
    assert submitted["inputS3Uri"] == "s3://local-folder" + str(source)
    assert submitted["outputS3Uri"] == "s3://local-folder" + str(output)

    done = wait_job(client, datastore_id, job_id)
    assert done["jobStatus"] == "COMPLETED"
    assert done["endedAt"] >= done["submittedAt"]
    assert "message" not in done

    summaries = search_all(client, datastore_id)
    assert len(summaries) == 3
    assert {s["DICOMTags"]["DICOMSeriesInstanceUID"] for s in summaries} == expected_series
    assert all(s["isPrimary"] and s["version"] == 1 for s in summaries)
    two_file = next(s for s in summaries if s["DICOMTags"]["DICOMSeriesInstanceUID"] == series_uid(files[2]))
    assert two_file["DICOMTags"]["DICOMNumberOfStudyRelatedInstances"] == 2
    assert image_set(client, datastore_id, two_file["imageSetId"])["imageSetWorkflowStatus"] == "CREATED"

    out = output / f"{datastore_id}-DicomImport-{job_id}"
    manifest = json.loads((out / "job-output-manifest.json").read_text())
    assert manifest["imageSetsCreated"] == 3 and manifest["filesImported"] == 4 and manifest["filesFailed"] == 1
    success = [json.loads(line) for line in (out / "SUCCESS" / "success.ndjson").read_text().splitlines()]
    assert sorted(Path(s["inputFile"]).name for s in success) == sorted(p.name for p in files)
    assert {s["importResponse"]["imageSetId"] for s in success} == set(ids(summaries))
    failure = [json.loads(line) for line in (out / "FAILURE" / "failure.ndjson").read_text().splitlines()]
    assert [Path(f["inputFile"]).name for f in failure] == ["notes.txt"]
    assert failure[0]["exception"]["message"]

    jobs = client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]
    assert [(j["jobId"], j["jobStatus"]) for j in jobs] == [(job_id, "COMPLETED")]

    # the reported URIs are accepted back: the same folder again gives non-primary duplicates
    emulator.configure(timing={"import_seconds": 0.05})
    again = client.start_dicom_import_job(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE, inputS3Uri=done["inputS3Uri"], outputS3Uri=done["outputS3Uri"]
    )
    assert wait_job(client, datastore_id, again["jobId"])["jobStatus"] == "COMPLETED"
    assert (output / f"{datastore_id}-DicomImport-{again['jobId']}" / "job-output-manifest.json").is_file()
    assert len(search_all(client, datastore_id, equal("isPrimary", False))) == 3


def test_import_client_token_is_idempotent(emulator, client, tmp_path):
    datastore_id = new_datastore(emulator, client)
    source = tmp_path / "input"
    copy_pydicom_files(source)
    emulator.configure(timing={"import_seconds": 0.2})
    first = start_import(client, datastore_id, source, tmp_path / "out", token="same")
    again = start_import(client, datastore_id, source, tmp_path / "out", token="same")
    assert again["jobId"] == first["jobId"]
    wait_job(client, datastore_id, first["jobId"])
    after = start_import(client, datastore_id, source, tmp_path / "out", token="same")
    assert after["jobId"] == first["jobId"] and after["jobStatus"] == "COMPLETED"
    assert len(client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]) == 1
    assert len(search_all(client, datastore_id)) == 3  # imported once

    other = start_import(client, datastore_id, source, tmp_path / "out", token="different")
    assert other["jobId"] != first["jobId"]
    wait_job(client, datastore_id, other["jobId"])
    # a second import of the same series makes non-primary image sets
    summaries = search_all(client, datastore_id)
    assert len(summaries) == 6 and sum(s["isPrimary"] for s in summaries) == 3


def test_import_of_an_empty_folder_fails_with_a_message_and_job_status_filter(emulator, client, tmp_path):
    datastore_id = new_datastore(emulator, client)
    good = tmp_path / "good"
    copy_pydicom_files(good, with_junk=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = start_import(client, datastore_id, good, tmp_path / "out")["jobId"]
    bad = start_import(client, datastore_id, empty, tmp_path / "out")["jobId"]
    assert wait_job(client, datastore_id, ok)["jobStatus"] == "COMPLETED"
    failed = wait_job(client, datastore_id, bad)
    assert failed["jobStatus"] == "FAILED"
    assert "No importable DICOM files" in failed["message"]
    assert "endedAt" in failed

    def listed(**kwargs) -> list[str]:
        return [j["jobId"] for j in client.list_dicom_import_jobs(datastoreId=datastore_id, **kwargs)["jobSummaries"]]

    assert listed(jobStatus="FAILED") == [bad]
    assert listed(jobStatus="COMPLETED") == [ok]
    assert listed(jobStatus="IN_PROGRESS") == []
    assert sorted(listed()) == sorted([ok, bad])
    first_page = client.list_dicom_import_jobs(datastoreId=datastore_id, maxResults=1)
    assert len(first_page["jobSummaries"]) == 1 and first_page["nextToken"]
    second_page = client.list_dicom_import_jobs(
        datastoreId=datastore_id, maxResults=1, nextToken=first_page["nextToken"]
    )
    assert {first_page["jobSummaries"][0]["jobId"], second_page["jobSummaries"][0]["jobId"]} == {ok, bad}
    summary = next(
        j for j in client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"] if j["jobId"] == bad
    )
    assert summary["message"] == failed["message"]


@pytest.mark.parametrize("uri", ["s3://my-bucket/dicom/", "LOCAL"])
def test_import_without_an_s3_root_is_a_validation_error(tmp_path, uri):
    """Without --s3-root the emulator imports nothing: neither s3:// URIs nor local folders."""
    source = tmp_path / "input"
    copy_pydicom_files(source)
    with running_emulator() as emulator:
        client = emulator.client()
        datastore_id = new_datastore(emulator, client)
        code, status, message = error(
            client.start_dicom_import_job,
            datastoreId=datastore_id,
            dataAccessRoleArn=ROLE,
            inputS3Uri=str(source) if uri == "LOCAL" else uri,
            outputS3Uri=str(tmp_path),
        )
        assert (code, status) == ("ValidationException", 400)
        assert "--s3-root" in message
        assert client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"] == []


# --------------------------------------------------------------------------------------------
# protocol robustness (raw HTTP)
# --------------------------------------------------------------------------------------------


def _connection(emulator) -> http.client.HTTPConnection:
    host, port = emulator.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=5)


def _raw(emulator, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = _connection(emulator)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_unknown_path_is_a_404_unknown_operation(emulator):
    status, headers, body = _raw(emulator, "GET", "/no/such/operation")
    assert status == 404
    assert headers["x-amzn-errortype"] == "UnknownOperationException"
    assert headers["content-type"] == "application/json"
    assert "message" in json.loads(body)
    # a known path with the wrong method is unknown too
    status, headers, _ = _raw(emulator, "PUT", "/datastore")
    assert (status, headers["x-amzn-errortype"]) == (404, "UnknownOperationException")


def test_malformed_json_body_is_a_400_validation_error(emulator, client):
    status, headers, body = _raw(
        emulator, "POST", "/datastore", body=b'{"datastoreName": "x",', headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert headers["x-amzn-errortype"] == "ValidationException"
    assert "JSON" in json.loads(body)["message"]
    assert client.list_datastores()["datastoreSummaries"] == []  # nothing was created


def test_oversized_body_is_refused_without_reading_it(emulator):
    host, port = emulator.url.removeprefix("http://").split(":")
    # Declare 5 MiB but send none of it. A server that waited for the body would answer nothing until its idle
    # timeout (30 s) closed the connection, and this socket's 20 s timeout would fail the test first; the answer
    # can only name the declared size, since no byte of the body was sent.
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            b"POST /datastore HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(5 * 1024 * 1024).encode() + b"\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"x-amzn-ErrorType: ValidationException" in head
    assert b"Connection: close" in head
    declared, limit = 5 * 1024 * 1024, 4 * 1024 * 1024
    assert json.loads(body)["message"] == f"The request body ({declared} bytes) is larger than {limit} bytes."


def test_garbage_request_line_gets_an_aws_shaped_error_and_the_server_keeps_serving(emulator):
    host, port = emulator.url.removeprefix("http://").split(":")
    for garbage in (b"GARBAGE\r\n\r\n", b"\x00\x01\x02 not http at all\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(garbage)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), data
        assert b"x-amzn-ErrorType: ValidationException" in head
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["message"].startswith("Malformed HTTP request")
    status, _, body = _raw(emulator, "GET", "/datastore")
    assert status == 200 and json.loads(body) == {"datastoreSummaries": []}


def test_host_header_does_not_route(emulator):
    """Any Host the guard lets through (an IP address, localhost, an --allowed-host name, each with botocore's
    ``runtime-`` data-plane prefix or without) reaches the same operations."""
    datastore_id = emulator.seed("synthetic:2")["datastoreId"]
    status, _, body = _raw(emulator, "GET", "/datastore", headers={"Host": "runtime-localhost"})
    assert status == 200
    assert [d["datastoreId"] for d in json.loads(body)["datastoreSummaries"]] == [datastore_id]
    status, _, body = _raw(
        emulator,
        "POST",
        f"/datastore/{datastore_id}/searchImageSets",
        body=b"{}",
        headers={"Host": "runtime-127.0.0.1:443", "Content-Type": "application/json"},
    )
    assert status == 200
    assert len(json.loads(body)["imageSetsMetadataSummaries"]) == 2


def test_default_host_prefix_injection_sends_data_plane_calls_nowhere(emulator):
    """The trap: botocore prefixes data-plane hosts with ``runtime-`` even with an endpoint_url, so
    ``http://127.0.0.1:PORT`` becomes ``http://runtime-127.0.0.1:PORT``, which does not resolve.
    Clients of a local emulator must set ``Config(inject_host_prefix=False)``."""
    datastore_id = emulator.seed("synthetic:1")["datastoreId"]
    default = boto3.client(
        "medical-imaging",
        endpoint_url=emulator.url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
    )
    # control plane: no host prefix, works
    assert [d["datastoreId"] for d in default.list_datastores()["datastoreSummaries"]] == [datastore_id]
    emulator.admin("DELETE", "counters")
    with pytest.raises(
        (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError)
    ) as caught:
        default.search_image_sets(datastoreId=datastore_id)
    assert "runtime-127.0.0.1" in str(caught.value)
    assert "SearchImageSets" not in emulator.counters()  # the call never reached the emulator
    # the same call with the prefix switched off reaches the emulator
    fixed = emulator.client()
    assert len(fixed.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]) == 1
    assert emulator.counters()["SearchImageSets"]["calls"] == 1  # counted: this one arrived
