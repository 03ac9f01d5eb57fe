"""The tests' view of a running :class:`stack.process_stack.ProcessStack`: REST and diagnostic helpers, and
:class:`AirflowStack`, the LocalExecutor stack for end-to-end tests.

The process machinery (process groups with log files, health waiting, stopping every descendant, the
temporary PostgreSQL databases) is ``stack/``'s alone; this module only adds what tests ask a deployment:

- :class:`StackClient`: the REST API (``api``, ``trigger``, ``wait_for_run``, ``task_instances``,
  ``task_events``, ``was_deferred``, ``resumed_after_deferral``, ``trigger_fired``, ``task_log``...) and
  ``diagnostics(dag_id, run_id)`` (task states, audit events, every process's log tail) for assertion
  messages. Set ``auth_token`` (``stack.token()``) to call the API as the login airflow-init wrote.
- :class:`AirflowStack`: ``ProcessStack(executor="LocalExecutor")`` (no workers, no Redis, no emulator) on a
  DAG folder of the test's, from ``.env.example``, with :data:`FAST` and the test's ``env`` on top, logged in::

    with AirflowStack(tmp_path / "home", dags_folder, plugins_folder, env=aws_connection_env(url)) as stack:
        run_id = stack.trigger("my_dag", conf={...})
        assert stack.wait_for_run("my_dag", run_id, timeout=90) == "success", stack.diagnostics("my_dag", run_id)
        assert stack.was_deferred("my_dag", run_id, "wait")

The shell's Airflow settings (the pytest session's among them) reach neither the compose interpolation nor the
processes, as with compose; ``env`` is how a test adds connections (``AIRFLOW_CONN_*``) or settings.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stack.compose import ENV_EXAMPLE
from stack.process_stack import ProcessStack
from tests.airflow_env import PLUGINS_FOLDER

TERMINAL_RUN_STATES = {"success", "failed"}

#: Test speed-ups on top of the compose configuration (quicker heartbeats and parsing), nothing else.
FAST = {
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
}


def shell_environ() -> dict[str, str]:
    """This process's environment without Airflow's variables: what a stack interpolates compose with."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}


