"""The services of ``docker-compose.yaml`` as processes on this machine: the same stack without Docker.

:class:`ProcessStack` runs, each as its own process group with a log under ``<home>/process-logs/``
(:class:`stack.supervisor.Supervisor`):

- ``healthimaging-emulator``: the compose service's command (``python -m healthimaging_emulator ...``),
  plus any extra arguments (faults, quotas);
- ``airflow-init``: ``python -m stack.init`` (Fernet key, DB migration, ledger database, login), to
  completion: the secrets it generates are in ``<home>/config/`` (mode 0600), as in compose's ``./config``;
- ``airflow-apiserver``, ``airflow-scheduler``, ``airflow-dag-processor``, ``airflow-triggerer``:
  ``airflow <command>`` with the compose service's command;
- with the CeleryExecutor (compose's), ``airflow-worker-1`` ... ``airflow-worker-N``: ``airflow celery worker``
  (the compose command) with ``--celery-hostname celery@workerN``, the equivalent of
  ``--scale airflow-worker=N``. With ``executor="LocalExecutor"`` (the tests' end-to-end stack) there are no
  workers: the scheduler runs the tasks, Redis is not used, and ``AIRFLOW__CORE__EXECUTOR`` is the one
  compose value changed.

PostgreSQL and Redis are the machine's (127.0.0.1:5432 with trust auth, 127.0.0.1:6379): the stack
creates a metadata database of its own (``POSTGRES_DB``), lets ``airflow-init`` create the ledger's
(``HEALTHIMAGING_LEDGER_DB``), and claims a free Redis database for the Celery broker; it drops and
flushes them when it stops. Every Airflow process gets the compose service's ``environment``
(``x-airflow-common``), interpolated from ``.env`` and the shell exactly like compose does, with only
the substitutions of :data:`stack.compose.SUBSTITUTIONS`, plus :data:`RUNNER_ONLY_VARIABLES`.

The api-server and the emulator listen on the address compose publishes their ports on
(``HEALTHIMAGING_PUBLISH_ADDRESS``, 127.0.0.1 by default), the scheduler's health server on 127.0.0.1.

Startup waits for the emulator's compose health check, the init step, ``/api/v2/monitor/health``
(scheduler, triggerer, dag-processor) and every worker's compose health check (a Celery ping);
:meth:`ProcessStack.health_check` gives any service's compose health check as a local command
(:mod:`stack.health`). :meth:`ProcessStack.stop` terminates every process group and every descendant (task
processes), kills what is left, and drops the databases, also after a failure: use it as a context manager.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stack import compose
from stack.compose import REPO_ROOT, LocalEndpoints
from stack.health import HealthCheck, compose_health_check, wait_for_airflow
from stack.postgres import TemporaryDatabases, database_name
from stack.processes import free_port
from stack.redis_db import RedisDatabase
from stack.supervisor import Process, Supervisor

__all__ = [
    "EXECUTORS",
    "RUNNER_ONLY_VARIABLES",
    "RUNNER_VARIABLES",
    "SECRETS",
    "Process",
    "ProcessStack",
    "fresh_secrets",
    "write_dotenv",
]

#: What the process stack sets beyond the compose environment, and why (each is something an image or
#: a container provides in Docker). ``tests/test_docker_compose.py`` checks that nothing else differs.
RUNNER_ONLY_VARIABLES: dict[str, str] = {
    "AIRFLOW_HOME": "the image's AIRFLOW_HOME is /opt/airflow; here, the stack's home folder",
    "AIRFLOW__CORE__DAGS_FOLDER": "compose mounts ./dags at /opt/airflow/dags; here, the stack's dags folder "
    "(the repository's dags/ by default)",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "compose mounts ./plugins at /opt/airflow/plugins; here, the stack's plugins "
    "folder (the repository's plugins/ by default)",
    "PYTHONPATH": "the image sets PYTHONPATH=/opt/airflow (stack, healthimaging_emulator); here, the repository",
    "AIRFLOW__API__HOST": "api-server: a container listens on 0.0.0.0:8080 and compose publishes it on "
    "HEALTHIMAGING_PUBLISH_ADDRESS (127.0.0.1 by default); here, it listens on that address",
    "AIRFLOW__API__PORT": "api-server: here, a free port",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "scheduler: 0.0.0.0 in its container, not published; "
    "here, 127.0.0.1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "scheduler: 8974 in its container; here, a free port",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": "triggerer: 8794 in its container; here, a free port",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "each worker (the scheduler with the LocalExecutor): 8793 in its "
    "container; here, a free port each",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "a container has its own host name; here, stack.hostname",
    "STACK_HOSTNAME": "each process's host name (worker1, worker2, ... for the workers, the process name for the "
    "others), read by stack.hostname",
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
    "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN": "The emulator's admin API token: "
    "Authorization: Bearer <token> on /_emulator/...",
}

#: compose's (the default), and the one that needs no workers nor Redis.
EXECUTORS = ("CeleryExecutor", "LocalExecutor")


def fresh_secrets() -> dict[str, str]:
    """New values for :data:`SECRETS`."""
    return {
        "AIRFLOW_JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW_API_SECRET_KEY": secrets.token_hex(16),
        "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN": secrets.token_urlsafe(32),
    }


DB_PREFIX = "hi_stack_"

#: Started in this order; stopped scheduler first (no new work), then workers, the rest, the emulator.
STOP_ORDER = (
    "airflow-scheduler",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-dag-processor",
    "airflow-apiserver",
    "healthimaging-emulator",
)

#: Where each service's health check reaches it in its container (``localhost:<port>``).
CONTAINER_PORTS = {"airflow-apiserver": 8080, "airflow-scheduler": 8974, compose.EMULATOR_SERVICE: 8089}


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


class ProcessStack:
    """The compose stack as processes (see the module docstring).

    :param home: the stack's AIRFLOW_HOME (created); logs, config and process logs go there.
    :param executor: ``CeleryExecutor`` (compose's) or ``LocalExecutor`` (no workers, no Redis).
    :param workers: how many ``airflow-worker`` processes (compose: ``--scale airflow-worker=N``); default 2
        with the CeleryExecutor, none with the LocalExecutor.
    :param worker_concurrency: task slots per worker (``AIRFLOW_WORKER_CONCURRENCY``); None: .env's.
    :param env_file: the ``.env`` to read (default ``.env``, else ``.env.example``).
    :param environ: the shell's variables for interpolation (default ``os.environ``), as compose uses them.
    :param dags_folder: the DAGs to deploy (compose mounts ``./dags``: the repository's by default).
    :param plugins_folder: the plugins folder (compose mounts ``./plugins``: the repository's by default).
    :param emulator: run the ``healthimaging-emulator`` service too.
    :param emulator_args: extra arguments for the emulator (``--fault``, ``--rate``, ...).
    :param overrides: environment variables set last on every Airflow process (test speed-ups);
        not part of the compose configuration.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        executor: str = "CeleryExecutor",
        workers: int | None = None,
        worker_concurrency: int | None = None,
        api_workers: int = 1,
        env_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        compose_file: str | os.PathLike[str] = compose.COMPOSE_FILE,
        dags_folder: str | os.PathLike[str] = REPO_ROOT / "dags",
        plugins_folder: str | os.PathLike[str] = REPO_ROOT / "plugins",
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
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, not {executor!r}")
        self.executor = executor
        self.celery = executor == "CeleryExecutor"
        self.workers = (2 if self.celery else 0) if workers is None else workers
        if self.celery and self.workers < 1:
            raise ValueError("the CeleryExecutor needs at least one worker")
        if not self.celery and self.workers:
            raise ValueError(f"the {executor} runs tasks in the scheduler: no workers")
        self.home = Path(home).resolve()
        self.worker_concurrency = worker_concurrency
        self.api_workers = api_workers
        self.env_file = Path(env_file) if env_file else compose.default_env_file()
        self.environ = dict(os.environ if environ is None else environ)
        self.compose_file = Path(compose_file)
        self.compose = compose.load_compose(self.compose_file)
        self.dags_folder = Path(dags_folder).resolve()
        self.plugins_folder = Path(plugins_folder).resolve()
        self.emulator = emulator
        self.emulator_args = list(emulator_args)
        self.overrides = dict(overrides or {})
        self.postgres_host, self.postgres_port = postgres_host, postgres_port
        self.redis_host, self.redis_port = redis_host, redis_port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_dir = self.home / "process-logs"
        self.supervisor = Supervisor(self.log_dir, self.home, STOP_ORDER, stop_timeout)
        self.databases = TemporaryDatabases(DB_PREFIX, postgres_host, postgres_port)
        self.redis = RedisDatabase(redis_host, redis_port)
        self.variables: dict[str, str] = {}
        self.local: LocalEndpoints | None = None
        self.timings: dict[str, float] = {}
        self._stopped = False

    @property
    def processes(self) -> dict[str, Process]:
        """Every planned process by name (``airflow-worker-1``...), running or not."""
        return self.supervisor.processes

    # --------------------------------------------------------------------------- configuration

    def plan(
        self,
        *,
        postgres_user: str = "postgres",
        redis_db: int = 1,
        api_port: int | None = None,
        emulator_port: int | None = None,
    ) -> dict[str, Process]:
        """Work out every process's command and environment, without starting anything."""
        dotenv = compose.read_dotenv(self.env_file)
        variables = {**dotenv, **self.environ}
        metadata_db = database_name(DB_PREFIX)
        ours = {
            "POSTGRES_USER": postgres_user,
            "POSTGRES_DB": metadata_db,
            "HEALTHIMAGING_LEDGER_DB": f"{metadata_db}_ledger",
            "AIRFLOW_API_WORKERS": str(self.api_workers),
        }
        if self.worker_concurrency is not None:
            ours["AIRFLOW_WORKER_CONCURRENCY"] = str(self.worker_concurrency)
        # The Fernet key and the login password are not here: airflow-init generates them, as in compose.
        generated = fresh_secrets()
        ours.update({key: value for key, value in generated.items() if not variables.get(key)})
        variables.update(ours)
        self.variables = variables
        self.local = LocalEndpoints(
            home=str(self.home),
            api_port=api_port or free_port(),
            emulator_port=emulator_port or free_port(),
            redis_db=redis_db,
            postgres_host=self.postgres_host,
            postgres_port=self.postgres_port,
            redis_host=self.redis_host,
            redis_port=self.redis_port,
            api_host=compose.publish_address(self.compose, "airflow-apiserver", variables),
            emulator_host=compose.publish_address(self.compose, compose.EMULATOR_SERVICE, variables),
        )
        # env_file: .env's variables reach the containers too (with the values this stack uses).
        env_file_vars = {key: variables[key] for key in (*dotenv, *ours)}
        base = {**self._inherited_environ(), **env_file_vars}

        processes: dict[str, Process] = {}
        if self.emulator:
            processes[compose.EMULATOR_SERVICE] = Process(
                compose.EMULATOR_SERVICE,
                compose.EMULATOR_SERVICE,
                [sys.executable, "-m", "healthimaging_emulator", *self.emulator_command(), *self.emulator_args],
                {**base, **self.compose_environment(compose.EMULATOR_SERVICE), "PYTHONPATH": str(REPO_ROOT)},
            )
        processes[compose.INIT_SERVICE] = Process(
            compose.INIT_SERVICE,
            compose.INIT_SERVICE,
            [sys.executable, "-m", "stack.init"],
            self.service_environment(compose.INIT_SERVICE, base),
            runs_to_completion=True,
        )
        for service in compose.AIRFLOW_SERVICES:
            argv = [_bin("airflow"), *compose.command(self.compose, service, variables)]
            if service != "airflow-worker":
                processes[service] = Process(service, service, argv, self.service_environment(service, base))
                continue
            for number in range(1, self.workers + 1):
                name, hostname = f"{service}-{number}", f"worker{number}"
                processes[name] = Process(
                    name,
                    service,
                    [*argv, "--celery-hostname", f"celery@{hostname}"],
                    self.service_environment(service, base, hostname=hostname),
                )
        self.supervisor.processes = processes
        return processes

    def _inherited_environ(self) -> dict[str, str]:
        """The shell's environment minus any Airflow configuration (compose passes none of it either)."""
        return {
            key: value
            for key, value in self.environ.items()
            if not key.startswith(("AIRFLOW", "_AIRFLOW", "PYTEST_", "HEALTHIMAGING_TEST_"))
        }

    def compose_environment(self, service: str) -> dict[str, str]:
        """The compose service's environment, interpolated and localized (no runner additions)."""
        return compose.localize_environment(compose.environment(self.compose, service, self.variables), self.local)

    def service_environment(
        self, service: str, base: Mapping[str, str], *, hostname: str | None = None
    ) -> dict[str, str]:
        """What an Airflow process of ``service`` gets: ``base``, the compose environment, the runner-only
        variables, the executor, then :attr:`overrides` (not for airflow-init)."""
        env = {**base, **self.compose_environment(service)}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder),
                "PYTHONPATH": str(REPO_ROOT),
                "AIRFLOW__CORE__EXECUTOR": self.executor,
            }
        )
        if service != compose.INIT_SERVICE:
            env.update(
                {
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "stack.hostname.get_hostname",
                    "STACK_HOSTNAME": hostname or service,
                }
            )
        if service == "airflow-apiserver":
            env.update({"AIRFLOW__API__HOST": self.local.api_host, "AIRFLOW__API__PORT": str(self.local.api_port)})
        elif service == "airflow-scheduler":
            env.update(
                {
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
                }
            )
            if not self.celery:  # the LocalExecutor's task logs are served by the scheduler
                env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
        elif service == "airflow-triggerer":
            env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
        elif service == "airflow-worker":
            env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
        if service != compose.INIT_SERVICE:
            env.update(self.overrides)
        return env

    def emulator_command(self) -> list[str]:
        """The emulator service's command with its host, port and state folder made local."""
        args = [
            compose.localize(arg, self.local)
            for arg in compose.command(self.compose, compose.EMULATOR_SERVICE, self.variables)
        ]
        for flag, value in (("--host", self.local.emulator_host), ("--port", str(self.local.emulator_port))):
            if flag in args:
                args[args.index(flag) + 1] = value
        return args

    def health_check(self, name: str) -> HealthCheck:
        """The compose health check of a planned process's service (or of ``postgres`` / ``redis``: the
        machine's), as a command on this machine (:func:`stack.health.compose_health_check`)."""
        if name in compose.INFRASTRUCTURE_SERVICES:
            env = {**self._inherited_environ(), "PGHOST": self.postgres_host, "PGPORT": str(self.postgres_port)}
            ports: dict[int, tuple[str, int]] = {}
            return compose_health_check(self.compose, name, name, self.variables, env=env, hostname=name, ports=ports)
        process = self.processes[name]
        where = {
            "airflow-apiserver": (self.local.api_connect_host, self.local.api_port),
            compose.EMULATOR_SERVICE: (self.local.emulator_connect_host, self.local.emulator_port),
        }
        if process.service == "airflow-scheduler":
            where["airflow-scheduler"] = (
                process.env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"],
                int(process.env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"]),
            )
        ports = {CONTAINER_PORTS[process.service]: where[process.service]} if process.service in where else {}
        return compose_health_check(
            self.compose,
            name,
            process.service,
            self.variables,
            env=process.env,
            hostname=process.env.get("STACK_HOSTNAME", name),
            ports=ports,
        )

    def health_checks(self) -> dict[str, HealthCheck]:
        """The compose health check of every long-running process planned, and of PostgreSQL and Redis."""
        names = [name for name, process in self.processes.items() if not process.runs_to_completion]
        if self.celery:
            names += compose.INFRASTRUCTURE_SERVICES
        else:
            names.append("postgres")
        return {name: self.health_check(name) for name in names}

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
            raise RuntimeError(
                f"no password for {username!r} in {self.passwords_file}: airflow-init writes it "
                "when the stack starts (start() first)"
            )
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

    @property
    def postgres_user(self) -> str:
        """The PostgreSQL role the stack's databases belong to."""
        return self.databases.user or self.variables["POSTGRES_USER"]

    def ledger_url(self) -> str:
        return (
            f"postgresql+psycopg2://{self.postgres_user}@"
            f"{self.postgres_host}:{self.postgres_port}/{self.ledger_database}"
        )

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
        deadline = started + self.startup_timeout
        for folder in (self.home, self.log_dir, self.home / "logs", self.home / "config", self.home / "manifests"):
            folder.mkdir(parents=True, exist_ok=True)
        user = self.databases.role()
        redis_db = self.redis.claim() if self.celery else 0  # with the LocalExecutor the broker URL is unused
        self.plan(postgres_user=user, redis_db=redis_db)
        self.databases.create(self.variables["POSTGRES_DB"])
        self.databases.adopt(self.ledger_database)  # airflow-init creates it

        if self.emulator:
            self.supervisor.start(compose.EMULATOR_SERVICE)
            self._wait_for_health_checks([compose.EMULATOR_SERVICE], time.monotonic() + 60)
        t0 = time.monotonic()
        self.supervisor.run_to_completion(compose.INIT_SERVICE, timeout=300)
        self.timings["airflow_init"] = time.monotonic() - t0
        for name, process in self.processes.items():
            if process.service in compose.AIRFLOW_SERVICES:
                self.supervisor.start(name)
        t0 = time.monotonic()
        wait_for_airflow(self.api_url, deadline, self.check_alive, self.diagnostics)
        self._wait_for_health_checks(self.worker_names, deadline)
        self.timings["components_ready"] = time.monotonic() - t0
        self.timings["start"] = time.monotonic() - started

    def _wait_for_health_checks(self, names: Sequence[str], deadline: float) -> None:
        """Run the compose health checks of ``names`` (side by side) until each has passed once."""
        checks = {name: self.health_check(name) for name in names}
        failures: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
            while checks:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"health checks of {sorted(checks)} did not pass in time:\n"
                        + "\n".join(f"{n}: {out[-1500:]}" for n, out in failures.items())
                        + "\n"
                        + self.diagnostics()
                    )
                results = dict(zip(checks, pool.map(lambda check: check.run(self.home), checks.values())))
                for name, result in results.items():
                    if result.returncode == 0:
                        del checks[name]
                        failures.pop(name, None)
                    else:
                        failures[name] = result.stdout
                if checks:
                    time.sleep(0.5)

    def check_alive(self) -> None:
        """Raise if a long-running process exited, with the tail of its log."""
        self.supervisor.check_alive()

    def stop(self) -> None:
        """Stop every process (groups and descendants; SIGKILL after ``stop_timeout``), drop the databases,
        flush the Redis database. Safe to call twice and after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        t0 = time.monotonic()
        try:
            self.supervisor.stop()
            self.timings["stop_processes"] = time.monotonic() - t0
        finally:
            for cleanup in (self.databases.drop_all, self.redis.release):
                try:
                    cleanup()
                except Exception as exc:  # never hide the caller's own failure
                    print(f"ProcessStack: cleanup {cleanup.__qualname__} failed: {exc}", file=sys.stderr)

    def pids(self) -> list[int]:
        """Every process this stack started that is still alive, descendants included."""
        return self.supervisor.pids()

    # ------------------------------------------------------------------------ faults (tests, chaos runs)

    def kill(self, name: str) -> list[int]:
        """SIGKILL a running process of the stack with every descendant (a crash: no shutdown code runs);
        returns the pids killed. ``start_process(name)`` starts it again."""
        return self.supervisor.kill(name)

    def restart(self, name: str) -> None:
        """Stop a process as compose would (SIGTERM, SIGKILL after ``stop_timeout``), then start it again."""
        self.supervisor.restart(name)

    def start_process(self, name: str) -> None:
        """Start a planned process that is not running (after :meth:`kill`, or one from :meth:`add_process`)."""
        self.supervisor.start(name)

    def add_process(self, name: str, like: str) -> Process:
        """Plan one more instance of a service (``docker compose up --scale``), e.g. a second triggerer, with
        ports and a host name of its own; ``start_process(name)`` starts it."""
        template = self.processes[like]
        env = {**template.env, "STACK_HOSTNAME": name}
        for port in (
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
        ):
            if port in env:
                env[port] = str(free_port())
        self.processes[name] = Process(name, template.service, list(template.argv), env)
        return self.processes[name]

    # --------------------------------------------------------------------------------- REST API

    def token(self) -> str:
        """A JWT for the REST API, as a user gets one: ``POST /auth/token`` with the login."""
        username, password = self.credentials
        request = urllib.request.Request(
            f"{self.api_url}/auth/token",
            method="POST",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]

    # ------------------------------------------------------------------------------ diagnostics

    def log_path(self, name: str) -> Path:
        return self.supervisor.log_path(name)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.supervisor.log_tail(name, lines)

    def diagnostics(self, names: Iterable[str] | None = None, lines: int = 30) -> str:
        """The tail of each process's log (every process's by default)."""
        return self.supervisor.diagnostics(names, lines)


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
