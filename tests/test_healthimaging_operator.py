"""HealthImagingCopyImageSetOperator end to end: real Airflow runs (``dag.test()``) against the emulator.

Every copy goes over HTTP through the operator's hook and the ``aws_default`` connection (endpoint_url
= the emulator). Outcomes are read back with a separate boto3 client: the image sets that exist,
their versions and workflow statuses, the SOP Instance UIDs in their metadata, and the emulator's
per-operation counters (how many CopyImageSet calls were made and how each ended).

Direct ``execute(context)`` calls (unit-test mode) are used only where ``dag.test()`` adds nothing:
the deferral's trigger arguments, lineage facets, a crafted task_state_store.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from healthimaging.copy.plan import MAX_FRAMES_PER_COPY, resolve_plan, uid_digest
from healthimaging.copy.request import CopyRequest
from healthimaging.copy.submission import SubmissionPolicy, snapshot_series, submit_copy
from healthimaging.hooks import HealthImagingHook
from healthimaging.links import HealthImagingImageSetLink
from healthimaging.operators import COPY_STATE_KEY, HealthImagingCopyImageSetOperator
from healthimaging.operators import medical_imaging as operators
from tests.airflow_env import DAGS_FOLDER
from tests.healthimaging_helpers import (
    SERIES_MISMATCH,
    Code,
    Sample,
    boto_copy,
    copiable,
    copy_task,
    run_dag,
    update_study_description,
    write_dag,
)

ACCOUNT_NAMESPACE = "arn:aws:medical-imaging:us-east-1:123456789012"
#: The AWS CLI's copy-image-set documentation, vendored (its source and version: tests/fixtures/awscli/README.md).
CLI_EXAMPLES = Path(__file__).parent / "fixtures" / "awscli" / "copy-image-set.rst"

# The --copy-image-set-information arguments of the AWS CLI's three copy-image-set examples, verbatim
# (the text between the shell's single quotes).
CLI_EXAMPLE_1 = '{"sourceImageSet": {"latestVersionId": "1" } }'
CLI_EXAMPLE_2 = (
    '{"sourceImageSet": {"latestVersionId": "1" }, "destinationImageSet": { "imageSetId": '
    '"b9a06fef182a5f992842f77f8e0868e5", "latestVersionId": "1"} }'
)
CLI_EXAMPLE_3 = (
    '{"sourceImageSet": {"latestVersionId": "1","DICOMCopies": {"copiableAttributes": "{\\"SchemaVersion\\":\\"1.1\\",'
    '\\"Study\\":{\\"Series\\":{\\"1.3.6.1.4.1.5962.99.1.3673257865.2104868982.1369432891697.3666.0\\":'
    '{\\"Instances\\":'
    '{\\"1.3.6.1.4.1.5962.99.1.3673257865.2104868982.1369432891697.3669.0\\":{}}}}}}"}},"destinationImageSet": '
    '{"imageSetId": "b9eb50d8ee682eb9fcf4acbf92f62bb7","latestVersionId": "1"}}'
)
CLI_SERIES = "1.3.6.1.4.1.5962.99.1.3673257865.2104868982.1369432891697.3666.0"
CLI_SOP = "1.3.6.1.4.1.5962.99.1.3673257865.2104868982.1369432891697.3669.0"
CLI_EXAMPLE_2_DESTINATION = "b9a06fef182a5f992842f77f8e0868e5"
CLI_EXAMPLE_3_DESTINATION = "b9eb50d8ee682eb9fcf4acbf92f62bb7"


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def sample(emulator_connection) -> Sample:
    """pydicom's sample files in the emulator (one image set per series); aws_default points at it."""
    return Sample.seed(emulator_connection)


@pytest.fixture
def run_copy_dag(airflow_db, dag_bundle, tmp_path):
    """``run_copy_dag(dag_id, body, params=..., run_conf=...)``: write the DAG and run it with dag.test()."""

    def run(dag_id: str, body: str, *, params: str = "{}", run_conf: dict[str, Any] | None = None):
        write_dag(tmp_path / "dags", dag_id, body, params=params)
        return run_dag(dag_bundle, tmp_path / "dags", dag_id, run_conf=run_conf)

    return run


@pytest.fixture
def recorded_sleeps(monkeypatch) -> list[float]:
    """The operator's SubmissionPolicy with only its sleep replaced: the delays are recorded, not slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(operators, "SubmissionPolicy", functools.partial(SubmissionPolicy, sleep=sleeps.append))
    return sleeps


class FakeTaskStateStore:
    """A dict behind the accessor's get/set, for direct execute() calls."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values = dict(values or {})

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.values[key] = json.loads(json.dumps(value))  # what the real store keeps: JSON


class RecordingTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def direct_context(store: FakeTaskStateStore | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"ti": RecordingTI()}
    if store is not None:
        context["task_state_store"] = store
    return context


def assert_no_copy_sent(sample: Sample) -> None:
    assert sample.copy_calls() == 0, sample.copy_counters()
    assert sample.new_image_set_ids() == set()


# ----------------------------------------------------------------------------------------- copies that succeed


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "in-worker"])
def test_copy_to_a_new_image_set_end_to_end_with_every_result_field(sample, run_copy_dag, deferrable):
    source = sample.with_instances(3)
    body = copy_task(
        "copy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, deferrable=deferrable
    )
    result = run_copy_dag("copy_new", body)

    assert result.task_states == {"copy": "success"}, result.errors
    assert (("copy", "deferred") in result.events) is deferrable, result.events
    (new,) = sample.new_image_set_ids()
    out = result.xcom["copy"]
    assert out["datastore_id"] == sample.datastore_id
    assert (out["source_image_set_id"], out["source_version_id"]) == (source.image_set_id, "1")
    assert (out["destination_image_set_id"], out["destination_version_id"]) == (new, "1")
    assert out["workflow_status"] == "COPIED"
    assert out["forced"] is False and out["is_primary"] is False
    assert out["copy_kind"] == "new" and out["subset"] is False
    assert out["verified"] is True
    assert out["attempts"] == 1 and out["reconciled"] is False
    assert out["expected_instance_count"] == len(source.instances)
    assert out["expected_instance_digest"] == uid_digest(source.instances)
    assert out["submitted_at"] <= out["completed_at"] <= time.time()
    assert out["duration_seconds"] == round(out["completed_at"] - out["submitted_at"], 3) >= 0
    assert out["submitted_at_iso"].endswith("+00:00")
    assert (
        out["source_image_set_arn"]
        == f"{ACCOUNT_NAMESPACE}:datastore/{sample.datastore_id}/imageset/{source.image_set_id}"
    )
    assert out["destination_image_set_arn"] == f"{ACCOUNT_NAMESPACE}:datastore/{sample.datastore_id}/imageset/{new}"

    done = sample.get(new)
    assert (done["imageSetState"], done["imageSetWorkflowStatus"], done["versionId"]) == ("ACTIVE", "COPIED", "1")
    assert done["isPrimary"] is False
    assert sample.sop_uids(new) == set(source.instances)
    assert sorted(sample.versions(source.image_set_id)) == ["1"]  # the source keeps its version
    assert sample.get(source.image_set_id)["imageSetState"] == "ACTIVE"
    counters = sample.copy_counters()
    assert (counters["calls"], counters["succeeded"]) == (1, 1), counters


