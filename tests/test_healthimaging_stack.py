"""The HealthImaging operator and sensor under a real Airflow deployment (tests/airflow_stack.py).

One stack (the process stack with the LocalExecutor: scheduler, dag-processor, triggerer, api-server on
PostgreSQL)
and one DAG folder serve four scenarios, triggered together when the stack is up; each test then
waits for its own run. Every scenario has its own in-process emulator (and Airflow connection), so
that "exactly one new image set" is counted over a whole data store and faults scripted for one
scenario cannot reach another:

- ``deferral``: a deferrable copy, then a merge into its destination, then a deferrable sensor on
  the destination while the merge is in flight; both deferrable tasks wait in the triggerer.
- ``crash_submitted``: the task process is SIGKILLed right after the copy was recorded as
  ``submitted``; the retry resumes waiting on the same copy.
- ``crash_submitting``: the task process is SIGKILLed after CopyImageSet was accepted but before
  the ``submitted`` record (only the ``submitting`` intent is stored); the retry reconciles.
- ``lost_response``: the CopyImageSet response is lost (emulator script); the operator reconciles.
"""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from healthimaging_emulator.pytest_plugin import FAST_TIMING, EmulatorHandle, start_emulator
from healthimaging_emulator.realism import Realism, Timing
from tests.airflow_env import PLUGINS_FOLDER, aws_connection_env
from tests.airflow_stack import AirflowStack

pytestmark = pytest.mark.slow

#: A series of pydicom's test files with 4 SOP instances (the sample seed has one image set per series).
SOURCE_SERIES_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
RUN_TIMEOUT = 150

# The copy time of each scenario's emulator. The deferral scenario's merge copy must still be in
# flight when the sensor's first poke happens (about 1 s after the merge was accepted in trial runs;
# the test prints the gap), so it gets a wide margin; the crash scenarios only need the copy to
# outlive the kill.
COPY_SECONDS = {"deferral": 8.0, "crash_submitted": 6.0, "crash_submitting": 6.0, "lost_response": 3.0}

DAG_FILE = '''
"""DAGs for tests/test_healthimaging_stack.py (written to a temporary DAG folder)."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timedelta

from airflow.sdk import DAG

from healthimaging.operators import COPY_STATE_KEY, HealthImagingCopyImageSetOperator
from healthimaging.sensors import HealthImagingImageSetSensor

PARAMS = {"datastore_id": "", "source_image_set_id": ""}
SOURCE = {"datastore_id": "{{ params.datastore_id }}", "source_image_set_id": "{{ params.source_image_set_id }}"}
COPY_DESTINATION = "{{ ti.xcom_pull(task_ids='copy')['destination_image_set_id'] }}"


class _KillOnRecord:
    """Wraps context["task_state_store"]: SIGKILLs this task process around the write of ``phase``."""

    def __init__(self, store, phase, before_write, log):
        self._store, self._phase, self._before_write, self._log = store, phase, before_write, log

    def get(self, key, default=None):
        return self._store.get(key, default)

    def set(self, key, value, **kwargs):
        hit = key == COPY_STATE_KEY and isinstance(value, dict) and value.get("phase") == self._phase
        if hit and self._before_write:
            self._kill(value)
        self._store.set(key, value, **kwargs)
        if hit and not self._before_write:
            self._kill(value)

    def _kill(self, value):
        self._log.warning("TEST CRASH: SIGKILL of the task process %s the %r record",
                          "before" if self._before_write else "after", self._phase)
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name):
        return getattr(self._store, name)


class CrashingCopyOperator(HealthImagingCopyImageSetOperator):
    """On try 1 only, dies by SIGKILL around the write of the ``crash_phase`` record."""

    def __init__(self, *, crash_phase, crash_before_write, **kwargs):
        super().__init__(**kwargs)
        self.crash_phase = crash_phase
        self.crash_before_write = crash_before_write

    def execute(self, context):
        if context["ti"].try_number == 1:
            context["task_state_store"] = _KillOnRecord(
                context["task_state_store"], self.crash_phase, self.crash_before_write, self.log)
        return super().execute(context)


COMMON = dict(schedule=None, start_date=datetime(2024, 1, 1), catchup=False, params=PARAMS, tags=["test"])

with DAG(dag_id="hi_stack_deferral", **COMMON):
    copy = HealthImagingCopyImageSetOperator(
        task_id="copy", aws_conn_id="hi_deferral", deferrable=True, waiter_delay=1, **SOURCE)
    # A merge of the source into the copy, not waited for: the destination is LOCKED / COPYING
    # while the sensor starts, so the sensor defers too.
    merge = HealthImagingCopyImageSetOperator(
        task_id="merge_into_copy", aws_conn_id="hi_deferral", destination_image_set_id=COPY_DESTINATION,
        wait_for_completion=False, deferrable=False, **SOURCE)
    wait = HealthImagingImageSetSensor(
        task_id="wait_for_destination", aws_conn_id="hi_deferral", datastore_id="{{ params.datastore_id }}",
        image_set_id=COPY_DESTINATION, deferrable=True, poke_interval=1, max_retries=120)
    copy >> merge >> wait

for name, phase, before_write in (("crash_submitted", "submitted", False), ("crash_submitting", "submitted", True)):
    with DAG(dag_id=f"hi_stack_{name}", **COMMON):
        CrashingCopyOperator(
            task_id="copy", aws_conn_id=f"hi_{name}", deferrable=False, waiter_delay=1,
            retries=1, retry_delay=timedelta(seconds=1), crash_phase=phase, crash_before_write=before_write,
            **SOURCE)

with DAG(dag_id="hi_stack_lost_response", **COMMON):
    HealthImagingCopyImageSetOperator(
        task_id="copy", aws_conn_id="hi_lost_response", deferrable=True, waiter_delay=1, **SOURCE)
'''


