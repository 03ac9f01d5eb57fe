"""Proves the Airflow test harness: session config, airflow_db + dag.test(), the aws connection to
the emulator, and a real scheduler/triggerer deployment (AirflowStack: the process stack with the
LocalExecutor) running a deferrable sensor."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.airflow_env import DAGS_FOLDER, PLUGINS_FOLDER
from tests.airflow_stack import AirflowStack

# A deferrable sensor from the standard provider: DateTimeSensorAsync always defers (even when the
# target time has passed) and resumes on a worker in execute_complete; then an ordinary task runs.
DAG_TEMPLATE = """
from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
from airflow.sdk import DAG, task

with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    wait = DateTimeSensorAsync(
        task_id="wait",
        target_time="{{{{ (macros.datetime.utcnow() + macros.timedelta(seconds={seconds})).isoformat() }}}}",
    )

    @task
    def after_wait(**context):
        return "resumed"

    wait >> after_wait()
"""


def write_dag(folder: Path, dag_id: str, seconds: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dag_id}.py"
    path.write_text(textwrap.dedent(DAG_TEMPLATE.format(dag_id=dag_id, seconds=seconds)))
    return path


def test_session_airflow_config_is_isolated(airflow_home):
    assert Path(os.environ["AIRFLOW_HOME"]) == airflow_home
    assert airflow_home != Path.home() / "airflow"
    assert os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    from airflow.configuration import conf

    assert Path(conf.get("core", "dags_folder")) == DAGS_FOLDER
    assert Path(conf.get("core", "plugins_folder")) == PLUGINS_FOLDER
    assert conf.get("database", "sql_alchemy_conn").startswith(f"sqlite:///{airflow_home}")
    assert not conf.getboolean("core", "load_examples")


def test_repo_dags_folder_parses_without_a_database(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}


def test_aws_base_hook_reaches_the_emulator(emulator_connection, healthimaging_client):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    created = healthimaging_client.create_datastore(datastoreName="harness")["datastoreId"]
    for conn_id in ("aws_default", "healthimaging_emulator"):
        hook = AwsBaseHook(aws_conn_id=conn_id, client_type="medical-imaging")
        assert hook.conn.meta.endpoint_url == emulator_connection.url
        assert hook.conn.meta.region_name == "us-east-1"
        stores = hook.conn.list_datastores()["datastoreSummaries"]
        assert created in {s["datastoreId"] for s in stores}


def test_aws_connection_is_undone_after_the_test():
    assert "AIRFLOW_CONN_AWS_DEFAULT" not in os.environ
    assert "AIRFLOW_CONN_HEALTHIMAGING_EMULATOR" not in os.environ


def test_dag_test_runs_a_deferrable_sensor_in_process(airflow_db, dag_bundle, tmp_path):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    write_dag(tmp_path / "dags", "harness_dag_test", seconds=1)
    dag_bundle(tmp_path / "dags")
    bag = DagBag(dag_folder=str(tmp_path / "dags"))
    assert bag.import_errors == {}
    dag = bag.get_dag("harness_dag_test")

    dag_run = dag.test()

    assert dag_run.state == "success"
    with create_session() as session:
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances(session=session)}
        events = [
            (row.task_id, row.event)
            for row in session.query(Log)
            .filter(Log.dag_id == dag.dag_id, Log.run_id == dag_run.run_id)
            .order_by(Log.id)
        ]
    assert states == {"wait": "success", "after_wait": "success"}
    # dag.test() runs the trigger in-process; the deferral still goes through the execution API.
    assert ("wait", "deferred") in events, events


@pytest.mark.slow
def test_airflow_stack_runs_a_deferrable_sensor_through_the_triggerer(tmp_path):
    dags = tmp_path / "dags"
    write_dag(dags, "harness_stack", seconds=3)
    started = time.monotonic()
    with AirflowStack(tmp_path / "home", dags) as stack:
        t0 = time.monotonic()
        run_id = stack.trigger("harness_stack", conf={"note": "smoke"})
        state = stack.wait_for_run("harness_stack", run_id, timeout=90)
        run_seconds = time.monotonic() - t0
        assert state == "success", stack.diagnostics("harness_stack", run_id)
        assert stack.task_instance_states("harness_stack", run_id) == {"wait": "success", "after_wait": "success"}
        events = [e["event"] for e in stack.task_events("harness_stack", run_id, "wait")]
        assert stack.was_deferred("harness_stack", run_id, "wait"), events
        assert stack.resumed_after_deferral("harness_stack", run_id, "wait"), events
        assert events == ["running", "deferred", "running", "success"], events
        assert not stack.was_deferred("harness_stack", run_id, "after_wait")
        # The triggerer (not the worker) ran the trigger to its event.
        assert stack.trigger_fired("harness_stack", run_id, "wait")
    timings = {k: round(v, 1) for k, v in stack.timings.items()}
    print(f"\nAirflowStack {timings}, run {run_seconds:.1f}s, total {time.monotonic() - started:.1f}s", file=sys.stderr)