def test_source_version_latest_by_default_and_pinned_when_current(sample, run_copy_dag):
    source = sample.with_instances(3)
    assert update_study_description(sample, source.image_set_id, "second version") == "2"
    body = (
        copy_task("latest", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)
        + copy_task(
            "pinned", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, source_version_id="2"
        )
        + "latest >> pinned\n"
    )
    result = run_copy_dag("copy_versions", body)

    assert result.task_states == {"latest": "success", "pinned": "success"}, result.errors
    for task in ("latest", "pinned"):
        out = result.xcom[task]
        assert out["source_version_id"] == "2"
        copied = sample.metadata(out["destination_image_set_id"])
        assert copied["Study"]["DICOM"]["StudyDescription"] == "second version"  # version 2's metadata
    assert len(sample.new_image_set_ids()) == 2


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "in-worker"])
def test_copy_into_a_destination_latest_and_pinned_destination_version(sample, run_copy_dag, deferrable):
    source = sample.with_instances(3)
    first_three = source.instances[:3]
    destination = boto_copy(sample, source.image_set_id, selection={source.series_uid: first_three})
    assert sample.sop_uids(destination) == set(first_three)
    body = (
        copy_task(
            "merge_latest",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination,
            deferrable=deferrable,
        )
        + copy_task(
            "merge_pinned",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination,
            destination_version_id="2",
            sop_instance_uids=[source.instances[-1]],
            deferrable=deferrable,
        )
        + "merge_latest >> merge_pinned\n"
    )
    result = run_copy_dag("copy_merge", body)

    assert result.task_states == {"merge_latest": "success", "merge_pinned": "success"}, result.errors
    merged, pinned = result.xcom["merge_latest"], result.xcom["merge_pinned"]
    assert (merged["destination_image_set_id"], merged["destination_version_id"]) == (destination, "2")
    assert merged["previous_destination_version_id"] == "1" and merged["copy_kind"] == "merge"
    assert merged["expected_instance_count"] == len(source.instances) and merged["verified"] is True
    assert (pinned["destination_version_id"], pinned["previous_destination_version_id"]) == ("3", "2")
    assert pinned["subset"] is True and pinned["copy_kind"] == "merge"
    versions = sample.versions(destination)
    assert {v: versions[v]["ImageSetWorkflowStatus"] for v in versions} == {"1": "COPIED", "2": "COPIED", "3": "COPIED"}
    assert sample.sop_uids(destination, "2") == set(source.instances)
    assert sample.sop_uids(destination, "3") == set(source.instances)
    assert sample.new_image_set_ids() == {destination}  # no other image set appeared


def test_copiable_attributes_as_dict_and_as_json_string(sample, run_copy_dag):
    source = sample.with_instances(5)
    as_dict = copiable({source.series_uid: source.instances[:2]})
    as_string = json.dumps(
        {
            "SchemaVersion": 1.1,
            "Study": {"Series": {source.series_uid: {"Instances": {uid: {} for uid in source.instances[2:5]}}}},
        },
        separators=(",", ":"),
    )
    body = (
        copy_task(
            "from_dict",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            copiable_attributes=as_dict,
        )
        + copy_task(
            "from_string",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            copiable_attributes=as_string,
        )
        + "from_dict >> from_string\n"
    )
    result = run_copy_dag("copy_copiable", body)

    assert result.task_states == {"from_dict": "success", "from_string": "success"}, result.errors
    for task, expected in (("from_dict", source.instances[:2]), ("from_string", source.instances[2:5])):
        out = result.xcom[task]
        assert out["copy_kind"] == "subset" and out["subset"] is True and out["verified"] is True
        assert out["expected_instance_count"] == len(expected)
        assert sample.sop_uids(out["destination_image_set_id"]) == set(expected)


def test_series_instance_uids_and_sop_instance_uids_build_the_subset(sample, run_copy_dag):
    source = sample.with_instances(4)
    chosen = [source.instances[0], source.instances[3]]
    body = (
        copy_task(
            "by_series",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            series_instance_uids=[source.series_uid],
        )
        + copy_task(
            "by_sop",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            sop_instance_uids=chosen,
        )
        + "by_series >> by_sop\n"
    )
    result = run_copy_dag("copy_uids", body)

    assert result.task_states == {"by_series": "success", "by_sop": "success"}, result.errors
    assert sample.sop_uids(result.xcom["by_series"]["destination_image_set_id"]) == set(source.instances)
    assert sample.sop_uids(result.xcom["by_sop"]["destination_image_set_id"]) == set(chosen)
    assert result.xcom["by_sop"]["expected_instance_count"] == 2