@dataclass
class Scenario:
    name: str
    emulator: EmulatorHandle
    datastore_id: str
    source_image_set_id: str
    before: set[str]
    run_id: str | None = None

    @property
    def dag_id(self) -> str:
        return f"hi_stack_{self.name}"

    @property
    def conn_id(self) -> str:
        return f"hi_{self.name}"

    def image_set_ids(self) -> set[str]:
        return all_image_set_ids(self.emulator, self.datastore_id)

    def new_image_sets(self) -> set[str]:
        return self.image_set_ids() - self.before


@dataclass
class Deployment:
    stack: AirflowStack
    scenarios: dict[str, Scenario]

    def finish(self, name: str) -> tuple[Scenario, str]:
        """Wait for the scenario's run; returns it and its final state."""
        scenario = self.scenarios[name]
        state = self.stack.wait_for_run(scenario.dag_id, scenario.run_id, timeout=RUN_TIMEOUT)
        run = self.stack.api(
            "GET", f"/api/v2/dags/{scenario.dag_id}/dagRuns/{urllib.parse.quote(scenario.run_id, safe='')}"
        )
        with contextlib.suppress(Exception):
            seconds = (parse_time(run["end_date"]) - parse_time(run["start_date"])).total_seconds()
            print(f"\n{name}: {state}, the run took {seconds:.1f}s", file=sys.stderr)
        return scenario, state

    def xcom(self, scenario: Scenario, task_id: str, key: str = "return_value") -> Any:
        path = (
            f"/api/v2/dags/{scenario.dag_id}/dagRuns/{urllib.parse.quote(scenario.run_id, safe='')}"
            f"/taskInstances/{task_id}/xcomEntries/{key}"
        )
        value = self.stack.api("GET", path)["value"]
        return json.loads(value) if isinstance(value, str) else value

    def diagnostics(self, scenario: Scenario) -> str:
        return self.stack.diagnostics(scenario.dag_id, scenario.run_id)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def all_image_set_ids(emulator: EmulatorHandle, datastore_id: str) -> set[str]:
    """Every image set of the data store, by SearchImageSets (primary and non-primary)."""
    paginator = emulator.client().get_paginator("search_image_sets")
    return {
        summary["imageSetId"]
        for page in paginator.paginate(datastoreId=datastore_id)
        for summary in page["imageSetsMetadataSummaries"]
    }


