"""The repo's dags/ folder parses cleanly, and parsing does no work: no AWS client, no network, no
metadata database (top-level DAG code runs at every parse of the dag-processor).

The no-work check parses in a fresh interpreter, so that the DAG files *and* the ``healthimaging``
package they import are imported for the first time under the guards: botocore/boto3/aiobotocore
client creation raises, IPv4/IPv6 ``connect`` and name resolution raise (and every attempt is
recorded, in case a DAG file swallows the error), the AWS connections point at a port nothing
listens on (no emulator runs), and the metadata database is an SQLite file that must not come
into existence. Parse time is reported, never asserted: a wall-clock bound would only measure the
machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stack.processes import free_port
from tests.airflow_env import _SENTINEL, DAGS_FOLDER, PLUGINS_FOLDER, REPO_ROOT, aws_connection_env

PARSE_SCRIPT = r"""
import json
import socket
import sys
import time

attempts = []


def _record(what):
    attempts.append(what)


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"socket.connect {address!r}")
        raise OSError("network access during DAG parsing")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(f"socket.connect_ex {address!r}")
        raise OSError("network access during DAG parsing")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    _record(f"socket.getaddrinfo {host!r}")
    raise socket.gaierror("name resolution during DAG parsing")


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


def no_client(name):
    def create(self, *args, **kwargs):
        _record(f"{name}({args[:1]!r})")
        raise RuntimeError(f"{name} called during DAG parsing")
    return create


import boto3.session
import botocore.session

botocore.session.Session.create_client = no_client("botocore Session.create_client")
boto3.session.Session.client = no_client("boto3 Session.client")
boto3.session.Session.resource = no_client("boto3 Session.resource")
try:
    import aiobotocore.session
except ImportError:
    pass
else:
    aiobotocore.session.AioSession.create_client = no_client("aiobotocore AioSession.create_client")

from airflow.dag_processing.dagbag import DagBag

started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parse_seconds = time.perf_counter() - started
print("PARSE-RESULT " + json.dumps({
    "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    "dags": {dag_id: {"tags": sorted(dag.tags or []), "fileloc": dag.fileloc} for dag_id, dag in bag.dags.items()},
    "attempts": attempts,
    "parse_seconds": parse_seconds,
    "stats": [
        {"file": str(s.file), "dags": s.dag_num, "seconds": s.duration.total_seconds()} for s in bag.dagbag_stats
    ],
}))
"""


def dag_files() -> list[Path]:
    return sorted(p for p in DAGS_FOLDER.rglob("*.py") if not p.name.startswith("_"))


def test_dags_folder_has_dag_files():
    assert dag_files(), f"no DAG files under {DAGS_FOLDER}"


def parse_in_fresh_interpreter(folder: Path, tmp_path: Path) -> tuple[dict, Path]:
    """Parse ``folder`` with a DagBag in a new interpreter under the guards; returns its report and
    the SQLite file that must not come into existence."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    database = tmp_path / "must-not-exist" / "airflow.db"
    env = {k: v for k, v in os.environ.items() if k != _SENTINEL and not k.startswith("AIRFLOW_CONN_")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS_FOLDER)]),
        }
    )
    # Connections to an emulator that is not running: a DAG file that called AWS would fail or hang.
    env.update(aws_connection_env(f"http://127.0.0.1:{free_port()}"))
    result = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(folder)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("PARSE-RESULT ")]
    assert result.returncode == 0 and lines, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return json.loads(lines[-1].removeprefix("PARSE-RESULT ")), database


def test_dags_parse_without_aws_network_or_database(tmp_path):
    report, database = parse_in_fresh_interpreter(DAGS_FOLDER, tmp_path)

    assert report["import_errors"] == {}, json.dumps(report["import_errors"], indent=1)
    assert report["attempts"] == [], f"work at DAG import time: {report['attempts']}"
    assert not database.exists() and not database.parent.exists(), "parsing touched the metadata database"

    parsed_files = {Path(s["file"]).name for s in report["stats"]}
    assert {p.name for p in dag_files()} <= parsed_files, (parsed_files, dag_files())
    assert report["dags"], "no DAGs found"
    untagged = sorted(dag_id for dag_id, dag in report["dags"].items() if not dag["tags"])
    assert untagged == [], f"DAGs without tags: {untagged}"
    assert "example_healthimaging_copy" in report["dags"]
    # Reported, not asserted.
    print(
        f"\nparsed {len(report['dags'])} DAGs in {report['parse_seconds']:.2f}s: "
        + ", ".join(f"{Path(s['file']).name} {s['seconds']:.2f}s" for s in report["stats"]),
        file=sys.stderr,
    )


def test_dags_import_in_process_with_tags_and_params(airflow_home):
    """The same folder through this process's DagBag (Airflow already imported): structure checks."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}
    assert bag.dags
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.fileloc and Path(dag.fileloc).is_relative_to(DAGS_FOLDER), (dag_id, dag.fileloc)
        assert dag.task_dict, f"{dag_id} has no tasks"


def test_the_guards_catch_work_at_import_time(tmp_path):
    """Negative control: a DAG file that creates a boto3 client and opens a socket at import time,
    swallowing both errors, is caught by the recorded attempts."""
    folder = tmp_path / "bad-dags"
    folder.mkdir()
    (folder / "bad.py").write_text(
        "import contextlib, socket\n"
        "import boto3\n"
        "from datetime import datetime\n"
        "from airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "with contextlib.suppress(Exception):\n"
        "    boto3.client('medical-imaging', region_name='us-east-1')\n"
        "with contextlib.suppress(Exception):\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "with DAG(dag_id='bad', schedule=None, start_date=datetime(2024, 1, 1), tags=['x']):\n"
        "    EmptyOperator(task_id='t')\n"
    )
    report, _database = parse_in_fresh_interpreter(folder, tmp_path)
    assert report["import_errors"] == {}
    assert list(report["dags"]) == ["bad"]
    # boto3.client() goes through boto3's default Session.client, guarded before it reaches botocore's create_client.
    assert "boto3 Session.client(('medical-imaging',))" in report["attempts"], report["attempts"]
    assert any(a.startswith("socket.") for a in report["attempts"]), report["attempts"]


def test_the_public_import_paths_of_the_airflow_pieces_still_work():
    """DAGs in the field import from the packages; the classes live in their ``medical_imaging`` modules."""
    import importlib

    for package, names in {
        "hooks": ["HealthImagingHook", "NO_RETRIES"],
        "links": ["HealthImagingImageSetLink"],
        "operators": ["HealthImagingCopyImageSetOperator", "HealthImagingBulkCopyBatchOperator", "COPY_STATE_KEY"],
        "sensors": ["HealthImagingImageSetSensor"],
        "triggers": ["HealthImagingImageSetTrigger", "HealthImagingBulkCopyTrigger"],
    }.items():
        public = importlib.import_module(f"healthimaging.{package}")
        module = importlib.import_module(f"healthimaging.{package}.medical_imaging")
        for name in names:
            assert getattr(public, name) is getattr(module, name), (package, name)