def test_the_pasted_cli_examples_are_the_cli_documentation_verbatim():
    text = CLI_EXAMPLES.read_text()
    # The documentation's three examples, in order, and nothing else passed as --copy-image-set-information.
    assert re.findall(r"--copy-image-set-information '([^']*)'", text) == [CLI_EXAMPLE_1, CLI_EXAMPLE_2, CLI_EXAMPLE_3]
    assert text.count("--force") == 1 and f"'{CLI_EXAMPLE_3}' \\\n        --force" in text  # only example 3 forces
    assert CLI_EXAMPLE_2_DESTINATION in CLI_EXAMPLE_2 and CLI_EXAMPLE_3_DESTINATION in CLI_EXAMPLE_3
    assert CLI_SERIES in CLI_EXAMPLE_3 and CLI_SOP in CLI_EXAMPLE_3


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "in-worker"])
def test_the_three_aws_cli_copy_examples_through_the_operator(sample, run_copy_dag, deferrable):
    source = sample.with_instances(3)
    other = sample.other_patient(source)  # example 3's destination: another patient, so force is needed
    series_uid, sop_uid = source.series_uid, source.instances[1]
    example_3 = (
        CLI_EXAMPLE_3.replace(CLI_SERIES, series_uid)
        .replace(CLI_SOP, sop_uid)
        .replace(CLI_EXAMPLE_3_DESTINATION, other.image_set_id)
    )
    # Example 2's destination is example 1's new image set, known only at run time: a Jinja template.
    example_2 = CLI_EXAMPLE_2.replace(
        CLI_EXAMPLE_2_DESTINATION, "{{ ti.xcom_pull(task_ids='example_1')['destination_image_set_id'] }}"
    )
    common = dict(datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, deferrable=deferrable)
    body = (
        copy_task("example_1", copy_image_set_information=CLI_EXAMPLE_1, **common)
        + copy_task("example_2", copy_image_set_information=example_2, **common)
        + copy_task("example_3", copy_image_set_information=example_3, force=True, **common)
        + "example_1 >> example_2 >> example_3\n"
    )
    result = run_copy_dag("cli_examples", body)

    assert result.task_states == dict.fromkeys(("example_1", "example_2", "example_3"), "success"), result.errors
    one, two, three = (result.xcom[t] for t in ("example_1", "example_2", "example_3"))
    new = one["destination_image_set_id"]
    assert sample.new_image_set_ids() == {new}
    # Example 1: a new image set, version 1 (the CLI output's "2" is a documentation slip).
    assert (one["copy_kind"], one["destination_version_id"], one["workflow_status"]) == ("new", "1", "COPIED")
    assert sample.sop_uids(new, "1") == set(source.instances)
    # Example 2: into example 1's image set, which becomes version 2; the SOP instances stay unique.
    assert (two["destination_image_set_id"], two["destination_version_id"], two["copy_kind"]) == (new, "2", "merge")
    assert sample.sop_uids(new, "2") == set(source.instances)
    # Example 3: one SOP instance into another patient's image set, forced.
    assert (three["destination_image_set_id"], three["destination_version_id"]) == (other.image_set_id, "2")
    assert three["forced"] is True and three["subset"] is True and three["verified"] is True
    version_2 = sample.get(other.image_set_id, "2")
    assert version_2["imageSetWorkflowStatus"] == "COPIED" and version_2["overrides"]["forced"] is True
    assert sample.sop_uids(other.image_set_id, "2") == set(other.instances) | {sop_uid}
    merged = sample.metadata(other.image_set_id, "2")
    assert merged["Patient"] == other.document["Patient"]  # forced: the destination keeps its own patient
    assert merged["Study"]["DICOM"] == other.document["Study"]["DICOM"]


def test_promote_to_primary_makes_the_destination_primary(sample, run_copy_dag):
    source = sample.with_instances(3)
    body = copy_task(
        "promote", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, promote_to_primary=True
    )
    result = run_copy_dag("copy_promote", body)

    assert result.task_states == {"promote": "success"}, result.errors
    out = result.xcom["promote"]
    assert out["is_primary"] is True and out["copy_kind"] == "promote" and out["promote_to_primary"] is True
    (new,) = sample.new_image_set_ids()
    assert out["destination_image_set_id"] == new and sample.get(new)["isPrimary"] is True
    found = sample.client.search_image_sets(
        datastoreId=sample.datastore_id,
        searchCriteria={
            "filters": [
                {"operator": "EQUAL", "values": [{"isPrimary": True}]},
                {"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": source.series_uid}]},
            ]
        },
    )
    assert new in {s["imageSetId"] for s in found["imageSetsMetadataSummaries"]}


def test_wait_for_completion_false_returns_while_copying(sample, run_copy_dag):
    sample.handle.configure(timing={"copy_fixed_seconds": 4})
    source = sample.with_instances(3)
    body = copy_task(
        "fire_and_forget",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        wait_for_completion=False,
        deferrable=False,
    )
    result = run_copy_dag("copy_no_wait", body)

    assert result.task_states == {"fire_and_forget": "success"}, result.errors
    out = result.xcom["fire_and_forget"]
    assert out["workflow_status"] == "COPYING"
    assert (out["verified"], out["completed_at"]) == (None, None)  # returned before the copy ended: not checked
    new = out["destination_image_set_id"]
    assert sample.get(new)["imageSetWorkflowStatus"] == "COPYING"  # still running after the task ended
    assert sample.wait_active(new)["imageSetWorkflowStatus"] == "COPIED"
    assert sample.sop_uids(new) == set(source.instances)


@pytest.mark.parametrize("verify_copy", [True, False])
def test_verify_copy_reads_the_destination_version_only_when_asked(sample, run_copy_dag, verify_copy):
    source = sample.with_instances(3)
    sample.handle.admin("DELETE", "counters")
    body = copy_task(
        "copy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, verify_copy=verify_copy
    )
    result = run_copy_dag("copy_verify", body)

    assert result.task_states == {"copy": "success"}, result.errors
    assert result.xcom["copy"]["verified"] is verify_copy
    metadata_reads = sample.handle.counters()["GetImageSetMetadata"]["calls"]
    assert metadata_reads == (2 if verify_copy else 1)  # the source's plan, plus the destination's check


def test_verification_failure_names_the_counts(sample):
    """A resumed copy whose destination does not hold what the earlier try planned fails verification."""
    source = sample.with_instances(3)
    new = boto_copy(sample, source.image_set_id, selection={source.series_uid: source.instances[:2]})
    planned = source.instances[:3]  # the earlier try planned three instances; the copy holds two
    store = FakeTaskStateStore(
        {
            COPY_STATE_KEY: {
                "phase": "submitted",
                "copy": {
                    "datastore_id": sample.datastore_id,
                    "source_image_set_id": source.image_set_id,
                    "source_version_id": "1",
                    "destination_image_set_id": new,
                    "destination_version_id": "1",
                    "copy_kind": "subset",
                    "subset": True,
                    "force": False,
                    "promote_to_primary": False,
                    "previous_destination_version_id": None,
                    "expected_instance_count": 3,
                    "expected_instance_digest": uid_digest(planned),
                },
            }
        }
    )
    operator = HealthImagingCopyImageSetOperator(
        task_id="verify",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        waiter_delay=1,
        deferrable=False,
    )
    from airflow.providers.common.compat.sdk import AirflowException

    with pytest.raises(
        AirflowException,
        match=rf"Copy verification failed: destination image set {new} version 1 "
        r"holds 2 SOP instances, expected 3",
    ):
        operator.execute(direct_context(store))
    assert sample.copy_calls() == 1  # only the set-up copy: the resumed task sent nothing