def source_of(emulator: EmulatorHandle, datastore_id: str, series_uid: str) -> str:
    response = emulator.client().search_image_sets(
        datastoreId=datastore_id,
        searchCriteria={"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series_uid}]}]},
    )
    (summary,) = response["imageSetsMetadataSummaries"]
    return summary["imageSetId"]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("healthimaging-stack")
    dags = root / "dags"
    dags.mkdir()
    (dags / "healthimaging_stack_dags.py").write_text(textwrap.dedent(DAG_FILE))

    servers = []
    scenarios: dict[str, Scenario] = {}
    env: dict[str, str] = {}
    try:
        for name, seconds in COPY_SECONDS.items():
            timing = Timing(**{**FAST_TIMING, "copy_fixed_seconds": seconds, "copy_per_instance_seconds": 0.0})
            server = start_emulator(realism=Realism(profile="fast", timing=timing))
            servers.append(server)
            emulator = EmulatorHandle(server)
            datastore_id = emulator.seed("sample")["datastoreId"]
            scenarios[name] = Scenario(
                name=name,
                emulator=emulator,
                datastore_id=datastore_id,
                source_image_set_id=source_of(emulator, datastore_id, SOURCE_SERIES_UID),
                before=all_image_set_ids(emulator, datastore_id),
            )
            env.update(aws_connection_env(emulator.url, conn_ids=(f"hi_{name}",)))
        # Exactly the next CopyImageSet of that emulator takes effect and its response is lost.
        scenarios["lost_response"].emulator.configure(script={"CopyImageSet": ["lost_response"]})

        with AirflowStack(root / "home", dags, PLUGINS_FOLDER, env=env) as stack:
            for scenario in scenarios.values():
                scenario.emulator.admin("DELETE", "counters")
                scenario.run_id = stack.trigger(
                    scenario.dag_id,
                    conf={"datastore_id": scenario.datastore_id, "source_image_set_id": scenario.source_image_set_id},
                )
            yield Deployment(stack, scenarios)
        print(f"\nAirflowStack timings { ({k: round(v, 1) for k, v in stack.timings.items()}) }", file=sys.stderr)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
    problems = [p for server in servers for p in server.response_problems]
    assert not problems, "emulator responses broke the service model:\n" + "\n".join(problems)


def copy_calls(scenario: Scenario) -> dict[str, Any]:
    return scenario.emulator.counters().get("CopyImageSet", {})


def test_deferrable_copy_and_sensor_wait_in_the_triggerer(deployment: Deployment):
    scenario, state = deployment.finish("deferral")
    stack, dag_id, run_id = deployment.stack, scenario.dag_id, scenario.run_id
    assert state == "success", deployment.diagnostics(scenario)
    assert stack.task_instance_states(dag_id, run_id) == {
        "copy": "success",
        "merge_into_copy": "success",
        "wait_for_destination": "success",
    }

    for task_id in ("copy", "wait_for_destination"):
        events = [e["event"] for e in stack.task_events(dag_id, run_id, task_id)]
        assert stack.was_deferred(dag_id, run_id, task_id), (task_id, events)
        assert stack.resumed_after_deferral(dag_id, run_id, task_id), (task_id, events)
        # Only a triggerer process writes the trigger log: the triggerer ran the trigger to its event.
        assert stack.trigger_fired(dag_id, run_id, task_id), (
            task_id,
            stack.trigger_log_events(dag_id, run_id, task_id),
        )
    assert not stack.was_deferred(dag_id, run_id, "merge_into_copy")
    tis = {ti["task_id"]: ti for ti in stack.task_instances(dag_id, run_id)}
    gap = parse_time(tis["wait_for_destination"]["start_date"]) - parse_time(tis["merge_into_copy"]["end_date"])
    print(
        f"\nthe sensor started {gap.total_seconds():.1f}s after the merge was accepted "
        f"(the merge copy lasts {COPY_SECONDS['deferral']}s)",
        file=sys.stderr,
    )

    result = deployment.xcom(scenario, "copy")
    (new,) = scenario.new_image_sets()  # exactly one new image set (the merge adds a version to it)
    assert result["destination_image_set_id"] == new
    assert result["workflow_status"] == "COPIED" and result["verified"] is True
    assert result["reconciled"] is False
    client = scenario.emulator.client()
    final = client.get_image_set(datastoreId=scenario.datastore_id, imageSetId=new)
    assert (final["versionId"], final["imageSetState"], final["imageSetWorkflowStatus"]) == ("2", "ACTIVE", "COPIED")
    calls = copy_calls(scenario)
    assert (calls["calls"], calls["succeeded"]) == (2, 2), calls  # the copy and the merge, once each


def test_killed_after_submitted_record_retry_resumes_the_same_copy(deployment: Deployment):
    scenario, state = deployment.finish("crash_submitted")
    stack, dag_id, run_id = deployment.stack, scenario.dag_id, scenario.run_id
    assert state == "success", deployment.diagnostics(scenario)
    (ti,) = stack.task_instances(dag_id, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2), ti
    events = [e["event"] for e in stack.task_events(dag_id, run_id, "copy")]
    # Seen: running, state mismatch, failed, running, success. The SIGKILLed try 1 is reported failed by
    # the executor before the retry runs.
    second_try = events.index("running", 1)
    assert "failed" in events[1:second_try] and events[-1] == "success", events

    first, second = stack.task_log(dag_id, run_id, "copy", 1), stack.task_log(dag_id, run_id, "copy", 2)
    assert "TEST CRASH" in first, first
    assert "Resuming the copy an earlier try started" in second, second
    assert "Copy accepted" not in second, second  # nothing was sent again

    (new,) = scenario.new_image_sets()
    result = deployment.xcom(scenario, "copy")
    assert result["destination_image_set_id"] == new
    assert result["workflow_status"] == "COPIED" and result["verified"] is True
    calls = copy_calls(scenario)
    assert (calls["calls"], calls["succeeded"]) == (1, 1), calls


def test_killed_between_send_and_record_retry_reconciles(deployment: Deployment):
    scenario, state = deployment.finish("crash_submitting")
    stack, dag_id, run_id = deployment.stack, scenario.dag_id, scenario.run_id
    assert state == "success", deployment.diagnostics(scenario)
    (ti,) = stack.task_instances(dag_id, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 2), ti

    first, second = stack.task_log(dag_id, run_id, "copy", 1), stack.task_log(dag_id, run_id, "copy", 2)
    assert "TEST CRASH" in first and "before the 'submitted' record" in first, first
    assert "An earlier try stopped while sending CopyImageSet" in second, second
    assert "No copy took effect" not in second, second
    assert "Copy accepted" not in second, second

    (new,) = scenario.new_image_sets()
    result = deployment.xcom(scenario, "copy")
    assert result["destination_image_set_id"] == new
    assert result["reconciled"] is True
    assert result["workflow_status"] == "COPIED" and result["verified"] is True
    calls = copy_calls(scenario)
    assert (calls["calls"], calls["succeeded"]) == (1, 1), calls  # the retry sent nothing


def test_lost_response_is_reconciled_under_the_stack(deployment: Deployment):
    scenario, state = deployment.finish("lost_response")
    stack, dag_id, run_id = deployment.stack, scenario.dag_id, scenario.run_id
    assert state == "success", deployment.diagnostics(scenario)
    (ti,) = stack.task_instances(dag_id, run_id)
    assert (ti["state"], ti["try_number"]) == ("success", 1), ti
    assert stack.resumed_after_deferral(dag_id, run_id, "copy")

    calls = copy_calls(scenario)
    assert calls["calls"] == 1 and calls["faults"] == {"lost_response": 1}, calls  # the fault was served, once
    (new,) = scenario.new_image_sets()
    result = deployment.xcom(scenario, "copy")
    assert result["destination_image_set_id"] == new
    assert result["reconciled"] is True
    assert result["workflow_status"] == "COPIED" and result["verified"] is True


def test_the_deployment_loads_the_plugin_without_import_errors(deployment: Deployment):
    """Airflow executes every .py under plugins/ as a top-level module looking for AirflowPlugins;
    the ``healthimaging`` package must be left out of that (plugins/.airflowignore), else each of its
    modules runs a second time as ``operators``, ``hooks``, ``rate_limit``... with its side effects."""
    stack = deployment.stack
    errors = stack.api("GET", "/api/v2/plugins/importErrors")["import_errors"]
    assert errors == [], json.dumps(errors, indent=1)[:3000]
    plugins = {p["name"]: p for p in stack.api("GET", "/api/v2/plugins")["plugins"]}
    assert "healthimaging" in plugins, sorted(plugins)
    assert any(
        "HealthImaging" in str(link)
        for link in plugins["healthimaging"]["global_operator_extra_links"]
        + plugins["healthimaging"]["operator_extra_links"]
    ), plugins["healthimaging"]
