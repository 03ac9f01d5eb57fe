"""An isolated Airflow configuration for the test session, and the fixtures that go with it.

Airflow reads its configuration when the ``airflow`` package is first imported
(``airflow/__init__.py`` -> ``airflow.configuration`` computes AIRFLOW_HOME and builds ``conf``;
``settings.initialize()`` creates the SQLAlchemy engine from ``sql_alchemy_conn``). Anything set
after that is ignored for the rest of the process. So :func:`configure` must run before the first
``import airflow...`` anywhere in the session, including test modules that import the plugins at
collection time. ``tests/conftest.py`` calls it at import time: pytest imports the rootdir
conftest before collecting any test module (and before ``pytest_configure``), and nothing else
loaded that early (the emulator plugin, pytest-timeout, anyio) imports Airflow.

This module itself never imports Airflow at module level, so tests that do not use Airflow pay
nothing for it (no Airflow import, no database).

Fixtures (registered by ``tests/conftest.py``):

- ``airflow_home`` (session): the session's AIRFLOW_HOME (a :class:`pathlib.Path`).
- ``airflow_db`` (session): runs ``airflow db migrate`` once on the session's SQLite database and
  returns its SQLAlchemy URL. Only tests that need a metadata DB (``dag.test()``, models) use it;
  parsing a DagBag needs none.
- ``aws_connection``: a function ``aws_connection(url, conn_ids=..., region_name=..., extra=...)``
  that points Airflow connections (by default ``aws_default`` and ``healthimaging_emulator``) at an
  emulator URL through ``AIRFLOW_CONN_<ID>`` environment variables, undone after the test.
- ``dag_bundle``: a function ``dag_bundle(folder)`` that makes a temporary DAG folder the DAG
  bundle for one test, which ``dag.test()`` needs for DAGs outside the repo's ``dags/``.
- ``emulator_connection``: a running emulator (``healthimaging_emulator``) with both connections
  pointing at it; returns the emulator handle.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags"
PLUGINS_FOLDER = REPO_ROOT / "plugins"

#: Connection ids :func:`aws_connection_env` sets by default.
DEFAULT_CONN_IDS = ("aws_default", "healthimaging_emulator")
DUMMY_ACCESS_KEY = "testing"
DUMMY_SECRET_KEY = "testing"

# "<pid>:<home>" of the process that configured the session, so that importing this module twice
# (as ``tests.airflow_env`` and ``airflow_env``) or calling configure() again is a no-op, while a
# child Python process (which inherits the environment) does not mistake it for its own setup.
_SENTINEL = "HEALTHIMAGING_TEST_AIRFLOW_SESSION"


def session_environment(home: Path) -> dict[str, str]:
    """The environment variables that make up the test session's Airflow configuration."""
    from cryptography.fernet import Fernet  # a dependency of Airflow, cheap to import

    return {
        "AIRFLOW_HOME": str(home),
        # Do not read a stray airflow.cfg from the developer's ~/airflow.
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        # Unit-test mode: Airflow loads its unit_tests.cfg instead of writing/reading airflow.cfg,
        # and operators' execute() may be called directly outside the task runner
        # (ExecutorSafeguard), which operator unit tests need. The variables below override it.
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Fixed for the session, so that the pytest process and `airflow db migrate` (and anything
        # else spawned) agree; unit-test mode would otherwise draw new ones in every process.
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        # >= 64 characters: HS512 wants a 64-byte key (PyJWT warns otherwise).
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES": "airflow.* healthimaging.* tests.*",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        "AIRFLOW__SCHEDULER__CATCHUP_BY_DEFAULT": "False",
        # No usage-data pings from test runs.
        "SCARF_ANALYTICS": "false",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    }


_home: Path | None = None


def configure() -> Path:
    """Point Airflow at a fresh AIRFLOW_HOME for this process; idempotent. Returns the home.

    Must run before Airflow is imported: warns if it is already too late.
    """
    global _home
    if _home is not None:
        return _home
    marker = os.environ.get(_SENTINEL, "")
    pid, _, existing = marker.partition(":")
    if pid == str(os.getpid()) and existing:
        _home = Path(existing)
        return _home
    if "airflow" in sys.modules:
        warnings.warn(
            "Airflow was imported before tests/airflow_env.configure() ran: it has already read its "
            "configuration, so the test AIRFLOW_HOME may be ignored",
            stacklevel=2,
        )
    home = Path(tempfile.mkdtemp(prefix="airflow-test-home-"))
    os.environ.update(session_environment(home))
    os.environ[_SENTINEL] = f"{os.getpid()}:{home}"
    _home = home
    return home


def cleanup() -> None:
    """Remove the session's AIRFLOW_HOME (set KEEP_AIRFLOW_TEST_HOME=1 to keep it)."""
    if _home is None or os.environ.get("KEEP_AIRFLOW_TEST_HOME"):
        return
    pid, _, _existing = os.environ.get(_SENTINEL, "").partition(":")
    if pid == str(os.getpid()):
        shutil.rmtree(_home, ignore_errors=True)


def airflow_command() -> list[str]:
    """How to run the ``airflow`` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("airflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "airflow"]


def migrate_db(env: dict[str, str] | None = None, *, log_file: Path | None = None, timeout: float = 300) -> None:
    """Run ``airflow db migrate`` in a subprocess; raise with its output if it fails."""
    result = subprocess.run(
        [*airflow_command(), "db", "migrate"],
        env=env if env is not None else dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    if log_file is not None:
        log_file.write_text(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {result.returncode}):\n{result.stdout[-5000:]}")


# --------------------------------------------------------------------------------------- connections


def aws_connection_uri_json(url: str, *, region_name: str = "us-east-1", extra: dict[str, Any] | None = None) -> str:
    """The JSON form of an ``aws`` connection to an emulator at ``url`` (for ``AIRFLOW_CONN_<ID>``)."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": DUMMY_ACCESS_KEY,
            "password": DUMMY_SECRET_KEY,
            "extra": {"endpoint_url": url, "region_name": region_name, **(extra or {})},
        }
    )