def test_botocore_config_reaches_every_client_and_the_trigger(sample, run_copy_dag):
    from airflow.providers.common.compat.sdk import TaskDeferred

    source = sample.with_instances(3)
    config = {"read_timeout": 17, "connect_timeout": 4, "retries": {"mode": "standard", "max_attempts": 5}}
    operator = HealthImagingCopyImageSetOperator(
        task_id="cfg",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        botocore_config=config,
        deferrable=True,
        waiter_delay=1,
    )
    client = operator.hook.conn
    assert (client.meta.config.read_timeout, client.meta.config.connect_timeout) == (17, 4)
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}  # botocore: 5 retries
    assert client.meta.config.inject_host_prefix is False  # the connection has an endpoint_url
    no_retry = operator.hook.no_retry_conn
    assert no_retry.meta.config.read_timeout == 17 and no_retry.meta.config.inject_host_prefix is False
    assert no_retry.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute(direct_context())
    assert deferred.value.trigger.botocore_config == config
    assert deferred.value.trigger.serialize()[1]["botocore_config"] == config
    sample.wait_active(deferred.value.trigger.serialized_fields["image_set_id"])

    # And a whole deferrable run with it.
    body = copy_task(
        "copy",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        botocore_config=config,
        deferrable=True,
    )
    result = run_copy_dag("copy_botocore_config", body)
    assert result.task_states == {"copy": "success"}, result.errors
    assert sample.sop_uids(result.xcom["copy"]["destination_image_set_id"]) == set(source.instances)


# ----------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "in-worker"])
def test_copy_failed_without_force_fails_with_the_services_message(sample, run_copy_dag, deferrable):
    source, destination = sample.same_study_pair()
    body = copy_task(
        "mismatch",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        destination_image_set_id=destination.image_set_id,
        deferrable=deferrable,
    )
    result = run_copy_dag("copy_mismatch", body)

    assert result.task_states == {"mismatch": "failed"}
    failed = sample.get(destination.image_set_id, "2")
    assert (failed["imageSetWorkflowStatus"], failed["message"]) == ("COPY_FAILED", SERIES_MISMATCH)
    assert SERIES_MISMATCH in result.error("mismatch"), result.errors
    assert f"image set {destination.image_set_id}" in result.error("mismatch")
    assert sample.sop_uids(destination.image_set_id, "1") == set(destination.instances)
    assert sample.copy_calls() == 1 and sample.new_image_set_ids() == set()


def test_stale_pinned_versions_fail_naming_the_version(sample, run_copy_dag):
    source = sample.with_instances(3)
    destination = boto_copy(sample, source.image_set_id)
    update_study_description(sample, source.image_set_id, "moved")
    update_study_description(sample, destination, "moved too")
    before = sample.copy_calls()
    body = (
        copy_task(
            "pinned_source",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            source_version_id="1",
        )
        # all_done: runs although the first task fails
        + copy_task(
            "pinned_destination",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination,
            destination_version_id="1",
            trigger_rule="all_done",
        )
        + "pinned_source >> pinned_destination\n"
    )
    result = run_copy_dag("copy_stale_pinned", body)

    assert result.task_states == {"pinned_source": "failed", "pinned_destination": "failed"}, result.errors
    assert (
        f"the pinned source version 1 of image set {source.image_set_id} is no longer the latest (now 2)"
        in result.error("pinned_source")
    ), result.errors
    assert (
        f"the pinned destination version 1 of image set {destination} is no longer the latest (now 2)"
        in result.error("pinned_destination")
    ), result.errors
    counters = sample.copy_counters()
    assert counters["calls"] - before == 2 and counters["errors"] == {"ConflictException": 2}, counters
    assert sorted(sample.versions(destination)) == ["1", "2"]  # nothing was copied
    assert sample.new_image_set_ids() == {destination}


def test_stale_unpinned_source_is_re_resolved_when_it_moves_between_plan_and_send(
    sample, run_copy_dag, recorded_sleeps
):
    source = sample.with_instances(3)
    moving = '''
class MovingSourceCopy(HealthImagingCopyImageSetOperator):
    """Someone updates the source's metadata after the plan is made, before CopyImageSet is sent."""

    def _plan(self):
        import json, time
        plan = super()._plan()
        client = self.hook.conn
        updates = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "moved under the operator"}}}
        client.update_image_set_metadata(
            datastoreId=plan.datastore_id, imageSetId=plan.source_image_set_id, latestVersionId=plan.source_version_id,
            updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": json.dumps(updates).encode()}})
        source = {"datastoreId": plan.datastore_id, "imageSetId": plan.source_image_set_id}
        while client.get_image_set(**source)["imageSetState"] != "ACTIVE":
            time.sleep(0.02)
        return plan

'''
    body = moving + copy_task(
        "copy", cls="MovingSourceCopy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id
    )
    result = run_copy_dag("copy_moving_source", body)

    assert result.task_states == {"copy": "success"}, result.errors
    out = result.xcom["copy"]
    assert out["source_version_id"] == "2" and out["attempts"] == 2
    copied = sample.metadata(out["destination_image_set_id"])
    assert copied["Study"]["DICOM"]["StudyDescription"] == "moved under the operator"
    counters = sample.copy_counters()
    assert (counters["calls"], counters["succeeded"], counters["errors"]) == (2, 1, {"ConflictException": 1})
    assert len(sample.new_image_set_ids()) == 1
    assert len(recorded_sleeps) == 1  # one backoff before the second attempt


