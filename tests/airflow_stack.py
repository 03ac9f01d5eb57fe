"""A real Airflow deployment as processes, for end-to-end tests.

``AirflowStack`` runs what production runs, each as its own process group with its own log file
under ``<home>/process-logs/``:

- ``airflow db migrate`` on a fresh metadata database: a new PostgreSQL database on
  127.0.0.1:5432 (dropped afterwards) when one is reachable, SQLite under ``home`` otherwise;
- ``airflow api-server``: the REST API (used here to trigger and inspect runs) and the task
  execution API: in Airflow 3 the LocalExecutor's task processes talk to the metadata DB only
  through ``[core] execution_api_server_url``, so without it no task can run;
- ``airflow scheduler`` with the LocalExecutor (its workers are forked by the scheduler);
- ``airflow dag-processor`` (parsing is a separate component in Airflow 3);
- ``airflow triggerer`` (deferred tasks wait there).

Startup waits on ``/api/v2/monitor/health`` until the scheduler, triggerer and dag-processor
report healthy heartbeats; teardown terminates every process group and every descendant (task
processes put themselves in their own process groups), then kills what is left, even when the test
failed. Usage::

    with AirflowStack(tmp_path / "home", dags_folder, plugins_folder, env=aws_connection_env(url)) as stack:
        run_id = stack.trigger("my_dag", conf={...})
        assert stack.wait_for_run("my_dag", run_id, timeout=90) == "success", stack.diagnostics("my_dag", run_id)
        assert stack.was_deferred("my_dag", run_id, "wait")

The REST and diagnostics helpers (``api``, ``trigger``, ``wait_for_run``, ``task_events``, ``was_deferred``,
``trigger_fired``, ...) are in ``AirflowRestClient``, which ``AirflowStack`` extends and which also serves
the CeleryExecutor stack of ``stack/process_stack.py`` (``tests/test_distributed_stack.py``); set
``auth_token`` to call the API with a user's JWT.

The stack's environment is the caller's minus every Airflow configuration variable
(``AIRFLOW__*``, ``AIRFLOW_HOME``, the pytest session's unit-test settings), plus the stack's own
settings, plus ``env`` (which wins). ``AIRFLOW_CONN_*`` / ``AIRFLOW_VAR_*`` of the caller are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stack.processes import free_port, spawn, stop_all
from tests.airflow_env import airflow_command, migrate_db

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TERMINAL_RUN_STATES = {"success", "failed"}
POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")


class _Postgres:
    """A throwaway database on the local PostgreSQL server (trust auth)."""

    def __init__(self, host: str = POSTGRES_HOST, port: int = POSTGRES_PORT, users: Iterable[str] = POSTGRES_USERS):
        self.host, self.port, self.users = host, port, tuple(users)
        self.user: str | None = None
        # The creating pid is in the name, so that databases left by a killed test run can be dropped.
        self.dbname = f"{self.PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"

    PREFIX = "airflow_stack_"

    def _connect(self, user: str):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=user, dbname="postgres", connect_timeout=3)
        conn.autocommit = True
        return conn

    def create(self) -> str:
        errors = []
        for user in self.users:
            try:
                conn = self._connect(user)
            except Exception as exc:  # psycopg2.OperationalError, ImportError
                errors.append(f"{user}: {exc}")
                continue
            try:
                with conn.cursor() as cur:  # not `with conn`: that opens a transaction
                    self._drop_orphans(cur)
                    cur.execute(f'CREATE DATABASE "{self.dbname}"')
            finally:
                conn.close()
            self.user = user
            return f"postgresql+psycopg2://{user}@{self.host}:{self.port}/{self.dbname}"
        raise ConnectionError("no usable PostgreSQL: " + "; ".join(errors))

    def _drop_orphans(self, cur) -> None:
        """Drop stack databases whose creating process is gone (a test run killed before teardown)."""
        import psutil

        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (self.PREFIX + "%",))
        for (name,) in cur.fetchall():
            pid = name[len(self.PREFIX):].split("_", 1)[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                with contextlib.suppress(Exception):
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop(self) -> None:
        if self.user is None:
            return
        conn = self._connect(self.user)
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        finally:
            conn.close()
        self.user = None


class AirflowRestClient:
    """The REST API and diagnostics of a running Airflow deployment, for tests.

    Needs ``api_url``, ``home`` (AIRFLOW_HOME: trigger logs are read under ``home/logs``), ``log_dir``
    (``<name>.log`` per component), ``component_names`` and ``check_alive()``. Set ``auth_token`` to
    call the API as a logged-in user (``Authorization: Bearer``); without it no header is sent.
    """

    auth_token: str | None = None
    component_names: tuple[str, ...] = COMPONENTS

    def check_alive(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # ------------------------------------------------------------------------------- REST API

    def api(self, method: str, path: str, payload: Any = None, *, params: Mapping[str, Any] | None = None,
            timeout: float = 30) -> Any:
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
                raise TimeoutError(f"DAG {dag_id} not parsed within {timeout}s\n" + self.log_tail("dag-processor"))
            time.sleep(0.5)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, run_id: str | None = None,
                wait_for_dag_timeout: float = 60.0) -> str:
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
                raise TimeoutError(f"run {dag_id}/{run_id} still {state} after {timeout}s\n"
                                   + self.diagnostics(dag_id, run_id))
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

    def task_events(self, dag_id: str, run_id: str, task_id: str | None = None,
                    map_index: int | None = None) -> list[dict[str, Any]]:
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
        return "deferred" in events and "running" in events[events.index("deferred") + 1:]

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
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
                f"{task_id}/logs/{try_number}")
        result = self.api("GET", path, params={"full_content": "true", "map_index": map_index})
        content = result.get("content") if isinstance(result, dict) else result
        if isinstance(content, list):
            return "\n".join(
                line.get("event", json.dumps(line)) if isinstance(line, dict) else str(line) for line in content
            )
        return str(content)

    # ---------------------------------------------------------------------------- diagnostics

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"--- {name}: no log"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name} ({path}):\n" + "\n".join(text)

    def diagnostics(self, dag_id: str | None = None, run_id: str | None = None, lines: int = 30) -> str:
        """Task states, audit events and the tail of every component's log, for assertion messages."""
        parts = []
        if dag_id and run_id:
            with contextlib.suppress(Exception):
                parts.append(f"task states: {self.task_instance_states(dag_id, run_id)}")
            with contextlib.suppress(Exception):
                parts.append("events: " + ", ".join(
                    f"{e['task_id']}:{e['event']}" for e in self.task_events(dag_id, run_id)))
        parts += [self.log_tail(name, lines) for name in self.component_names]
        return "\n".join(parts)