def conn_env_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def aws_connection_env(
    url: str,
    conn_ids: Iterable[str] = DEFAULT_CONN_IDS,
    *,
    region_name: str = "us-east-1",
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Environment variables defining ``conn_ids`` as aws connections to ``url``.

    Useful for a subprocess deployment: ``AirflowStack(..., env=aws_connection_env(url))``.
    Also disables the EC2 metadata lookup so a misconfigured test never reaches for real credentials.
    """
    value = aws_connection_uri_json(url, region_name=region_name, extra=extra)
    env = {conn_env_var(conn_id): value for conn_id in conn_ids}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return configure()


@pytest.fixture(scope="session")
def airflow_db(airflow_home: Path) -> str:
    """Migrate the session's SQLite metadata DB once (``airflow db migrate``); returns its URL."""
    migrate_db(log_file=airflow_home / "db-migrate.log")
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def dag_bundle_config(folder: str | os.PathLike[str], name: str = "test-dags") -> str:
    """``[dag_processor] dag_bundle_config_list`` with one local bundle: ``folder``."""
    return json.dumps(
        [
            {
                "name": name,
                "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(folder), "refresh_interval": 0},
            }
        ]
    )


@pytest.fixture
def dag_bundle(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``dag_bundle(folder, name="test-dags")``: make ``folder`` the only DAG bundle, for this test.

    ``dag.test()`` in Airflow 3.3 serializes a DAG by parsing the configured DAG bundles (by default
    the repo's ``dags/``), so a DAG written to a temporary folder must be in a bundle. The bundle
    list is read anew by each ``DagBundlesManager``, so an environment override applies at once.
    """

    def use(folder: str | os.PathLike[str], name: str = "test-dags") -> None:
        monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", dag_bundle_config(folder, name))

    return use


@pytest.fixture
def aws_connection(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, str]]:
    """``aws_connection(url, conn_ids=("aws_default", "healthimaging_emulator"), *, region_name, extra)``.

    Sets ``AIRFLOW_CONN_<ID>`` for each id (JSON: conn_type aws, dummy keys, extra endpoint_url and
    region_name, plus ``extra``) with monkeypatch, so it is undone after the test. Returns the
    variables it set.
    """

    def connect(
        url: str,
        conn_ids: Iterable[str] = DEFAULT_CONN_IDS,
        *,
        region_name: str = "us-east-1",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        env = aws_connection_env(url, conn_ids, region_name=region_name, extra=extra)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    return connect


@pytest.fixture
def emulator_connection(healthimaging_emulator, aws_connection) -> Iterator[Any]:
    """The running emulator, with ``aws_default`` and ``healthimaging_emulator`` pointing at it."""
    aws_connection(healthimaging_emulator.url)
    yield healthimaging_emulator