def test_submit_copy_with_an_old_plan_re_resolves_the_unpinned_versions(sample):
    source = sample.with_instances(3)
    destination = boto_copy(sample, source.image_set_id, selection={source.series_uid: source.instances[:1]})
    hook = HealthImagingHook(aws_conn_id="aws_default")
    plan = resolve_plan(
        hook,
        CopyRequest(
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination,
        ),
    )
    assert (plan.source_version_id, plan.destination_version_id) == ("1", "1")
    update_study_description(sample, source.image_set_id, "newer source")
    sleeps: list[float] = []

    submitted = submit_copy(hook, plan, SubmissionPolicy(sleep=sleeps.append))

    assert (submitted.plan.source_version_id, submitted.plan.destination_version_id) == ("2", "1")
    assert (submitted.destination_image_set_id, submitted.destination_version_id) == (destination, "2")
    assert submitted.attempts == 2 and len(sleeps) == 1
    assert sample.wait_active(destination)["imageSetWorkflowStatus"] == "COPIED"
    assert sample.sop_uids(destination, "2") == set(source.instances)
    assert sample.copy_counters()["errors"] == {"ConflictException": 1}


def test_throttling_backs_off_and_succeeds(sample, run_copy_dag, recorded_sleeps):
    source = sample.with_instances(3)
    sample.handle.configure(script={"CopyImageSet": ["throttle", "throttle"]})
    body = copy_task("copy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)
    result = run_copy_dag("copy_throttled", body)

    assert result.task_states == {"copy": "success"}, result.errors
    counters = sample.copy_counters()
    assert (counters["calls"], counters["throttled"], counters["succeeded"]) == (3, 2, 1), counters
    assert result.xcom["copy"]["attempts"] == 1  # throttling is not a failed attempt
    assert len(recorded_sleeps) == 2 and recorded_sleeps[0] > 0 and recorded_sleeps[1] > 0
    (new,) = sample.new_image_set_ids()
    assert sample.sop_uids(new) == set(source.instances)


def test_the_throttle_backoff_doubles_from_its_own_base(sample):
    """A caller pacing to the quota (the bulk engine) scales the throttle backoff to the quota's interval;
    the operator's default stays at seconds. Either way it doubles while the throttling lasts."""
    hook = HealthImagingHook(aws_conn_id="aws_default")
    sources = [s for s in sample.image_sets if s.frames][:2]
    for source, base in zip(sources, (0.05, None)):
        sample.handle.configure(script={"CopyImageSet": ["throttle", "throttle", "throttle"]})
        sleeps: list[float] = []
        policy = SubmissionPolicy(sleep=sleeps.append)
        if base is not None:
            policy.throttle_backoff_base_seconds = base
        plan = resolve_plan(
            hook, CopyRequest(datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)
        )

        submitted = submit_copy(hook, plan, policy)

        assert submitted.attempts == 1 and len(sleeps) == 3
        unit = base if base is not None else 1.0
        for n, slept in enumerate(sleeps, start=1):  # min(cap, base * 2**n) * U(0.5, 1)
            assert unit * 2**n * 0.5 <= slept <= unit * 2**n, (n, sleeps)
    assert sample.copy_counters()["succeeded"] == 2


def test_throttling_by_a_low_copy_rate_paces_the_copies(sample):
    """Against the token bucket itself: 2 copies/s, burst 1; three copies in a row all get through."""
    sample.handle.configure(rates={"CopyImageSet": {"rate": 2, "burst": 1}})
    hook = HealthImagingHook(aws_conn_id="aws_default")
    sources = [s for s in sample.image_sets if s.frames][:3]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(0.25)  # enough for the bucket (one token every 0.5 s) without the full backoff

    # Planned first (the reads a plan takes), so that the three CopyImageSet calls go out back to back: far less
    # than the bucket's 0.5 s apart, however slow the machine is at planning.
    plans = [
        snapshot_series(
            hook,
            resolve_plan(hook, CopyRequest(datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)),
        )
        for source in sources
    ]
    for plan in plans:
        submit_copy(hook, plan, SubmissionPolicy(sleep=sleep))
    counters = sample.copy_counters()
    assert counters["succeeded"] == 3 and counters["throttled"] >= 1 and len(slept) == counters["throttled"]
    assert len(sample.new_image_set_ids()) == 3


def test_lost_response_is_reconciled_into_exactly_one_copy(sample, run_copy_dag, recorded_sleeps):
    source = sample.with_instances(3)
    destination = boto_copy(sample, source.image_set_id, selection={source.series_uid: source.instances[:1]})
    sample.handle.admin("DELETE", "counters")
    sample.handle.configure(script={"CopyImageSet": ["lost_response", "lost_response"]})
    body = (
        copy_task("to_new", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, deferrable=True)
        + copy_task(
            "into_destination",
            datastore_id=sample.datastore_id,
            source_image_set_id=source.image_set_id,
            destination_image_set_id=destination,
            deferrable=False,
        )
        + "to_new >> into_destination\n"
    )
    result = run_copy_dag("copy_lost_response", body)

    assert result.task_states == {"to_new": "success", "into_destination": "success"}, result.errors
    counters = sample.copy_counters()
    assert counters["calls"] == 2 and counters["faults"] == {"lost_response": 2}, counters  # never sent twice
    new, merged = result.xcom["to_new"], result.xcom["into_destination"]
    assert sample.new_image_set_ids() == {destination, new["destination_image_set_id"]}  # exactly one new
    assert new["reconciled"] is True and new["workflow_status"] == "COPIED" and new["verified"] is True
    assert sample.sop_uids(new["destination_image_set_id"]) == set(source.instances)
    assert merged["reconciled"] is True and merged["destination_version_id"] == "2" and merged["verified"] is True
    assert sorted(sample.versions(destination)) == ["1", "2"]  # exactly one new version


def test_internal_error_is_reconciled_then_copied_once(sample, run_copy_dag, recorded_sleeps):
    source = sample.with_instances(3)
    sample.handle.configure(script={"CopyImageSet": ["internal_error"]})
    body = copy_task("copy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)
    result = run_copy_dag("copy_internal_error", body)

    assert result.task_states == {"copy": "success"}, result.errors
    counters = sample.copy_counters()
    assert (counters["calls"], counters["succeeded"], counters["faults"]) == (2, 1, {"internal_error": 1}), counters
    out = result.xcom["copy"]
    assert out["attempts"] == 2 and out["reconciled"] is False
    (new,) = sample.new_image_set_ids()
    assert out["destination_image_set_id"] == new and sample.sop_uids(new) == set(source.instances)
    # The reconciliation looked twice (waiting its delay) before the copy was sent again after a backoff.
    assert SubmissionPolicy().reconcile_delay_seconds in recorded_sleeps and len(recorded_sleeps) == 2


def test_bad_arguments_fail_before_anything_is_sent(sample, run_copy_dag):
    source = sample.with_instances(3)
    other = sample.other_patient(source)
    max_length = 260_000
    many = {f"1.2.840.{i:0>50}": {} for i in range(max_length // 55)}  # well-formed, too long
    too_long = json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {source.series_uid: {"Instances": many}}}})
    assert len(too_long) > max_length
    cases = {
        "bad_json": dict(copiable_attributes='{"SchemaVersion": "1.1", "Study": '),
        # The AWS SDK examples' mistake: Series keyed by an image set id instead of a Series Instance UID.
        "wrong_schema": dict(
            copiable_attributes={
                "SchemaVersion": "1.1",
                "Study": {"Series": {source.image_set_id: {"Instances": {source.instances[0]: {}}}}},
            }
        ),
        "no_instances": dict(
            copiable_attributes=json.dumps({"SchemaVersion": "1.1", "Study": {"Series": {source.series_uid: {}}}})
        ),
        "too_long_string": dict(copiable_attributes=too_long),
        "too_long_dict": dict(copiable_attributes=json.loads(too_long)),
        "information_and_destination": dict(
            copy_image_set_information=CLI_EXAMPLE_1, destination_image_set_id=other.image_set_id
        ),
        "attributes_and_uids": dict(
            copiable_attributes=copiable({source.series_uid: source.instances[:1]}),
            series_instance_uids=[source.series_uid],
        ),
        "version_without_destination": dict(destination_version_id="1"),
        "destination_is_source": dict(destination_image_set_id=source.image_set_id),
        "unknown_series": dict(series_instance_uids=["1.2.3.4.5"]),
        "unknown_sop": dict(sop_instance_uids=["1.2.3.4.6"]),
        "bad_information": dict(copy_image_set_information='{"sourceImageSet": {}}'),
    }
    body = "".join(
        copy_task(name, datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id, **kwargs)
        for name, kwargs in cases.items()
    )
    result = run_copy_dag("copy_bad_arguments", body)

    assert result.task_states == dict.fromkeys(cases, "failed"), result.errors
    expected = {
        "bad_json": "copiable_attributes is not valid JSON",
        "wrong_schema": "copiable_attributes does not follow the copiableAttributes schema at Study/Series",
        "no_instances": "copiable_attributes does not follow the copiableAttributes schema at Study/Series/",
        "too_long_string": f"copiable_attributes is {len(too_long):,} characters long; the service accepts at most "
        "260,000",
        "too_long_dict": "characters long as JSON; the service accepts at most 260,000",
        "information_and_destination": "copy_image_set_information already says what to copy; do not also pass "
        "destination_image_set_id",
        "attributes_and_uids": "pass either copiable_attributes or series_instance_uids/sop_instance_uids, not both",
        "version_without_destination": "destination_version_id needs destination_image_set_id",
        "destination_is_source": "destination_image_set_id must differ from source_image_set_id",
        "unknown_series": f"series_instance_uids: 1.2.3.4.5 is not a series of image set {source.image_set_id} "
        "version 1",
        "unknown_sop": f"sop_instance_uids: 1.2.3.4.6 is not a SOP instance of image set {source.image_set_id}",
        "bad_information": "copy_image_set_information does not match CopyImageSetInformation",
    }
    for name, message in expected.items():
        error = result.error(name)
        assert f"Cannot copy image set {source.image_set_id}: " in error, (name, error)
        assert message in error, (name, error)
    assert 'Expected {"SchemaVersion": "1.1"' in result.error("wrong_schema")  # says what is expected
    assert_no_copy_sent(sample)


def test_a_copy_over_1000_frames_fails_early_naming_the_quota(sample, run_copy_dag):
    from healthimaging_emulator import dicom_metadata

    (document,) = dicom_metadata.synthetic_documents(1, instances_per_series=3, frames_per_instance=400)
    (big,) = sample.handle.backend.insert_image_sets(sample.datastore_id, [document.document])
    instances = sorted(dicom_metadata.sop_instance_uids(document.document))
    body = copy_task("whole", datastore_id=sample.datastore_id, source_image_set_id=big) + copy_task(
        "two_instances", datastore_id=sample.datastore_id, source_image_set_id=big, sop_instance_uids=instances[:2]
    )
    result = run_copy_dag("copy_frames", body)

    assert result.task_states == {"whole": "failed", "two_instances": "success"}, result.errors
    error = result.error("whole")
    assert f"the copy holds 1,200 image frames; CopyImageSet copies at most {MAX_FRAMES_PER_COPY:,} per call" in error
    assert "series_instance_uids or sop_instance_uids" in error
    counters = sample.copy_counters()
    assert counters["calls"] == 1 and counters["errors"] == {}, counters  # only the 800-frame subset was sent
    assert sample.sop_uids(result.xcom["two_instances"]["destination_image_set_id"]) == set(instances[:2])


# ----------------------------------------------------------------------------------------- templates, resume


def test_templated_fields_are_rendered_from_params_and_jinja(sample, run_copy_dag):
    source = sample.with_instances(3)
    params = (
        '{"datastore_id": Param(type="string"), "source": Param(type="string"), '
        '"sop": Param(type="string"), "series": Param(type="string")}'
    )
    body = (
        copy_task(
            "by_params",
            datastore_id="{{ params.datastore_id }}",
            source_image_set_id="{{ params.source }}",
            sop_instance_uids=["{{ params.sop }}"],
        )
        + copy_task(
            "by_jinja_string",
            datastore_id="{{ params.datastore_id }}",
            source_image_set_id="{{ params.source }}",
            destination_image_set_id="{{ ti.xcom_pull(task_ids='by_params')['destination_image_set_id'] }}",
            destination_version_id="{{ ti.xcom_pull(task_ids='by_params')['destination_version_id'] }}",
            copiable_attributes='{"SchemaVersion":"1.1","Study":{"Series":{"{{ params.series }}":'
            '{"Instances":{"{{ params.sop }}":{}}}}}}',
        )
        + "by_params >> by_jinja_string\n"
    )
    conf = {
        "datastore_id": sample.datastore_id,
        "source": source.image_set_id,
        "sop": source.instances[1],
        "series": source.series_uid,
    }
    result = run_copy_dag("copy_templated", body, params=params, run_conf=conf)

    assert result.task_states == {"by_params": "success", "by_jinja_string": "success"}, result.errors
    first, second = result.xcom["by_params"], result.xcom["by_jinja_string"]
    assert (first["datastore_id"], first["source_image_set_id"]) == (sample.datastore_id, source.image_set_id)
    assert sample.sop_uids(first["destination_image_set_id"]) == {source.instances[1]}
    assert (second["destination_image_set_id"], second["destination_version_id"]) == (
        first["destination_image_set_id"],
        "2",
    )
    assert second["previous_destination_version_id"] == "1"
    assert sample.sop_uids(first["destination_image_set_id"], "2") == {source.instances[1]}


def test_the_repositorys_example_dag_runs_with_params(sample, airflow_db, dag_bundle):
    """dags/example_healthimaging_copy.py: the CLI's three copies, all fields templated from params."""
    source = sample.with_instances(3)
    destination = boto_copy(sample, source.image_set_id)  # example 2 merges the same series: no force needed
    conf = {
        "datastore_id": sample.datastore_id,
        "source_image_set_id": source.image_set_id,
        "destination_image_set_id": destination,
        "series_instance_uid": source.series_uid,
        "sop_instance_uid": source.instances[2],
    }
    result = run_dag(dag_bundle, DAGS_FOLDER, "example_healthimaging_copy", run_conf=conf)

    assert result.task_states == dict.fromkeys(
        ("copy_to_new_image_set", "copy_into_destination", "forced_subset_copy"), "success"
    ), result.errors
    assert {t for t, e in result.events if e == "deferred"} == set(result.task_states)
    new = result.xcom["copy_to_new_image_set"]["destination_image_set_id"]
    assert sample.new_image_set_ids() == {destination, new}
    assert result.xcom["copy_into_destination"]["destination_version_id"] == "2"
    subset = result.xcom["forced_subset_copy"]
    assert (subset["destination_version_id"], subset["forced"], subset["subset"]) == ("3", True, True)
    assert sample.sop_uids(destination, "3") == set(source.instances)


def test_example_dag_rejects_a_bad_id_in_its_params(sample, airflow_db, dag_bundle):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    dag_bundle(DAGS_FOLDER)
    dag = DagBag(dag_folder=str(DAGS_FOLDER)).get_dag("example_healthimaging_copy")
    with pytest.raises(ParamValidationError):
        dag.test(
            run_conf={
                "datastore_id": "not-an-id",
                "source_image_set_id": "x",
                "destination_image_set_id": "y",
                "series_instance_uid": "1.2",
                "sop_instance_uid": "1.3",
            }
        )
    assert_no_copy_sent(sample)


def stored_state(dag_id: str, task_id: str) -> dict[str, Any]:
    """The task_state_store value the operator left for the task (the store keeps it after success)."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (row,) = (
            session.query(TaskStateStoreModel)
            .filter(
                TaskStateStoreModel.dag_id == dag_id,
                TaskStateStoreModel.task_id == task_id,
                TaskStateStoreModel.key == COPY_STATE_KEY,
            )
            .all()
        )
        return json.loads(row.value)


def test_a_retry_resumes_the_submitted_copy_from_task_state_store(sample, run_copy_dag):
    """Try 1 sends the copy and dies while waiting; try 2 finds it in task_state_store and waits on it."""
    sample.handle.configure(timing={"copy_fixed_seconds": 2})
    source = sample.with_instances(3)
    crashing = """
class CrashWhileWaiting(HealthImagingCopyImageSetOperator):
    def execute(self, context):
        if context["ti"].try_number == 1:
            self.wait_for_completion = False
            copy = super().execute(context)
            raise RuntimeError(f"worker lost while waiting for {copy['destination_image_set_id']}")
        self.wait_for_completion = True
        return super().execute(context)

"""
    body = crashing + copy_task(
        "copy",
        cls="CrashWhileWaiting",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        deferrable=False,
        retries=1,
        retry_delay=Code("timedelta(0)"),
    )
    result = run_copy_dag("copy_resume_submitted", body)

    assert result.task_states == {"copy": "success"}, (result.errors, result.events)
    assert result.tries["copy"] == 2 and ("copy", "up_for_retry") in result.events, result.events
    (new,) = sample.new_image_set_ids()
    assert sample.copy_calls() == 1  # try 2 sent nothing
    out = result.xcom["copy"]
    assert (out["destination_image_set_id"], out["workflow_status"], out["verified"]) == (new, "COPIED", True)
    assert result.ended["copy"] >= sample.get(new)["updatedAt"].timestamp()  # try 2 waited for the copy to end
    state = stored_state("copy_resume_submitted", "copy")
    assert state["phase"] == "submitted" and state["copy"]["destination_image_set_id"] == new


def test_a_retry_after_dying_while_sending_reconciles_instead_of_copying_again(sample, run_copy_dag, monkeypatch):
    """Try 1 dies after CopyImageSet took effect but before recording it; try 2 finds the copy."""
    source = sample.with_instances(3)
    real_submit = operators.submit_copy
    tries: list[str] = []

    def dies_after_sending(hook, plan, policy=None, replan=None):
        tries.append(plan.source_image_set_id)
        if len(tries) == 1:
            real_submit(hook, plan, policy, replan)
            raise RuntimeError("worker killed before the accepted copy was recorded")
        return real_submit(hook, plan, policy, replan)

    monkeypatch.setattr(operators, "submit_copy", dies_after_sending)
    body = copy_task(
        "copy",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        retries=1,
        retry_delay=Code("timedelta(0)"),
    )
    result = run_copy_dag("copy_resume_submitting", body)

    assert result.task_states == {"copy": "success"}, (result.errors, result.events)
    assert result.tries["copy"] == 2 and len(tries) == 1  # try 2 did not send at all
    (new,) = sample.new_image_set_ids()
    assert sample.copy_calls() == 1
    out = result.xcom["copy"]
    assert (out["destination_image_set_id"], out["reconciled"], out["workflow_status"]) == (new, True, "COPIED")
    assert stored_state("copy_resume_submitting", "copy")["phase"] == "submitted"


def test_a_stored_copy_that_ended_copy_failed_is_copied_again(sample):
    """Direct execute() with a task_state_store holding a copy that failed: the retry copies anew."""
    source, destination = sample.same_study_pair()
    failed = sample.client.copy_image_set(
        datastoreId=sample.datastore_id,
        sourceImageSetId=source.image_set_id,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1"},
            "destinationImageSet": {"imageSetId": destination.image_set_id, "latestVersionId": "1"},
        },
    )
    sample.wait_active(destination.image_set_id)
    sample.wait_active(source.image_set_id)
    assert sample.get(destination.image_set_id, "2")["imageSetWorkflowStatus"] == "COPY_FAILED"
    store = FakeTaskStateStore(
        {
            COPY_STATE_KEY: {
                "phase": "submitted",
                "copy": {
                    "datastore_id": sample.datastore_id,
                    "source_image_set_id": source.image_set_id,
                    "source_version_id": "1",
                    "destination_image_set_id": failed["destinationImageSetProperties"]["imageSetId"],
                    "destination_version_id": "2",
                },
            }
        }
    )
    operator = HealthImagingCopyImageSetOperator(
        task_id="retry",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        destination_image_set_id=destination.image_set_id,
        force=True,
        waiter_delay=1,
        deferrable=False,
    )

    out = operator.execute(direct_context(store))

    assert (out["destination_version_id"], out["forced"], out["workflow_status"]) == ("3", True, "COPIED")
    assert sample.copy_calls() == 2
    assert store.values[COPY_STATE_KEY]["phase"] == "submitted"
    assert store.values[COPY_STATE_KEY]["copy"]["destination_version_id"] == "3"


# ----------------------------------------------------------------------------------------- lineage, link


def patient_values(*documents: dict[str, Any]) -> set[str]:
    values = set()
    for document in documents:
        for value in document["Patient"]["DICOM"].values():
            if isinstance(value, str) and len(value) >= 3:
                values.add(value)
    return values


def serialized(lineage) -> str:
    from openlineage.client.serde import Serde

    parts = [*lineage.inputs, *lineage.outputs, *lineage.run_facets.values(), *lineage.job_facets.values()]
    return "\n".join(Serde.to_json(part) for part in parts)


def test_openlineage_facets_name_the_image_set_versions_and_carry_no_patient_data(sample):
    source = sample.with_instances(3)
    destination = boto_copy(sample, source.image_set_id)
    assert patient_values(source.document), "the source must carry patient data for this test to mean anything"
    operator = HealthImagingCopyImageSetOperator(
        task_id="lineage",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        destination_image_set_id=destination,
        deferrable=False,
        waiter_delay=1,
    )
    assert operator.get_openlineage_facets_on_start().inputs == []

    out = operator.execute(direct_context())
    lineage = operator.get_openlineage_facets_on_complete(None)

    (source_dataset,) = lineage.inputs
    (destination_dataset,) = lineage.outputs
    assert source_dataset.namespace == destination_dataset.namespace == ACCOUNT_NAMESPACE
    assert source_dataset.name == f"datastore/{sample.datastore_id}/imageset/{source.image_set_id}"
    assert destination_dataset.name == f"datastore/{sample.datastore_id}/imageset/{destination}"
    assert source_dataset.facets["version"].datasetVersion == "1"
    assert destination_dataset.facets["version"].datasetVersion == out["destination_version_id"] == "2"
    facet = lineage.run_facets["healthImagingCopy"]
    assert (facet.datastoreId, facet.sourceImageSetId, facet.sourceVersionId) == (
        sample.datastore_id,
        source.image_set_id,
        "1",
    )
    assert (facet.destinationImageSetId, facet.destinationVersionId, facet.copyKind) == (destination, "2", "merge")
    assert (facet.force, facet.promoteToPrimary, facet.subset, facet.workflowStatus) == (False, False, False, "COPIED")
    text = serialized(lineage)
    assert source.image_set_id in text and destination in text
    leaked = {value for value in patient_values(source.document, sample.metadata(destination)) if value in text}
    assert not leaked, f"patient data in the lineage facets: {leaked}"
    assert not re.search(r'"Patient(Name|ID)"', text)


def test_openlineage_on_failure_names_both_image_sets_and_no_patient_data(sample):
    source, destination = sample.same_study_pair()
    operator = HealthImagingCopyImageSetOperator(
        task_id="lineage_failure",
        datastore_id=sample.datastore_id,
        source_image_set_id=source.image_set_id,
        destination_image_set_id=destination.image_set_id,
        deferrable=False,
        waiter_delay=1,
    )
    from airflow.providers.common.compat.sdk import AirflowException

    with pytest.raises(AirflowException, match=re.escape(SERIES_MISMATCH)):
        operator.execute(direct_context())
    lineage = operator.get_openlineage_facets_on_failure(None)

    assert [d.name for d in lineage.inputs] == [f"datastore/{sample.datastore_id}/imageset/{source.image_set_id}"]
    assert [d.name for d in lineage.outputs] == [f"datastore/{sample.datastore_id}/imageset/{destination.image_set_id}"]
    assert lineage.run_facets["healthImagingCopy"].workflowStatus is None  # it failed: no status is claimed
    # The OpenLineage listener adds errorMessage from the task's exception; a facet of ours would say it twice.
    assert "errorMessage" not in lineage.run_facets
    text = serialized(lineage)
    assert not {value for value in patient_values(source.document, destination.document) if value in text}


def test_extra_link_points_at_the_destination_in_the_console(sample, run_copy_dag):
    source = sample.with_instances(3)
    link = HealthImagingImageSetLink()
    assert link.format_link(
        region_name="eu-west-1", aws_domain="aws.amazon.com", datastore_id="d" * 32, image_set_id="e" * 32
    ) == (
        f"https://console.aws.amazon.com/medical-imaging/home?region=eu-west-1#/data-stores/{'d' * 32}"
        f"/image-sets/{'e' * 32}"
    )
    assert HealthImagingCopyImageSetOperator.operator_extra_links[0].name == "HealthImaging Image Set"

    body = copy_task("copy", datastore_id=sample.datastore_id, source_image_set_id=source.image_set_id)
    result = run_copy_dag("copy_link", body)
    assert result.task_states == {"copy": "success"}, result.errors
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        (row,) = session.query(XComModel).filter(XComModel.dag_id == "copy_link", XComModel.key == link.key).all()
        stored = json.loads(row.value) if isinstance(row.value, (str, bytes)) else row.value
    new = result.xcom["copy"]["destination_image_set_id"]
    assert link.format_link(**stored) == (
        f"https://console.aws.amazon.com/medical-imaging/home?region=us-east-1#/data-stores/{sample.datastore_id}"
        f"/image-sets/{new}"
    )