class StackClient:
    """The REST API and diagnostics of a running :class:`ProcessStack`, for tests.

    :param auth_token: a JWT (``stack.token()``) sent as ``Authorization: Bearer``; None sends no header.
    """

    def __init__(self, stack: ProcessStack, auth_token: str | None = None) -> None:
        self.stack = stack
        self.auth_token = auth_token

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def home(self) -> Path:
        return self.stack.home

    def check_alive(self) -> None:
        self.stack.check_alive()

    # ------------------------------------------------------------------------------- REST API

    def api(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        timeout: float = 30,
    ) -> Any:
        """Call the api-server; returns the decoded JSON. Raises urllib.error.HTTPError on 4xx/5xx."""
        url = self.api_url + path
        if params:
            url += "?" + urllib.parse.urlencode(
                [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
            )
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.auth_token:
            request.add_header("Authorization", f"Bearer {self.auth_token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def import_errors(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/v2/importErrors", params={"limit": 100})["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; raise early on an import error."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                return self.api("GET", f"/api/v2/dags/{dag_id}")
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            errors = self.import_errors()
            if errors:
                raise RuntimeError(f"DAG import errors while waiting for {dag_id}: {json.dumps(errors, indent=1)}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"DAG {dag_id} not parsed within {timeout}s\n" + self.stack.log_tail("airflow-dag-processor")
                )
            time.sleep(0.5)

    def trigger(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        wait_for_dag_timeout: float = 60.0,
    ) -> str:
        """Trigger a manual run (REST API) once the DAG is parsed and unpaused; returns the run id."""
        dag = self.wait_for_dag(dag_id, timeout=wait_for_dag_timeout)
        if dag.get("is_paused"):
            self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 90.0, poll: float = 0.5) -> str:
        """Wait for the run to finish; returns its final state (``success`` / ``failed``).

        Raises TimeoutError (with task states and log tails) if it is still going after ``timeout``,
        and RuntimeError if a component died meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL_RUN_STATES:
                return state
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"run {dag_id}/{run_id} still {state} after {timeout}s\n" + self.diagnostics(dag_id, run_id)
                )
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        result: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", path, params={"limit": 100, "offset": len(result)})
            result += page["task_instances"]
            if not page["task_instances"] or len(result) >= page["total_entries"]:
                return result

    def task_instance_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id: state}``; mapped task instances appear as ``"task_id[map_index]"``."""
        return {
            ti["task_id"] if ti["map_index"] == -1 else f"{ti['task_id']}[{ti['map_index']}]": ti["state"]
            for ti in self.task_instances(dag_id, run_id)
        }

    def task_events(
        self, dag_id: str, run_id: str, task_id: str | None = None, map_index: int | None = None
    ) -> list[dict[str, Any]]:
        """The audit log (metadata table ``log``) of a run, oldest first.

        The execution API writes one row per task-instance state change it handles: ``running`` on
        every start (including each resume after a deferral), ``deferred`` when the task hands off to
        a trigger, then ``success`` / ``failed`` / ``up_for_retry``...
        """
        params: dict[str, Any] = {"dag_id": dag_id, "run_id": run_id, "limit": 100}
        if task_id is not None:
            params["task_id"] = task_id
        if map_index is not None:
            params["map_index"] = map_index
        events: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", "/api/v2/eventLogs", params={**params, "offset": len(events)})
            events += page["event_logs"]
            if not page["event_logs"] or len(events) >= page["total_entries"]:
                break
        return sorted(events, key=lambda e: e["event_log_id"])

    def was_deferred(self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> bool:
        """Did the task instance ever go DEFERRED? (an audit-log ``deferred`` row, see task_events)."""
        return any(e["event"] == "deferred" for e in self.task_events(dag_id, run_id, task_id, map_index))

    def resumed_after_deferral(self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None) -> bool:
        """Did the task instance defer and then run again on a worker (``deferred`` then ``running``)?

        In a real deployment only the triggerer fires triggers, so a resume proves the triggerer
        ran the trigger and handed the task back to the scheduler.
        """
        events = [e["event"] for e in self.task_events(dag_id, run_id, task_id, map_index)]
        return "deferred" in events and "running" in events[events.index("deferred") + 1 :]

    def trigger_log_events(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        """What the triggerer logged for a task's triggers, oldest first.

        The triggerer writes a trigger's log next to the task's log, as
        ``<task log>.trigger.<triggerer job id>.log`` (JSON lines): ``trigger ... starting``, the
        trigger's own messages, ``Trigger fired event``, ``trigger completed``. The file exists only
        if a triggerer process ran the trigger.
        """
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        events: list[dict[str, Any]] = []
        for path in sorted(folder.glob("**/*.log.trigger.*.log")):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    events.append({**json.loads(line), "_file": path.name})
        return sorted(events, key=lambda e: e.get("timestamp", ""))

    def trigger_fired(self, dag_id: str, run_id: str, task_id: str) -> bool:
        """Did a triggerer process run a trigger of this task to an event?"""
        return any(e.get("event") == "Trigger fired event" for e in self.trigger_log_events(dag_id, run_id, task_id))

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1) -> str:
        """The task's log as the UI shows it (worker and triggerer parts), as text."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/logs/{try_number}"
        )
        result = self.api("GET", path, params={"full_content": "true", "map_index": map_index})
        content = result.get("content") if isinstance(result, dict) else result
        if isinstance(content, list):
            return "\n".join(
                line.get("event", json.dumps(line)) if isinstance(line, dict) else str(line) for line in content
            )
        return str(content)

    # ---------------------------------------------------------------------------- diagnostics

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None, lines: int = 30) -> str:
        """Task states, audit events and the tail of every process's log, for assertion messages."""
        parts = []
        if dag_id and run_id:
            with contextlib.suppress(Exception):
                parts.append(f"task states: {self.task_instance_states(dag_id, run_id)}")
            with contextlib.suppress(Exception):
                parts.append(
                    "events: " + ", ".join(f"{e['task_id']}:{e['event']}" for e in self.task_events(dag_id, run_id))
                )
        parts.append(self.stack.diagnostics(lines=lines))
        return "\n".join(parts)


class AirflowStack(StackClient):
    """Scheduler (LocalExecutor), dag-processor, triggerer and api-server of the compose configuration, as
    processes on a fresh PostgreSQL database: ``ProcessStack(executor="LocalExecutor")``, logged in once up.

    :param home: AIRFLOW_HOME of the deployment (created); process logs go to ``home/process-logs``.
    :param dags_folder: the DAGs to deploy.
    :param plugins_folder: the plugins folder (operators, hooks, triggers); default the repository's, which
        airflow-init needs too (the ledger is ``healthimaging.bulk.ledger``), as compose's ``./plugins`` mount.
    :param env: extra environment variables for every component (connections, config overrides).
    :param parallelism: ``[core] parallelism`` (the LocalExecutor's task slots).
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        dags_folder: str | os.PathLike[str],
        plugins_folder: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        parallelism: int = 8,
        startup_timeout: float = 180.0,
        stop_timeout: float = 15.0,
    ) -> None:
        plugins = Path(plugins_folder) if plugins_folder else PLUGINS_FOLDER
        overrides = {**FAST, "AIRFLOW__CORE__PARALLELISM": str(parallelism), **(env or {})}
        super().__init__(
            ProcessStack(
                home,
                executor="LocalExecutor",
                emulator=False,
                dags_folder=dags_folder,
                plugins_folder=plugins,
                env_file=ENV_EXAMPLE,
                environ=shell_environ(),
                overrides=overrides,
                startup_timeout=startup_timeout,
                stop_timeout=stop_timeout,
            )
        )

    @property
    def timings(self) -> dict[str, float]:
        return self.stack.timings

    def __enter__(self) -> AirflowStack:
        self.stack.__enter__()
        try:
            self.auth_token = self.stack.token()
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.stop()


# ------------------------------------------------------------------ the stack's emulator, for tests


def emulator_client(url: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(inject_host_prefix=False, retries={"mode": "standard"}),
    )


def image_sets_by_series(client, datastore_id: str) -> dict[str, set[str]]:
    """Every image set of the data store (SearchImageSets), by series instance UID."""
    series: dict[str, set[str]] = collections.defaultdict(set)
    for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id):
        for summary in page["imageSetsMetadataSummaries"]:
            series[summary["DICOMTags"]["DICOMSeriesInstanceUID"]].add(summary["imageSetId"])
    return series


def admin(stack: ProcessStack, method: str, path: str, body: dict | None = None) -> dict:
    """The emulator's admin API with the stack's token (``ProcessStack.emulator_admin``)."""
    return stack.emulator_admin(method, path, body) or {}
