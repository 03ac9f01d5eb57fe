"""Helpers shared by the bulk-copy tests (test_bulk_copy_dag, test_bulk_settings, test_exactly_once).

- :func:`load_dag` and the ``bulk_dag`` fixture: the repository's bulk-copy DAG, parsed anew for each test.
- The ``ledger`` fixture (a SQLite ledger in tmp_path) and the ``bulk_logs`` fixture (what the
  healthimaging package logs).
- Emulator reads through boto3 (:func:`seed`, :func:`image_set_ids`, :func:`document`,
  :func:`series_copies`, :func:`copy_calls`) and :func:`run_dag`, a ``dag.test()`` run with its task
  states, log events, report folder and ledger rows.

Its fixtures reach every test module through ``pytest_plugins`` in conftest.py; the rest is imported by name.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from healthimaging.bulk.ledger import Ledger, engine_for
from healthimaging.bulk.manifest import template
from healthimaging.bulk.run import report_folder
from tests.airflow_env import DAGS_FOLDER

BULK_DAG_ID = "healthimaging_bulk_copy"
SCHEDULED_DAG_ID = "healthimaging_scheduled_copy"
#: Settings that make a run take seconds: a high rate limit, a short poll interval.
FAST = {"copies_per_second": 50, "burst": 10, "poll_interval_seconds": 0.2, "progress_interval_seconds": 1}


def load_dag(dag_id: str):
    """The repository's DAG ``dag_id``, parsed from dags/ (a new object each call)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER / f"{dag_id}.py"))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.get_dag(dag_id)
    # A failed batch is retried at once here (the DAG's retry delay is Airflow's default, 5 minutes).
    dag.task_dict["copy_batch"].retry_delay = timedelta(0)
    return dag


@pytest.fixture
def bulk_dag(airflow_db):
    # A fresh DAG object per test: dag.test() runs tasks in this process, and a run's conf would otherwise stay
    # in the params of the next run of the same object (a worker parses the DAG anew for each task).
    return load_dag(BULK_DAG_ID)


@pytest.fixture
def ledger(tmp_path, monkeypatch) -> Ledger:
    """A ledger of this test's own: the connection healthimaging_ledger points at a SQLite file in tmp_path."""
    path = tmp_path / "ledger.sqlite3"
    monkeypatch.setenv("AIRFLOW_CONN_HEALTHIMAGING_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return Ledger(engine_for(f"sqlite:///{path}"))


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def states(self, run_id: str) -> list[dict[str, Any]]:
        """The JSON state-change lines of a run."""
        lines = [json.loads(m) for m in self.messages if m.startswith("{")]
        return [line for line in lines if line.get("run_id") == run_id]


@pytest.fixture
def bulk_logs():
    """What the healthimaging package logs (state changes, progress, retries)."""
    handler = Messages()
    logger = logging.getLogger("healthimaging")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def seed(emulator, count: int) -> tuple[str, list[str]]:
    """A synthetic data store of ``count`` image sets: (data store id, image set ids sorted)."""
    datastore_id = emulator.seed(f"synthetic:{count}")["datastoreId"]
    return datastore_id, sorted(image_set_ids(emulator.client(), datastore_id))


def image_set_ids(client, datastore_id: str) -> set[str]:
    pages = client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id)
    return {summary["imageSetId"] for page in pages for summary in page["imageSetsMetadataSummaries"]}


def document(client, datastore_id: str, image_set_id: str) -> dict[str, Any]:
    answer = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    blob = answer["imageSetMetadataBlob"].read()
    return json.loads(gzip.decompress(blob))


def series_copies(client, datastore_id: str, image_set_id: str) -> set[str]:
    """The image sets holding the series of ``image_set_id`` (itself included)."""
    series_uid = next(iter(document(client, datastore_id, image_set_id)["Study"]["Series"]))
    criteria = {"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series_uid}]}]}
    return {
        s["imageSetId"]
        for s in client.search_image_sets(datastoreId=datastore_id, searchCriteria=criteria)[
            "imageSetsMetadataSummaries"
        ]
    }


def copy_calls(emulator) -> dict[str, Any]:
    """The emulator's CopyImageSet counters (all zero before the first call)."""
    none_yet = {"calls": 0, "succeeded": 0, "throttled": 0, "faults": {}, "errors": {}}
    return emulator.counters().get("CopyImageSet", none_yet)


@dataclass
class Run:
    dag_run: Any
    run_id: str
    state: str
    tis: dict[tuple[str, int], tuple[str, int]]
    events: list[tuple[str, int, str]]
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.folder / "report.json").read_text())

    def csv(self, name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO((self.folder / name).read_text())))

    def row(self, number: int) -> dict[str, Any]:
        return next(r for r in self.rows if r["row_number"] == number)

    def ti_state(self, task_id: str, map_index: int = -1) -> str:
        return self.tis[(task_id, map_index)][0]


def run_dag(dag, conf: dict[str, Any], ledger: Ledger, *, logical_date: datetime | None = None) -> Run:
    """``dag.test(run_conf=conf)`` and what it left: task states and tries, log events, report folder, ledger rows."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    kwargs = {"logical_date": logical_date} if logical_date else {}
    dag_run = dag.test(run_conf=conf, **kwargs)
    with create_session() as session:
        tis = {
            (ti.task_id, ti.map_index): (ti.state, ti.try_number) for ti in dag_run.get_task_instances(session=session)
        }
        events = [
            (r.task_id, r.map_index, r.event)
            for r in session.query(Log).filter(Log.dag_id == dag.dag_id, Log.run_id == dag_run.run_id).order_by(Log.id)
        ]
    folder = report_folder(conf, dag.dag_id, dag_run.run_id)
    return Run(dag_run, dag_run.run_id, dag_run.state, tis, events, folder, ledger.run_rows(dag.dag_id, dag_run.run_id))


def bulk_conf(tmp_path: Path, manifest: str | Path, datastore_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "manifest": str(manifest),
        "default_datastore_id": datastore_id,
        "report_folder": str(tmp_path / "reports"),
        **FAST,
        **changes,
    }


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(template(rows))
    return path


def accounted(report: dict[str, Any]) -> None:
    """Every manifest row of a report is counted once, and the report says all rows are accounted for."""
    counts = report["counts"]
    total = counts["succeeded"] + counts["failed"] + counts["rejected"] + counts["skipped"] + counts["planned"]
    assert total == report["manifest"]["rows"] and report["allRowsAccountedFor"], report