class StackClient(AirflowRestClient):
    """The REST helpers above, on a :class:`stack.process_stack.ProcessStack` (the compose stack as processes)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.api_url = stack.api_url
        self.home = stack.home
        self.log_dir = stack.log_dir
        self.component_names = tuple(stack.processes)

    def check_alive(self) -> None:
        self.stack.check_alive()


class AirflowStack(AirflowRestClient):
    """Run scheduler (LocalExecutor), dag-processor, triggerer and api-server against a fresh DB.

    :param home: AIRFLOW_HOME of the deployment (created); process logs go to ``home/process-logs``.
    :param dags_folder: the DAGs to deploy.
    :param plugins_folder: put on the components' ``sys.path`` by Airflow (operators, hooks, triggers).
    :param env: extra environment variables for every component (connections, config overrides).
    :param database: ``"auto"`` (PostgreSQL if reachable, else SQLite), ``"postgres"`` or ``"sqlite"``.
    :param parallelism: ``[core] parallelism`` (LocalExecutor worker slots).
    :param startup_timeout: seconds to wait for every component to report healthy.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        dags_folder: str | os.PathLike[str],
        plugins_folder: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        database: str = "auto",
        parallelism: int = 8,
        startup_timeout: float = 90.0,
        stop_timeout: float = 15.0,
    ) -> None:
        if database not in ("auto", "postgres", "sqlite"):
            raise ValueError(f"database must be auto, postgres or sqlite, not {database!r}")
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.plugins_folder = Path(plugins_folder).resolve() if plugins_folder else self.home / "plugins"
        self.extra_env = dict(env or {})
        self.database = database
        self.parallelism = parallelism
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_dir = self.home / "process-logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self._log_files: dict[str, Any] = {}
        self._postgres: _Postgres | None = None
        self.sql_alchemy_conn: str | None = None
        self.api_port: int | None = None
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def backend(self) -> str:
        return "postgres" if self._postgres is not None else "sqlite"

    def __enter__(self) -> AirflowStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.plugins_folder.mkdir(parents=True, exist_ok=True)
        self.sql_alchemy_conn = self._create_database()
        self.api_port = free_port()
        self.env = self._environment()

        t0 = time.monotonic()
        migrate_db(self.env, log_file=self.log_dir / "db-migrate.log", timeout=240)
        self.timings["db_migrate"] = time.monotonic() - t0

        for name in COMPONENTS:
            self._spawn(name)
        t0 = time.monotonic()
        self._wait_healthy()
        self.timings["components_ready"] = time.monotonic() - t0
        self.timings["start"] = time.monotonic() - started

    def _create_database(self) -> str:
        if self.database in ("auto", "postgres"):
            postgres = _Postgres()
            try:
                url = postgres.create()
            except ConnectionError:
                if self.database == "postgres":
                    raise
            else:
                self._postgres = postgres
                return url
        return f"sqlite:///{self.home / 'airflow.db'}"

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW__", "_AIRFLOW", "PYTEST_", "HEALTHIMAGING_TEST_AIRFLOW"))
            and key not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
        }
        from cryptography.fernet import Fernet

        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW_CONFIG": str(self.home / "airflow.cfg"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn or "",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
                # Every component signs or checks JWTs: they must share the secret.
                # (>= 64 characters: HS512 wants a 64-byte key.)
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API__BASE_URL": f"{self.api_url}/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                # A test deployment: every API caller is an admin, no login needed.
                "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # Free ports for the log servers (the scheduler's LocalExecutor and the triggerer).
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                # Quicker loops and heartbeats than production defaults; 2-core friendly parsing.
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__CATCHUP_BY_DEFAULT": "False",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "300",
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
                "SCARF_ANALYTICS": "false",
                "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files[name] = log
        command = [*airflow_command(), name]
        if name == "api-server":
            command += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        self.processes[name] = spawn(command, cwd=self.home, env=self.env, log=log)

    def check_alive(self) -> None:
        """Raise if a component exited, with the tail of its log."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def health(self) -> dict[str, Any] | None:
        try:
            return self.api("GET", "/api/v2/monitor/health", timeout=5)
        except (OSError, ValueError):
            return None

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        health: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.health()
            if health and all(
                (health.get(part) or {}).get("status") == "healthy"
                for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
            ):
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"Airflow did not become healthy in {self.startup_timeout}s; last health: {health}\n" + self.diagnostics()
        )

    def stop(self) -> None:
        """Terminate every component (process groups and descendants), then kill survivors; drop the DB."""
        t0 = time.monotonic()
        try:
            self._stop_processes()
            self.timings["stop_processes"] = time.monotonic() - t0
        finally:
            for log in self._log_files.values():
                log.close()
            self._log_files.clear()
            if self._postgres is not None:
                try:
                    self._postgres.drop()
                except Exception as exc:  # never hide the test's own failure
                    print(f"AirflowStack: could not drop {self._postgres.dbname}: {exc}", file=sys.stderr)

    def _stop_processes(self) -> None:
        # The scheduler first, so that it stops queueing tasks; then everything else.
        order = ["scheduler", "triggerer", "dag-processor", "api-server"]
        names = sorted(self.processes, key=lambda n: order.index(n) if n in order else len(order))
        stop_all([self.processes[name] for name in names], self.stop_timeout)
        self.processes.clear()
