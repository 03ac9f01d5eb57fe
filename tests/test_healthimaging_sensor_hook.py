"""HealthImagingImageSetSensor, HealthImagingHook, the waiters and HealthImagingImageSetTrigger.

The sensor runs in real Airflow runs (``dag.test()``) in its three modes: poke, reschedule and
deferrable (the trigger runs in-process). The hook, the waiters and the trigger run against the
emulator over HTTP with real boto3 / aiobotocore clients built from Airflow connections.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError

from healthimaging.copy import states
from healthimaging.hooks import NO_RETRIES, HealthImagingHook
from healthimaging.operators import HealthImagingCopyImageSetOperator
from healthimaging.sensors import HealthImagingImageSetSensor
from healthimaging.triggers import HealthImagingImageSetTrigger
from tests.airflow_env import PLUGINS_FOLDER
from tests.healthimaging_helpers import (
    SERIES_MISMATCH,
    Sample,
    boto_copy,
    copy_task,
    run_dag,
    sensor_task,
    update_study_description,
    write_dag,
)

WAITERS_FILE = PLUGINS_FOLDER / "healthimaging" / "hooks" / "waiters" / "medical-imaging.json"
MODES = {
    "poke": dict(mode="poke", deferrable=False),
    "reschedule": dict(mode="reschedule", deferrable=False),
    "deferrable": dict(deferrable=True),
}
DESTINATION_ID = "{{ ti.xcom_pull(task_ids='copy')['destination_image_set_id'] }}"
DESTINATION_VERSION = "{{ ti.xcom_pull(task_ids='copy')['destination_version_id'] }}"


@pytest.fixture
def sample(emulator_connection) -> Sample:
    return Sample.seed(emulator_connection)


@pytest.fixture
def run_sensor_dag(airflow_db, dag_bundle, tmp_path):
    def run(dag_id: str, body: str):
        write_dag(tmp_path / "dags", dag_id, body)
        return run_dag(dag_bundle, tmp_path / "dags", dag_id)

    return run


def hook() -> HealthImagingHook:
    return HealthImagingHook(aws_conn_id="aws_default")


def start_copy(sample: Sample, source: str, destination: str | None = None, **flags: Any) -> dict[str, Any]:
    """Send a copy with a plain boto3 client and return at once (the copy runs on in the emulator)."""
    info: dict[str, Any] = {"sourceImageSet": {"latestVersionId": sample.get(source)["versionId"]}}
    if destination:
        info["destinationImageSet"] = {
            "imageSetId": destination,
            "latestVersionId": sample.get(destination)["versionId"],
        }
    response = sample.client.copy_image_set(
        datastoreId=sample.datastore_id, sourceImageSetId=source, copyImageSetInformation=info, **flags
    )
    return response["destinationImageSetProperties"]


# ----------------------------------------------------------------------------------------- the sensor in dag.test()


@pytest.mark.parametrize("mode", MODES)
def test_sensor_succeeds_when_the_copy_ends_copied(sample, run_sensor_dag, mode):
    sample.handle.configure(timing={"copy_fixed_seconds": 2.5})
    source = sample.with_instances(3)
    body = (
        copy_task(
            "copy",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            wait_for_completion=False,
            deferrable=False,
        )
        + sensor_task("wait", datastore_id=sample.datastore_id, image_set_id=DESTINATION_ID, timeout=60, **MODES[mode])
        + "copy >> wait\n"
    )
    result = run_sensor_dag(f"sensor_copied_{mode}", body)

    assert result.task_states == {"copy": "success", "wait": "success"}, (result.errors, result.events)
    assert result.xcom["copy"]["workflow_status"] == "COPYING"  # the sensor, not the operator, waited
    destination = result.xcom["copy"]["destination_image_set_id"]
    done = sample.get(destination)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"]) == ("ACTIVE", "COPIED")
    assert result.ended["wait"] >= done["updatedAt"].timestamp()  # it did not succeed before the copy ended
    events = [event for task, event in result.events if task == "wait"]
    expected_events = {
        "poke": ["running", "success"],  # one try that poked until the copy ended
        "deferrable": ["running", "deferred", "running", "success"],
    }
    if mode == "reschedule":
        assert events[0] == "running" and events[-1] == "success" and "up_for_reschedule" in events, events
        assert set(events) == {"running", "up_for_reschedule", "success"} and result.tries["wait"] == 1, events
    else:
        assert events == expected_events[mode], events
    assert sample.handle.counters()["GetImageSet"]["calls"] >= 3  # it looked more than once


@pytest.mark.parametrize("mode", MODES)
def test_sensor_fails_on_copy_failed_with_the_services_message(sample, run_sensor_dag, mode):
    sample.handle.configure(timing={"copy_fixed_seconds": 1.5})
    source, destination = sample.same_study_pair()
    body = (
        copy_task(
            "copy",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination.image_set_id,
            wait_for_completion=False,
            deferrable=False,
        )
        + sensor_task(
            "wait",
            datastore_id=sample.datastore_id,
            image_set_id=DESTINATION_ID,
            version_id=DESTINATION_VERSION,
            timeout=300,
            max_retries=300,
            **MODES[mode],
        )
        + "copy >> wait\n"
    )
    result = run_sensor_dag(f"sensor_copy_failed_{mode}", body)

    assert result.task_states == {"copy": "success", "wait": "failed"}, (result.errors, result.events)
    failed = sample.get(destination.image_set_id, "2")
    assert failed["imageSetWorkflowStatus"] == "COPY_FAILED"
    # The copy's failure ended the sensor, with the service's message: not its 300 s timeout, and no retry.
    error = result.error("wait")
    assert SERIES_MISMATCH in error, result.errors
    assert destination.image_set_id in error
    assert result.tries["wait"] == 1
    assert result.ended["wait"] >= failed["updatedAt"].timestamp()  # it failed once the copy had


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "poke"])
def test_sensor_watches_the_given_version(sample, run_sensor_dag, deferrable):
    source, destination = sample.same_study_pair()
    start_copy(sample, source.image_set_id, destination.image_set_id)  # version 2 ends COPY_FAILED
    sample.wait_active(destination.image_set_id)
    sample.wait_active(source.image_set_id)
    boto_copy(sample, source.image_set_id, destination=destination.image_set_id, force=True)  # version 3 COPIED
    assert sample.get(destination.image_set_id, "2")["imageSetWorkflowStatus"] == "COPY_FAILED"
    mode = dict(deferrable=deferrable, timeout=60, max_retries=60)
    body = (
        sensor_task(
            "version_2", datastore_id=sample.datastore_id, image_set_id=destination.image_set_id, version_id="2", **mode
        )
        + sensor_task(
            "version_3", datastore_id=sample.datastore_id, image_set_id=destination.image_set_id, version_id="3", **mode
        )
        + sensor_task("latest", datastore_id=sample.datastore_id, image_set_id=destination.image_set_id, **mode)
    )
    result = run_sensor_dag(f"sensor_versions_{deferrable}", body)

    assert result.task_states == {"version_2": "failed", "version_3": "success", "latest": "success"}, result.errors
    assert f"Image set {destination.image_set_id} version 2 ended COPY_FAILED: {SERIES_MISMATCH}" in result.error(
        "version_2"
    )


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "poke"])
def test_sensor_custom_target_states_and_workflow_statuses(sample, run_sensor_dag, deferrable):
    sample.handle.configure(timing={"copy_fixed_seconds": 3})
    source = sample.with_instances(3)
    copied_only = dict(target_states=["ACTIVE"], target_workflow_statuses=["COPIED"])
    body = (
        copy_task(
            "copy",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            wait_for_completion=False,
            deferrable=False,
        )
        # The source is LOCKED / COPYING_WITH_READ_ONLY_ACCESS only while the copy runs.
        + sensor_task(
            "source_locked",
            datastore_id=sample.datastore_id,
            image_set_id=source.image_set_id,
            target_states=["LOCKED"],
            target_workflow_statuses=["COPYING_WITH_READ_ONLY_ACCESS"],
            deferrable=deferrable,
            timeout=2,
            max_retries=2,
        )
        + sensor_task(
            "destination_copied",
            datastore_id=sample.datastore_id,
            image_set_id=DESTINATION_ID,
            deferrable=deferrable,
            timeout=60,
            max_retries=60,
            **copied_only,
        )
        # The source ends ACTIVE with its old workflow status (CREATED): never COPIED.
        + sensor_task(
            "source_copied",
            datastore_id=sample.datastore_id,
            image_set_id=source.image_set_id,
            deferrable=deferrable,
            timeout=4,
            max_retries=4,
            **copied_only,
        )
        + sensor_task(
            "source_default",
            datastore_id=sample.datastore_id,
            image_set_id=source.image_set_id,
            deferrable=deferrable,
            timeout=60,
            max_retries=60,
            trigger_rule="all_done",
        )
        + "copy >> source_locked >> destination_copied >> source_copied >> source_default\n"
    )
    result = run_sensor_dag(f"sensor_targets_{deferrable}", body)

    assert result.task_states == {
        "copy": "success",
        "source_locked": "success",
        "destination_copied": "success",
        "source_copied": "failed",
        "source_default": "success",
    }, (result.errors, result.events)
    copy_ended = sample.get(result.xcom["copy"]["destination_image_set_id"])["updatedAt"].timestamp()
    assert result.ended["source_locked"] < copy_ended <= result.ended["destination_copied"]
    assert (
        sample.get(source.image_set_id)["imageSetState"],
        sample.get(source.image_set_id)["imageSetWorkflowStatus"],
    ) == ("ACTIVE", "CREATED")
    error = result.error("source_copied")
    assert ("max attempts reached" in error) if deferrable else ("timed out" in error), error
    if deferrable:
        assert ("destination_copied", "deferred") in result.events and ("source_copied", "deferred") in result.events


def test_a_deferred_sensors_waiter_delay_is_its_poke_interval_in_whole_seconds_at_least_1(sample):
    """The provider's async waiter sleeps ``waiter_delay`` whole seconds; a sub-second poke_interval must not
    become 0 there (a GetImageSet loop as fast as the service answers)."""
    from airflow.sdk.exceptions import TaskDeferred

    image_set_id = sample.image_sets[0].image_set_id  # imported: CREATED, never COPIED
    for poke_interval, expected in ((0.25, 1), (2.5, 3), (30, 30)):
        sensor = HealthImagingImageSetSensor(
            task_id="s",
            datastore_id=sample.datastore_id,
            image_set_id=image_set_id,
            target_workflow_statuses=["COPIED"],
            deferrable=True,
            poke_interval=poke_interval,
        )
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute({})
        assert deferred.value.trigger.waiter_delay == expected


def test_sensor_acceptors_follow_its_targets():
    sensor = HealthImagingImageSetSensor(
        task_id="s",
        datastore_id="d" * 32,
        image_set_id="e" * 32,
        target_states=["ACTIVE", "LOCKED"],
        target_workflow_statuses=["COPIED"],
    )
    acceptors = sensor.acceptors()
    failures = {a["expected"] for a in acceptors if a["state"] == "failure"}
    assert failures == states.FAILED_WORKFLOW_STATUSES
    successes = [a["expected"] for a in acceptors if a["state"] == "success"]
    assert successes == [["ACTIVE", "COPIED"], ["LOCKED", "COPIED"]]
    assert acceptors.index(next(a for a in acceptors if a["state"] == "failure")) == 0  # failures are checked first
    default = HealthImagingImageSetSensor(task_id="t", datastore_id="d" * 32, image_set_id="e" * 32)
    assert {tuple(a["expected"]) for a in default.acceptors() if a["state"] == "success"} == {
        ("ACTIVE", status) for status in states.SETTLED_WORKFLOW_STATUSES
    }


# ----------------------------------------------------------------------------------------- the hook


class Stop(Exception):
    """Raised from a before-send handler: the request was built (and recorded) but is not sent."""


def record_urls(client, *, send: bool = True) -> list[str]:
    urls: list[str] = []

    def before_send(request, **_: Any):
        urls.append(request.url)
        if not send:
            raise Stop(request.url)

    client.meta.events.register("before-send.medical-imaging", before_send)
    return urls


def test_endpoint_url_in_the_connection_switches_host_prefix_injection_off(sample):
    h = hook()
    assert h.endpoint_url == sample.handle.url
    assert h.config.inject_host_prefix is False and h.conn.meta.config.inject_host_prefix is False
    urls = record_urls(h.conn)
    source = sample.image_sets[0]
    assert h.get_image_set(sample.datastore_id, source.image_set_id)["imageSetId"] == source.image_set_id  # data plane
    assert sample.datastore_id in {d["datastoreId"] for d in h.conn.list_datastores()["datastoreSummaries"]}  # control
    assert urls[0] == f"{sample.handle.url}/datastore/{sample.datastore_id}/imageSet/{source.image_set_id}/getImageSet"
    assert urls[1] == f"{sample.handle.url}/datastore"


def test_service_config_endpoint_url_also_switches_it_off(sample, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_HI_SERVICE_CONFIG",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "region_name": "us-east-1",
                    "service_config": {"medical-imaging": {"endpoint_url": sample.handle.url}},
                },
            }
        ),
    )
    h = HealthImagingHook(aws_conn_id="hi_service_config")
    assert h.endpoint_url == sample.handle.url and h.config.inject_host_prefix is False
    source = sample.image_sets[0]
    assert h.get_latest_version_id(sample.datastore_id, source.image_set_id) == "1"


def test_without_endpoint_url_host_prefix_injection_stays_on(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(
        "AIRFLOW_CONN_REAL_AWS",
        json.dumps(
            {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1"}}
        ),
    )
    h = HealthImagingHook(aws_conn_id="real_aws")
    assert h.endpoint_url is None
    assert h.config.inject_host_prefix is not False and h.conn.meta.config.inject_host_prefix is True
    urls = record_urls(h.conn, send=False)
    with pytest.raises(Stop):
        h.get_image_set("d" * 32, "e" * 32)
    with pytest.raises(Stop):
        h.conn.list_datastores()
    assert urls == [
        f"https://runtime-medical-imaging.us-east-1.amazonaws.com/datastore/{'d' * 32}/imageSet/{'e' * 32}/getImageSet",
        "https://medical-imaging.us-east-1.amazonaws.com/datastore",
    ]
    assert h.no_retry_conn.meta.config.inject_host_prefix is True


def test_hook_reads_versions_metadata_and_sop_instance_uids(sample):
    h = hook()
    source = sample.with_instances(3)
    assert h.get_latest_version_id(sample.datastore_id, source.image_set_id) == "1"
    update_study_description(sample, source.image_set_id, "version two")
    assert h.get_latest_version_id(sample.datastore_id, source.image_set_id) == "2"

    latest = h.get_image_set_metadata(sample.datastore_id, source.image_set_id)
    first = h.get_image_set_metadata(sample.datastore_id, source.image_set_id, "1")
    raw = sample.client.get_image_set_metadata(datastoreId=sample.datastore_id, imageSetId=source.image_set_id)
    assert raw["contentEncoding"] == "gzip" and raw["imageSetMetadataBlob"].read()[:2] == b"\x1f\x8b"
    assert first == source.document
    assert latest == sample.metadata(source.image_set_id)
    assert latest["Study"]["DICOM"]["StudyDescription"] == "version two"
    assert first["Study"]["DICOM"].get("StudyDescription") != "version two"
    assert h.get_sop_instance_uids(sample.datastore_id, source.image_set_id) == set(source.instances)
    assert h.get_sop_instance_uids(sample.datastore_id, source.image_set_id, 1) == set(source.instances)


def test_list_image_set_versions_reads_every_page(sample):
    sample.handle.configure(timing={"update_seconds": 0})
    source = sample.image_sets[0]
    for number in range(2, 57):
        assert update_study_description(sample, source.image_set_id, f"version {number}") == str(number)
    h = hook()
    pages: list[int] = []
    h.conn.meta.events.register(
        "after-call.medical-imaging.ListImageSetVersions",
        lambda parsed, **_: pages.append(len(parsed["imageSetPropertiesList"])),
    )

    versions = h.list_image_set_versions(sample.datastore_id, source.image_set_id)

    assert sorted(int(v["versionId"]) for v in versions) == list(range(1, 57))
    assert len(pages) >= 2 and sum(pages) == 56, pages
    statuses = {v["versionId"]: v["ImageSetWorkflowStatus"] for v in versions}
    assert statuses == {"1": "CREATED", **{str(n): "UPDATED" for n in range(2, 57)}}, statuses


def test_no_retry_conn_makes_exactly_one_attempt(sample):
    h = hook()
    assert NO_RETRIES == {"mode": "standard", "total_max_attempts": 1}
    assert h.no_retry_conn.meta.config.retries == NO_RETRIES
    assert h.no_retry_conn is h.no_retry_conn  # one client, cached
    assert h.conn.meta.config.retries != NO_RETRIES
    source = sample.with_instances(3)
    sample.handle.configure(script={"CopyImageSet": ["internal_error"], "GetImageSet": ["internal_error"]})

    with pytest.raises(ClientError) as error:
        h.no_retry_conn.copy_image_set(
            datastoreId=sample.datastore_id,
            sourceImageSetId=source.image_set_id,
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
        )
    assert error.value.response["Error"]["Code"] == "InternalServerException"
    assert sample.handle.counters()["CopyImageSet"]["calls"] == 1  # not repeated by botocore
    assert h.conn.get_image_set(datastoreId=sample.datastore_id, imageSetId=source.image_set_id)["versionId"] == "1"
    assert sample.handle.counters()["GetImageSet"]["calls"] == 2  # the ordinary client retried


def test_no_retry_conn_serves_only_copy_image_set(sample, monkeypatch):
    """Every call of a copy with a lost response (reconciled) and an internal error (copied again)."""
    from healthimaging.copy.submission import SubmissionPolicy
    from healthimaging.operators import medical_imaging as operators

    monkeypatch.setattr(operators, "SubmissionPolicy", functools.partial(SubmissionPolicy, sleep=lambda _: None))
    source = sample.with_instances(3)
    sample.handle.configure(script={"CopyImageSet": ["lost_response", "internal_error"]})
    by_client: dict[str, list[str]] = {"conn": [], "no_retry_conn": []}
    for attempt in range(2):
        operator = HealthImagingCopyImageSetOperator(
            task_id=f"copy{attempt}",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            waiter_delay=1,
            deferrable=False,
        )
        for name in by_client:
            getattr(operator.hook, name).meta.events.register(
                "before-call.medical-imaging", lambda model, name=name, **_: by_client[name].append(model.name)
            )
        operator.execute({})
    assert by_client["no_retry_conn"] == ["CopyImageSet", "CopyImageSet", "CopyImageSet"]
    assert "CopyImageSet" not in by_client["conn"]
    assert {"GetImageSet", "GetImageSetMetadata", "SearchImageSets"} <= set(by_client["conn"])
    assert sample.handle.counters()["CopyImageSet"]["calls"] == 3
    assert len(sample.new_image_set_ids()) == 2


def test_no_retry_conn_is_used_only_for_copy_image_set_in_the_source():
    """Statically: every ``.no_retry_conn`` in the package is followed by ``.copy_image_set`` (or by ``.meta``, to
    register event handlers, which calls nothing)."""
    uses = []
    for path in sorted((PLUGINS_FOLDER / "healthimaging").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "no_retry_conn"
            ):
                uses.append((path.name, node.attr))
            elif isinstance(node, ast.Attribute) and node.attr == "no_retry_conn":
                parent_ok = any(isinstance(p, ast.Attribute) and p.value is node for p in ast.walk(tree))
                assert parent_ok, f"{path.name}:{node.lineno}: no_retry_conn used other than as .no_retry_conn.<op>"
    assert uses and all(op in ("copy_image_set", "meta") for _, op in uses), uses
    assert any(op == "copy_image_set" for _, op in uses), uses


# ----------------------------------------------------------------------------------------- waiters


def test_waiter_acceptors_agree_with_states():
    waiters = json.loads(WAITERS_FILE.read_text())["waiters"]
    assert hook().waiter_path == WAITERS_FILE
    copied = waiters["image_set_copied"]
    assert copied["operation"] == "GetImageSet"

    def expected(waiter, state, argument="imageSetWorkflowStatus"):
        return {
            a["expected"]
            for a in waiter["acceptors"]
            if a["state"] == state and a["matcher"] == "path" and a["argument"] == argument
        }

    assert expected(copied, "success") == states.COPY_SUCCESS_STATUSES
    assert expected(copied, "retry") == states.COPY_PENDING_STATUSES
    assert expected(copied, "failure") == states.COPY_FAILURE_STATUSES
    errors = {a["expected"] for a in copied["acceptors"] if a["matcher"] == "error"}
    assert errors == {"ThrottlingException", "InternalServerException"}

    settled = waiters["image_set_settled"]
    assert settled["operation"] == "GetImageSet"
    assert expected(settled, "failure") == states.FAILED_WORKFLOW_STATUSES
    assert expected(settled, "retry", "imageSetState") == {states.LOCKED}
    assert expected(settled, "success", "imageSetState") == {states.ACTIVE}
    order = [a["state"] for a in settled["acceptors"] if a["matcher"] == "path"]
    assert order.index("success") > max(i for i, s in enumerate(order) if s == "failure")  # failures win over ACTIVE
    assert {a["expected"] for a in settled["acceptors"] if a["matcher"] == "error"} == {
        "ThrottlingException",
        "InternalServerException",
    }
    # Every status the waiters name is one this package knows.
    known = states.IN_PROGRESS_WORKFLOW_STATUSES | states.FAILED_WORKFLOW_STATUSES | states.SETTLED_WORKFLOW_STATUSES
    for waiter in waiters.values():
        for acceptor in waiter["acceptors"]:
            if acceptor["matcher"] == "path" and acceptor["argument"] == "imageSetWorkflowStatus":
                assert acceptor["expected"] in known


def test_image_set_copied_waiter_succeeds_and_fails_against_the_emulator(sample):
    sample.handle.configure(timing={"copy_fixed_seconds": 1})
    source = sample.with_instances(3)
    waiter = hook().get_waiter("image_set_copied")
    assert waiter.config.operation == "GetImageSet"

    new = start_copy(sample, source.image_set_id)
    assert sample.get(new["imageSetId"])["imageSetWorkflowStatus"] == "COPYING"
    waiter.wait(
        datastoreId=sample.datastore_id,
        imageSetId=new["imageSetId"],
        versionId=new["latestVersionId"],
        WaiterConfig={"Delay": 1, "MaxAttempts": 10},
    )
    assert sample.get(new["imageSetId"])["imageSetWorkflowStatus"] == "COPIED"
    sample.wait_active(source.image_set_id)

    other, destination = sample.same_study_pair()
    failed = start_copy(sample, other.image_set_id, destination.image_set_id)
    with pytest.raises(WaiterError) as error:
        waiter.wait(
            datastoreId=sample.datastore_id,
            imageSetId=destination.image_set_id,
            versionId=failed["latestVersionId"],
            WaiterConfig={"Delay": 1, "MaxAttempts": 10},
        )
    assert "terminal failure" in str(error.value)
    assert error.value.last_response["imageSetWorkflowStatus"] == "COPY_FAILED"
    assert error.value.last_response["message"] == SERIES_MISMATCH

    settled = hook().get_waiter("image_set_settled")
    settled.wait(
        datastoreId=sample.datastore_id, imageSetId=other.image_set_id, WaiterConfig={"Delay": 1, "MaxAttempts": 10}
    )
    with pytest.raises(WaiterError, match="terminal failure"):
        settled.wait(
            datastoreId=sample.datastore_id,
            imageSetId=destination.image_set_id,
            WaiterConfig={"Delay": 1, "MaxAttempts": 10},
        )


# ----------------------------------------------------------------------------------------- the trigger


def make_trigger(**overrides: Any) -> HealthImagingImageSetTrigger:
    kwargs: dict[str, Any] = dict(
        datastore_id="d" * 32,
        image_set_id="e" * 32,
        version_id="3",
        waiter_name="image_set_settled",
        return_value={"destination_image_set_id": "e" * 32, "nested": {"ids": [1, 2]}},
        acceptors=HealthImagingImageSetSensor(
            task_id="s", datastore_id="d", image_set_id="e", target_workflow_statuses=["COPIED"]
        ).acceptors(),
        waiter_delay=1,
        waiter_max_attempts=7,
        aws_conn_id="aws_default",
        region_name="eu-west-1",
        verify=False,
        botocore_config={"read_timeout": 9},
    )
    kwargs.update(overrides)
    return HealthImagingImageSetTrigger(**kwargs)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "version_id": None,
            "acceptors": None,
            "botocore_config": None,
            "region_name": None,
            "verify": None,
            "return_value": None,
        },
    ],
    ids=["every-argument", "defaults"],
)
def test_trigger_serialization_round_trip(overrides):
    from airflow.sdk._shared.module_loading import import_string
    from airflow.sdk.serde import deserialize, serialize

    trigger = make_trigger(**overrides)
    classpath, kwargs = trigger.serialize()
    assert classpath == "healthimaging.triggers.medical_imaging.HealthImagingImageSetTrigger"
    # A trigger deferred before the package layout (its classpath stored in the metadata DB) still loads.
    assert import_string("healthimaging.triggers.HealthImagingImageSetTrigger") is import_string(classpath)
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    # What dag.test() and the triggerer do: the kwargs travel serde-encoded.
    again = import_string(classpath)(**deserialize(serialize(kwargs)))
    assert again.serialize() == (classpath, kwargs)
    assert again.waiter_args == trigger.waiter_args
    assert again.waiter_config_overrides == trigger.waiter_config_overrides
    assert (again.attempts, again.waiter_delay) == (7, 1)


async def first_event(trigger: HealthImagingImageSetTrigger):
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger ended without an event")


def test_trigger_run_yields_success_when_the_copy_ends_copied(sample):
    sample.handle.configure(timing={"copy_fixed_seconds": 1})
    source = sample.with_instances(3)
    new = start_copy(sample, source.image_set_id)
    trigger = make_trigger(
        datastore_id=sample.datastore_id,
        image_set_id=new["imageSetId"],
        version_id=new["latestVersionId"],
        waiter_name="image_set_copied",
        acceptors=None,
        region_name=None,
        verify=None,
        botocore_config=None,
        waiter_max_attempts=20,
        return_value={"destination_image_set_id": new["imageSetId"]},
    )

    started = time.monotonic()
    event = asyncio.run(first_event(trigger))

    assert event.payload == {"status": "success", "value": {"destination_image_set_id": new["imageSetId"]}}
    assert sample.get(new["imageSetId"])["imageSetWorkflowStatus"] == "COPIED"
    assert time.monotonic() - started >= 0.5  # it waited for the copy
    assert sample.handle.counters()["GetImageSet"]["calls"] >= 2


def test_trigger_run_yields_an_error_event_with_the_message_on_copy_failed(sample):
    source, destination = sample.same_study_pair()
    failed = start_copy(sample, source.image_set_id, destination.image_set_id)
    trigger = make_trigger(
        datastore_id=sample.datastore_id,
        image_set_id=destination.image_set_id,
        version_id=failed["latestVersionId"],
        waiter_name="image_set_copied",
        acceptors=None,
        region_name=None,
        verify=None,
        botocore_config=None,
        waiter_max_attempts=20,
        return_value={"destination_image_set_id": destination.image_set_id},
    )

    event = asyncio.run(first_event(trigger))

    assert event.payload["status"] == "error"
    assert event.payload["value"] == {"destination_image_set_id": destination.image_set_id}
    assert SERIES_MISMATCH in event.payload["message"]
    assert "COPY_FAILED" in event.payload["message"]
    assert f"HealthImaging image set {destination.image_set_id} failed" in event.payload["message"]
