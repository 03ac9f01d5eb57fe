"""The services of ``docker-compose.yaml`` as processes on this machine: the same stack without Docker.

:class:`ProcessStack` runs, each as its own process group with a log under ``<home>/process-logs/``:

- ``healthimaging-emulator``: the compose service's command (``python -m healthimaging_emulator ...``),
  plus any extra arguments (faults, quotas);
- ``airflow-init``: ``python -m stack.init`` (Fernet key, DB migration, ledger database, login), to
  completion: the secrets it generates are in ``<home>/config/`` (mode 0600), as in compose's ``./config``;
- ``airflow-apiserver``, ``airflow-scheduler``, ``airflow-dag-processor``, ``airflow-triggerer``:
  ``airflow <command>`` with the compose service's command;
- ``airflow-worker-1`` ... ``airflow-worker-N``: ``airflow celery worker`` (the compose command) with
  ``--celery-hostname workerN@%h``, the equivalent of ``--scale airflow-worker=N``.

PostgreSQL and Redis are the machine's (127.0.0.1:5432 with trust auth, 127.0.0.1:6379): the stack
creates a metadata database of its own (``POSTGRES_DB``), lets ``airflow-init`` create the ledger's
(``HEALTHIMAGING_LEDGER_DB``), and claims a free Redis database for the Celery broker; it drops and
flushes them when it stops. Every Airflow process gets the compose service's ``environment``
(``x-airflow-common``), interpolated from ``.env`` and the shell exactly like compose does, with only
the substitutions of :data:`stack.compose.SUBSTITUTIONS`, plus :data:`RUNNER_ONLY_VARIABLES`.

The api-server and the emulator listen on the address compose publishes their ports on
(``HEALTHIMAGING_PUBLISH_ADDRESS``, 127.0.0.1 by default), the scheduler's health server on 127.0.0.1.

Startup waits for the emulator's health, the init step, ``/api/v2/monitor/health`` (scheduler,
triggerer, dag-processor) and a Celery ping of every worker. :meth:`ProcessStack.stop` terminates every
process group and every descendant (task processes), kills what is left, and drops the databases,
also after a failure: use it as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack import compose
from stack.compose import REPO_ROOT, LocalEndpoints
from stack.processes import free_port, kill_tree, spawn, stop_all

#: What the process stack sets beyond the compose environment, and why (each is something an image or
#: a container provides in Docker). ``tests/test_docker_compose.py`` checks that nothing else differs.
RUNNER_ONLY_VARIABLES: dict[str, str] = {
    "AIRFLOW_HOME": "the image's AIRFLOW_HOME is /opt/airflow; here, the stack's home folder",
    "AIRFLOW__CORE__DAGS_FOLDER": "compose mounts ./dags at /opt/airflow/dags; here, the repository's dags/",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "compose mounts ./plugins at /opt/airflow/plugins; here, the repository's plugins/",
    "PYTHONPATH": "the image sets PYTHONPATH=/opt/airflow (stack, healthimaging_emulator); here, the repository",
    "AIRFLOW__API__HOST": "api-server: a container listens on 0.0.0.0:8080 and compose publishes it on "
                          "HEALTHIMAGING_PUBLISH_ADDRESS (127.0.0.1 by default); here, it listens on that address",
    "AIRFLOW__API__PORT": "api-server: here, a free port",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "scheduler: 0.0.0.0 in its container, not published; "
                                                              "here, 127.0.0.1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "scheduler: 8974 in its container; here, a free port",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "triggerer: 8794 in its container; here, a free port",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "each worker: 8793 in its container; here, a free port each",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "each worker: a container has its own host name; here, stack.hostname",
    "STACK_HOSTNAME": "each worker's host name (worker1, worker2, ...), read by stack.hostname",
}

#: Variables the process stack gives compose's interpolation instead of ``.env``'s (why: see each).
RUNNER_VARIABLES: dict[str, str] = {
    "POSTGRES_USER": "a role of the machine's PostgreSQL (trust auth): postgres or root",
    "POSTGRES_DB": "a fresh metadata database per stack, dropped at the end",
    "HEALTHIMAGING_LEDGER_DB": "a fresh ledger database per stack, dropped at the end",
    "AIRFLOW_JWT_SECRET": "generated when .env leaves it empty",
    "AIRFLOW_API_SECRET_KEY": "generated when .env leaves it empty",
    "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN": "generated when .env leaves it empty (ProcessStack.emulator_admin_token)",
    "AIRFLOW_WORKER_CONCURRENCY": "when given (workers' task slots)",
    "AIRFLOW_API_WORKERS": "1 by default: a small machine runs every component",
}

#: The secrets the compose file requires from .env (``${VAR:?...}``), which `make .env` and the process stack
#: generate when .env leaves them empty.
SECRETS: dict[str, str] = {
    "AIRFLOW_JWT_SECRET": "The JWT secret every component shares (at least 64 characters)",
    "AIRFLOW_API_SECRET_KEY": "The api-server's secret key",
    "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN": "The emulator's admin API token: Authorization: Bearer <token> on /_emulator/...",
}


def fresh_secrets() -> dict[str, str]:
    """New values for :data:`SECRETS`."""
    return {"AIRFLOW_JWT_SECRET": secrets.token_urlsafe(64), "AIRFLOW_API_SECRET_KEY": secrets.token_hex(16),
            "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN": secrets.token_urlsafe(32)}


POSTGRES_USERS = ("postgres", "root")
DB_PREFIX = "hi_stack_"
REDIS_OWNER_KEY = "healthimaging-stack:owner"
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"

#: Started in this order; stopped scheduler first (no new work), then workers, the rest, the emulator.
STOP_ORDER = ("airflow-scheduler", "airflow-worker", "airflow-triggerer", "airflow-dag-processor",
              "airflow-apiserver", "healthimaging-emulator")


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


@dataclass
class Process:
    """One process of the stack: the compose service it stands for, its command and environment."""

    name: str
    service: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen | None = field(default=None, repr=False)


class ProcessStack:
    """The compose stack as processes (see the module docstring).

    :param home: the stack's AIRFLOW_HOME (created); logs, config and process logs go there.
    :param workers: how many ``airflow-worker`` processes (compose: ``--scale airflow-worker=N``).
    :param worker_concurrency: task slots per worker (``AIRFLOW_WORKER_CONCURRENCY``); None: .env's.
    :param env_file: the ``.env`` to read (default ``.env``, else ``.env.example``).
    :param environ: the shell's variables for interpolation (default ``os.environ``), as compose uses them.
    :param emulator: run the ``healthimaging-emulator`` service too.
    :param emulator_args: extra arguments for the emulator (``--fault``, ``--rate``, ...).
    :param overrides: environment variables set last on every Airflow process (test speed-ups);
        not part of the compose configuration.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        workers: int = 2,
        worker_concurrency: int | None = None,
        api_workers: int = 1,
        env_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        compose_file: str | os.PathLike[str] = compose.COMPOSE_FILE,
        emulator: bool = True,
        emulator_args: Sequence[str] = (),
        overrides: Mapping[str, str] | None = None,
        postgres_host: str = "127.0.0.1",
        postgres_port: int = 5432,
        redis_host: str = "127.0.0.1",
        redis_port: int = 6379,
        startup_timeout: float = 180.0,
        stop_timeout: float = 20.0,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.home = Path(home).resolve()
        self.workers = workers
        self.worker_concurrency = worker_concurrency
        self.api_workers = api_workers
        self.env_file = Path(env_file) if env_file else compose.default_env_file()
        self.environ = dict(os.environ if environ is None else environ)
        self.compose_file = Path(compose_file)
        self.compose = compose.load_compose(self.compose_file)
        self.emulator = emulator
        self.emulator_args = list(emulator_args)
        self.overrides = dict(overrides or {})
        self.postgres_host, self.postgres_port = postgres_host, postgres_port
        self.redis_host, self.redis_port = redis_host, redis_port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_dir = self.home / "process-logs"
        self.processes: dict[str, Process] = {}
        self.variables: dict[str, str] = {}
        self.local: LocalEndpoints | None = None
        self.timings: dict[str, float] = {}
        self._databases: list[str] = []
        self._postgres_user: str | None = None
        self._redis_db: int | None = None
        self._log_files: list[Any] = []
        self._dead: list[subprocess.Popen] = []  # killed or restarted: reaped, never restarted by stop()
        self._stopped = False

    # --------------------------------------------------------------------------- configuration

    def plan(self, *, postgres_user: str = "postgres", redis_db: int = 1, api_port: int | None = None,
             emulator_port: int | None = None) -> dict[str, Process]:
        """Work out every process's command and environment, without starting anything."""
        suffix = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        dotenv = compose.read_dotenv(self.env_file)
        variables = {**dotenv, **self.environ}
        ours = {"POSTGRES_USER": postgres_user, "POSTGRES_DB": f"{DB_PREFIX}{suffix}",
                "HEALTHIMAGING_LEDGER_DB": f"{DB_PREFIX}{suffix}_ledger", "AIRFLOW_API_WORKERS": str(self.api_workers)}
        if self.worker_concurrency is not None:
            ours["AIRFLOW_WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        # The Fernet key and the login password are not here: airflow-init generates them, as in compose.
        generated = fresh_secrets()
        ours.update({key: value for key, value in generated.items() if not variables.get(key)})
        variables.update(ours)
        self.variables = variables
        self.local = LocalEndpoints(
            home=str(self.home), api_port=api_port or free_port(), emulator_port=emulator_port or free_port(),
            redis_db=redis_db, postgres_host=self.postgres_host, postgres_port=self.postgres_port,
            redis_host=self.redis_host, redis_port=self.redis_port,
            api_host=compose.publish_address(self.compose, "airflow-apiserver", variables),
            emulator_host=compose.publish_address(self.compose, compose.EMULATOR_SERVICE, variables))
        # env_file: .env's variables reach the containers too (with the values this stack uses).
        env_file_vars = {key: variables[key] for key in (*dotenv, *ours)}
        base = {**self._inherited_environ(), **env_file_vars}

        processes: dict[str, Process] = {}
        if self.emulator:
            processes[compose.EMULATOR_SERVICE] = Process(
                compose.EMULATOR_SERVICE, compose.EMULATOR_SERVICE,
                [sys.executable, "-m", "healthimaging_emulator", *self.emulator_command(), *self.emulator_args],
                {**base, **self.compose_environment(compose.EMULATOR_SERVICE), "PYTHONPATH": str(REPO_ROOT)})
        processes[compose.INIT_SERVICE] = Process(
            compose.INIT_SERVICE, compose.INIT_SERVICE, [sys.executable, "-m", "stack.init"],
            self.service_environment(compose.INIT_SERVICE, base))
        for service in compose.AIRFLOW_SERVICES:
            argv = [_bin("airflow"), *compose.command(self.compose, service, variables)]
            if service != "airflow-worker":
                processes[service] = Process(service, service, argv, self.service_environment(service, base))
                continue
            for number in range(1, self.workers + 1):
                env = self.service_environment(service, base, worker=number)
                processes[f"{service}-{number}"] = Process(
                    f"{service}-{number}", service, [*argv, "--celery-hostname", f"worker{number}@%h"], env)
        self.processes = processes
        return processes

    def _inherited_environ(self) -> dict[str, str]:
        """The shell's environment minus any Airflow configuration (compose passes none of it either)."""
        return {key: value for key, value in self.environ.items()
                if not key.startswith(("AIRFLOW", "_AIRFLOW", "PYTEST_", "HEALTHIMAGING_TEST_"))}

    def compose_environment(self, service: str) -> dict[str, str]:
        """The compose service's environment, interpolated and localized (no runner additions)."""
        return compose.localize_environment(compose.environment(self.compose, service, self.variables), self.local)

    def service_environment(self, service: str, base: Mapping[str, str], *, worker: int | None = None) -> dict[str, str]:
        env = {**base, **self.compose_environment(service)}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
            "PYTHONPATH": str(REPO_ROOT),
        })
        if service == "airflow-apiserver":
            env.update({"AIRFLOW__API__HOST": self.local.api_host, "AIRFLOW__API__PORT": str(self.local.api_port)})
        elif service == "airflow-scheduler":
            env.update({"AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port())})
        elif service == "airflow-triggerer":
            env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
        elif service == "airflow-worker":
            env.update({"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack.hostname.get_hostname",
                        "STACK_HOSTNAME": f"worker{worker}"})
        if service != compose.INIT_SERVICE:
            env.update(self.overrides)
        return env

    def emulator_command(self) -> list[str]:
        """The emulator service's command with its host, port and state folder made local."""
        args = [compose.localize(arg, self.local) for arg in
                compose.command(self.compose, compose.EMULATOR_SERVICE, self.variables)]
        for flag, value in (("--host", self.local.emulator_host), ("--port", str(self.local.emulator_port))):
            if flag in args:
                args[args.index(flag) + 1] = value
        return args

    # ------------------------------------------------------------------------------- endpoints

    @property
    def api_url(self) -> str:
        return f"http://{compose.url_host(self.local.api_connect_host)}:{self.local.api_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://{compose.url_host(self.local.emulator_connect_host)}:{self.local.emulator_port}"

    @property
    def emulator_admin_token(self) -> str:
        """The emulator's admin API token (``Authorization: Bearer``): .env's, else generated for this stack."""
        return self.variables["HEALTHIMAGING_EMULATOR_ADMIN_TOKEN"]

    def emulator_admin(self, method: str, path: str, body: Any = None) -> Any:
        """One request to the emulator's admin API (``counters``, ``config``...) with the stack's token; the decoded
        answer. RuntimeError, with the emulator's answer, unless it is HTTP 200."""
        from healthimaging_emulator.admin_client import admin_request

        status, answer = admin_request(self.emulator_url, method, path, body, token=self.emulator_admin_token)
        if status != 200:
            raise RuntimeError(f"emulator admin {method} {path} answered HTTP {status}: {answer}")
        return answer

    @property
    def passwords_file(self) -> Path:
        """The simple auth manager's passwords file, where airflow-init writes the login (mode 0600)."""
        return Path(self.processes[compose.INIT_SERVICE].env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])

    @property
    def fernet_key_file(self) -> Path:
        """The file airflow-init writes the Fernet key to and every component reads it from (mode 0600)."""
        from stack.init import fernet_key_file

        return fernet_key_file(self.processes[compose.INIT_SERVICE].env)

    @property
    def credentials(self) -> tuple[str, str]:
        """The login airflow-init wrote: ``_AIRFLOW_WWW_USER_USERNAME`` and its password from :attr:`passwords_file`
        (``_AIRFLOW_WWW_USER_PASSWORD`` if given, else generated)."""
        from stack.init import read_passwords

        username = self.processes[compose.INIT_SERVICE].env.get("_AIRFLOW_WWW_USER_USERNAME") or "airflow"
        passwords = read_passwords(self.passwords_file)
        if username not in passwords:
            raise RuntimeError(f"no password for {username!r} in {self.passwords_file}: airflow-init writes it "
                               "when the stack starts (start() first)")
        return username, passwords[username]

    @property
    def worker_names(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.service == "airflow-worker"]

    @property
    def sql_alchemy_conn(self) -> str:
        return self.processes["airflow-scheduler"].env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]

    @property
    def ledger_database(self) -> str:
        return self.variables["HEALTHIMAGING_LEDGER_DB"]

    def ledger_url(self) -> str:
        return (f"postgresql+psycopg2://{self._postgres_user or self.variables['POSTGRES_USER']}@"
                f"{self.postgres_host}:{self.postgres_port}/{self.ledger_database}")

    # ------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ProcessStack:
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
        for folder in (self.home, self.log_dir, self.home / "logs", self.home / "config", self.home / "manifests"):
            folder.mkdir(parents=True, exist_ok=True)
        user = self._postgres_role()
        redis_db = self._claim_redis_db()
        self.plan(postgres_user=user, redis_db=redis_db)
        self._create_metadata_database()

        if self.emulator:
            self._spawn(self.processes[compose.EMULATOR_SERVICE])
            self._wait_for_emulator()
        t0 = time.monotonic()
        self._run_init()
        self.timings["airflow_init"] = time.monotonic() - t0
        for name, process in self.processes.items():
            if process.service in compose.AIRFLOW_SERVICES:
                self._spawn(process)
        t0 = time.monotonic()
        self._wait_healthy()
        self.timings["components_ready"] = time.monotonic() - t0
        self.timings["start"] = time.monotonic() - started

    def _postgres_role(self) -> str:
        import psycopg2

        errors = []
        for user in POSTGRES_USERS:
            try:
                conn = psycopg2.connect(host=self.postgres_host, port=self.postgres_port, user=user, dbname="postgres",
                                        connect_timeout=3)
            except psycopg2.Error as exc:
                errors.append(f"{user}: {exc}".strip())
                continue
            conn.close()
            self._postgres_user = user
            return user
        raise ConnectionError(f"no usable PostgreSQL on {self.postgres_host}:{self.postgres_port}: " + "; ".join(errors))

    def _pg(self):
        import psycopg2

        conn = psycopg2.connect(host=self.postgres_host, port=self.postgres_port, user=self._postgres_user,
                                dbname="postgres", connect_timeout=5)
        conn.autocommit = True
        return conn

    def _create_metadata_database(self) -> None:
        import psutil

        conn = self._pg()
        try:
            with conn.cursor() as cur:
                # Databases of stacks whose process is gone (killed before it could clean up).
                cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",))
                for (name,) in cur.fetchall():
                    pid = name[len(DB_PREFIX):].split("_", 1)[0]
                    if pid.isdigit() and not psutil.pid_exists(int(pid)):
                        with contextlib.suppress(Exception):
                            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                name = self.variables["POSTGRES_DB"]
                cur.execute(f'CREATE DATABASE "{name}"')
                self._databases = [name, self.ledger_database]  # the ledger's is created by airflow-init
        finally:
            conn.close()

    def _drop_databases(self) -> None:
        if not self._databases:
            return
        conn = self._pg()
        try:
            with conn.cursor() as cur:
                for name in self._databases:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()
        self._databases = []

    def _redis(self, db: int):
        import redis

        return redis.Redis(host=self.redis_host, port=self.redis_port, db=db, socket_timeout=5)

    def _claim_redis_db(self) -> int:
        """A Redis database nobody uses (1-15; 0 is left to others), marked as this process's."""
        import psutil

        for db in range(1, 16):
            client = self._redis(db)
            try:
                owner = client.get(REDIS_OWNER_KEY)
                if owner is not None and owner.decode().isdigit() and not psutil.pid_exists(int(owner)):
                    client.flushdb()  # left by a stack that was killed
                if client.set(REDIS_OWNER_KEY, str(os.getpid()), nx=True):
                    if client.dbsize() == 1:
                        self._redis_db = db
                        return db
                    client.delete(REDIS_OWNER_KEY)  # someone else's data: leave it alone
            finally:
                client.close()
        raise RuntimeError(f"no free Redis database on {self.redis_host}:{self.redis_port}")

    def _release_redis_db(self) -> None:
        if self._redis_db is None:
            return
        client = self._redis(self._redis_db)
        try:
            client.flushdb()
        finally:
            client.close()
        self._redis_db = None

    def _spawn(self, process: Process) -> None:
        log = open(self.log_dir / f"{process.name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(log)
        process.popen = spawn(process.argv, cwd=self.home, env=process.env, log=log)

    def _run_init(self) -> None:
        process = self.processes[compose.INIT_SERVICE]
        self._spawn(process)
        try:
            code = process.popen.wait(timeout=300)
        except subprocess.TimeoutExpired:
            raise TimeoutError("airflow-init did not finish in 300s\n" + self.log_tail(process.name)) from None
        if code != 0:
            raise RuntimeError(f"airflow-init failed with exit code {code}\n" + self.log_tail(process.name, 60))

    def _wait_for_emulator(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.emulator_admin("GET", "health")
                return
            except (OSError, RuntimeError) as exc:  # not listening yet, or refusing the token
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"the emulator's health did not answer 200 in {timeout}s (last: {last})\n"
                           + self.log_tail(compose.EMULATOR_SERVICE))

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        health: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.health()
            if health and all((health.get(part) or {}).get("status") == "healthy"
                              for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"Airflow did not become healthy in {self.startup_timeout}s; last health: {health}\n"
                               + self.diagnostics())
        self._wait_for_workers(deadline)

    def celery_worker_names(self) -> list[str]:
        host = socket.gethostname()
        return [f"worker{n}@{host}" for n in range(1, self.workers + 1)]

    def _wait_for_workers(self, deadline: float) -> None:
        """Every worker answers a Celery ping through the broker (the compose healthcheck's command)."""
        names = self.celery_worker_names()
        env = self.processes[self.worker_names[0]].env
        output = ""
        while time.monotonic() < deadline:
            self.check_alive()
            result = subprocess.run(
                [_bin("celery"), "--app", CELERY_APP, "inspect", "ping", "--timeout", "3", "-d", ",".join(names)],
                env=env, cwd=self.home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                check=False)
            output = result.stdout
            if all(f"{name}: OK" in output for name in names):
                return
            time.sleep(1)
        raise TimeoutError(f"Celery workers {names} did not answer a ping:\n{output[-2000:]}\n" + self.diagnostics())

    def check_alive(self) -> None:
        """Raise if a long-running process exited, with the tail of its log."""
        for name, process in self.processes.items():
            if name == compose.INIT_SERVICE or process.popen is None:
                continue
            if process.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.popen.returncode}:\n{self.log_tail(name)}")

    def stop(self) -> None:
        """Stop every process (groups and descendants; SIGKILL after ``stop_timeout``), drop the databases,
        flush the Redis database. Safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        try:
            self._stop_processes()
            self.timings["stop_processes"] = time.monotonic() - t0
        finally:
            for log in self._log_files:
                log.close()
            self._log_files.clear()
            for cleanup in (self._drop_databases, self._release_redis_db):
                try:
                    cleanup()
                except Exception as exc:  # never hide the caller's own failure
                    print(f"ProcessStack: cleanup {cleanup.__name__} failed: {exc}", file=sys.stderr)

    def _stop_processes(self) -> None:
        running = [p for p in self.processes.values() if p.popen is not None]

        def order(p: Process) -> int:
            return STOP_ORDER.index(p.service) if p.service in STOP_ORDER else len(STOP_ORDER)

        stop_all([p.popen for p in sorted(running, key=order)], self.stop_timeout)

    def pids(self) -> list[int]:
        """Every process this stack started that is still alive, descendants included."""
        import psutil

        found: set[int] = set()
        for process in self.processes.values():
            if process.popen is None:
                continue
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.popen.pid)
                if parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
                    found.add(parent.pid)
                found.update(c.pid for c in parent.children(recursive=True))
        return sorted(found)

    # ------------------------------------------------------------------------ faults (tests, chaos runs)

    def kill(self, name: str) -> list[int]:
        """SIGKILL a running process of the stack with every descendant (a crash: no shutdown code runs);
        returns the pids killed. ``start_process(name)`` starts it again."""
        process = self.processes[name]
        if process.popen is None:
            raise RuntimeError(f"{name} is not running")
        killed = kill_tree(process.popen)
        self._dead.append(process.popen)
        process.popen = None
        return killed

    def restart(self, name: str) -> None:
        """Stop a process as compose would (SIGTERM, SIGKILL after ``stop_timeout``), then start it again."""
        process = self.processes[name]
        if process.popen is not None:
            stop_all([process.popen], self.stop_timeout)
            self._dead.append(process.popen)
            process.popen = None
        self.start_process(name)

    def start_process(self, name: str) -> None:
        """Start a planned process that is not running (after :meth:`kill`, or one from :meth:`add_process`)."""
        process = self.processes[name]
        if process.popen is not None:
            raise RuntimeError(f"{name} is already running")
        self._spawn(process)

    def add_process(self, name: str, like: str) -> Process:
        """Plan one more instance of a service (``docker compose up --scale``), e.g. a second triggerer;
        ``start_process(name)`` starts it."""
        template = self.processes[like]
        env = dict(template.env)
        for port in ("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                     "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"):
            if port in env:
                env[port] = str(free_port())
        self.processes[name] = Process(name, template.service, list(template.argv), env)
        return self.processes[name]

    # --------------------------------------------------------------------------------- REST API

    def token(self) -> str:
        """A JWT for the REST API, as a user gets one: ``POST /auth/token`` with the login."""
        username, password = self.credentials
        request = urllib.request.Request(f"{self.api_url}/auth/token", method="POST",
                                         data=json.dumps({"username": username, "password": password}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    # ------------------------------------------------------------------------------ diagnostics

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"--- {name}: no log"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name} ({path}):\n" + "\n".join(text)

    def diagnostics(self, names: Iterable[str] | None = None, lines: int = 30) -> str:
        return "\n".join(self.log_tail(name, lines) for name in (names or self.processes))


def write_dotenv(target: Path = compose.ENV_FILE, example: Path = compose.ENV_EXAMPLE) -> Path:
    """``make .env``: ``.env.example`` with the empty secrets filled in (an existing .env is kept)."""
    if target.exists():
        raise FileExistsError(f"{target} exists; delete it first to generate a new one")
    from stack.init import generate_fernet_key, write_private_file

    fresh = {**fresh_secrets(), "AIRFLOW_FERNET_KEY": generate_fernet_key()}
    if hasattr(os, "getuid"):
        fresh["AIRFLOW_UID"] = str(os.getuid())
    lines = []
    for line in example.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in fresh and (not value.strip() or key == "AIRFLOW_UID"):
            line = f"{key}={fresh[key]}"
        lines.append(line)
    # A secret the compose file requires that the example does not list yet still gets a value.
    listed = compose.read_dotenv(example)
    lines += [f"# {SECRETS[key]}\n{key}={fresh[key]}" for key in SECRETS if key not in listed]
    write_private_file(target, "\n".join(lines) + "\n")
    return target

