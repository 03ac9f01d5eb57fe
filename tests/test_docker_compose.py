"""docker-compose.yaml, the Dockerfile and .env.example, read as compose reads them (no Docker engine
here); and the process stack (stack/, `make stack`) checked against the compose file: the same
commands, health checks and environment, up to the documented substitutions. That those health checks
pass on a running process stack is tests/test_stack_security.py's (it has one started)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from stack import compose
from stack.compose import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    REPO_ROOT,
    InterpolationError,
    LocalEndpoints,
    interpolate,
    localize,
    read_dotenv,
)
from stack.health import HEALTH_CHECK_SUBSTITUTIONS, compose_test
from stack.process_stack import RUNNER_ONLY_VARIABLES, RUNNER_VARIABLES, SECRETS, ProcessStack, write_dotenv

AIRFLOW_SERVICES = compose.AIRFLOW_SERVICES
LONG_RUNNING = [*AIRFLOW_SERVICES, "postgres", "redis", "healthimaging-emulator"]
#: The service keys of the compose specification (compose-spec.json, "service" properties).
COMPOSE_SPEC_SERVICE_KEYS = {
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
}
COMPOSE_SPEC_HEALTHCHECK_KEYS = {"disable", "interval", "retries", "start_interval", "start_period", "test", "timeout"}
SERVICE_HOSTS = ("postgres", "redis", "airflow-apiserver", "healthimaging-emulator")


@pytest.fixture(scope="module")
def raw() -> dict:
    return compose.load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def variables(tmp_path_factory) -> dict[str, str]:
    """What compose interpolates with after `make .env`: .env.example plus fresh secrets (no shell variables)."""
    target = tmp_path_factory.mktemp("dotenv") / ".env"
    write_dotenv(target)
    return compose.compose_variables(target, environ={})


def env_of(raw, name, variables) -> dict[str, str]:
    return compose.environment(raw, name, variables)


def connection(value: str):
    from airflow.models.connection import Connection

    if value.lstrip().startswith("{"):
        return Connection.from_json(value, conn_id="test")
    return Connection(conn_id="test", uri=value)


# --------------------------------------------------------------------------------------- services


def test_services_of_the_official_shape(raw):
    services = raw["services"]
    for name in (*AIRFLOW_SERVICES, "airflow-init", "postgres", "redis", "healthimaging-emulator"):
        assert name in services, name
    # Optional ones, off by default as in the official file.
    assert services["flower"]["profiles"] == ["flower"]
    assert services["airflow-cli"]["profiles"] == ["debug"]
    assert raw["x-airflow-common"]["build"] == "."
    assert raw["x-airflow-common"]["user"] == "${AIRFLOW_UID:-50000}:0"
    assert set(raw["volumes"]) == {"postgres-db-volume", "emulator-state"}


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_service_commands_are_commands_of_this_airflow(raw, variables, service):
    """The image's entrypoint runs ``airflow <command>``: each service's command is one this Airflow's CLI takes
    (the process stack runs the same, see test_process_stack_runs_the_compose_services_commands)."""
    from airflow.cli import cli_parser

    assert "entrypoint" not in compose.service(raw, service, variables)
    args = cli_parser.get_parser().parse_args(compose.command(raw, service, variables))
    assert callable(args.func)


def test_every_airflow_service_shares_the_common_configuration(raw, variables):
    common = compose.common_environment(raw, variables)
    for service in (*AIRFLOW_SERVICES, "airflow-init", "flower", "airflow-cli"):
        env = env_of(raw, service, variables)
        assert {k: env[k] for k in common} == common, service
        spec = raw["services"][service]
        assert spec["volumes"] == raw["x-airflow-common"]["volumes"], service
        assert spec["env_file"] == [{"path": ".env", "required": False}], service
    # The worker adds only what the official file adds (warm shutdown through dumb-init).
    assert set(env_of(raw, "airflow-worker", variables)) - set(common) == {"DUMB_INIT_SETSID"}


def test_the_worker_service_fixes_no_container_name_host_name_or_port(raw):
    worker = raw["services"]["airflow-worker"]
    # --scale airflow-worker=N needs no fixed name, host name or published port.
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0"


def test_init_runs_stack_init_as_root_then_hands_the_folders_to_airflow_uid(raw, variables):
    init = compose.service(raw, "airflow-init", variables)
    assert init["entrypoint"] == "/bin/bash"
    script = init["command"][1]
    assert "/entrypoint python -m stack.init" in script
    assert f'chown -R "{variables["AIRFLOW_UID"]}:0" /opt/airflow/{{logs,config,manifests}}' in script
    assert init["user"] == "0:0"
    env = env_of(raw, "airflow-init", variables)
    assert env["_AIRFLOW_WWW_USER_USERNAME"] == "airflow"
    # .env's password and Fernet key when given; empty (airflow-init generates them) otherwise.
    assert env["_AIRFLOW_WWW_USER_PASSWORD"] == variables["_AIRFLOW_WWW_USER_PASSWORD"]
    assert env["AIRFLOW_FERNET_KEY"] == variables["AIRFLOW_FERNET_KEY"]
    unset = {k: v for k, v in variables.items() if k not in ("_AIRFLOW_WWW_USER_PASSWORD", "AIRFLOW_FERNET_KEY")}
    env = env_of(raw, "airflow-init", unset)
    assert env["_AIRFLOW_WWW_USER_PASSWORD"] == "" and env["AIRFLOW_FERNET_KEY"] == ""
    # The entrypoint's `airflow db check` would read the Fernet key file before stack.init writes it.
    assert env["CONNECTION_CHECK_MAX_COUNT"] == "0"
    assert (REPO_ROOT / "stack" / "init.py").exists()


def test_dependencies(raw):
    services = raw["services"]
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        depends = services[name]["depends_on"]
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        if name != "airflow-init":
            assert depends["airflow-init"] == {"condition": "service_completed_successfully"}, name
    # Workers need the execution API to run anything.
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}


# ------------------------------------------------------------------------------------ health checks


def healthcheck(raw, name) -> list[str]:
    check = raw["services"][name]["healthcheck"]
    assert {"interval", "retries"} <= set(check), name
    return check["test"]


def test_every_long_running_service_has_a_health_check(raw):
    for name in LONG_RUNNING:
        assert healthcheck(raw, name)[0] in ("CMD", "CMD-SHELL"), name
    assert "healthcheck" not in raw["services"]["airflow-init"]


def test_the_process_stack_runs_the_compose_health_checks(planned, raw):
    """Each health check the process stack runs is its compose service's, changed only as documented:
    ``localhost:<container port>`` is where the process listens, ``HOSTNAME`` the host name it registers under."""
    assert set(HEALTH_CHECK_SUBSTITUTIONS) == {"localhost:<container port>", "HOSTNAME", "PATH"}
    checks = planned.health_checks()
    long_running = [name for name, p in planned.processes.items() if not p.runs_to_completion]
    assert set(checks) == {*long_running, "postgres", "redis"}
    assert {planned.processes[name].service for name in long_running} | {"postgres", "redis"} == set(LONG_RUNNING)
    scheduler = planned.processes["airflow-scheduler"].env
    listens = {
        "airflow-apiserver": f"127.0.0.1:{planned.local.api_port}",
        "healthimaging-emulator": f"127.0.0.1:{planned.local.emulator_port}",
        "airflow-scheduler": f"127.0.0.1:{scheduler['AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT']}",
    }
    for name, check in checks.items():
        service = planned.processes[name].service if name in planned.processes else name
        expected = compose_test(raw, service, planned.variables)
        if service in listens:
            expected = [re.sub(r"\blocalhost:\d+", listens[service], arg) for arg in expected]
        assert check.argv == expected, name
        if service in AIRFLOW_SERVICES:
            assert check.env["HOSTNAME"] == planned.processes[name].env["STACK_HOSTNAME"], name
    # A worker's check pings the Celery node the worker runs as.
    for name in planned.worker_names:
        argv = planned.processes[name].argv
        assert argv[argv.index("--celery-hostname") + 1] == f"celery@{checks[name].env['HOSTNAME']}"


# ---------------------------------------------------------------------------------------- environment


def test_celery_postgres_redis_and_the_execution_api(raw, variables):
    env = compose.common_environment(raw, variables)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://airflow:airflow@postgres:5432/airflow"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://airflow:airflow@postgres:5432/airflow"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:@redis:6379/0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    postgres = env_of(raw, "postgres", variables)
    assert postgres == {"POSTGRES_USER": "airflow", "POSTGRES_PASSWORD": "airflow", "POSTGRES_DB": "airflow"}


def test_secrets_are_required_and_shared(raw, variables):
    env = compose.common_environment(raw, variables)
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64  # HS512
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == variables["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__API__SECRET_KEY"]
    # The Fernet key comes from the file airflow-init writes, in the shared config folder; an
    # AIRFLOW__CORE__FERNET_KEY (even empty) would take precedence over the command.
    assert env["AIRFLOW__CORE__FERNET_KEY_CMD"] == "cat /opt/airflow/config/fernet_key"
    assert "AIRFLOW__CORE__FERNET_KEY" not in env
    # Straight from .env.example (secrets empty), compose refuses to start, naming the variable.
    with pytest.raises(InterpolationError, match="AIRFLOW_JWT_SECRET"):
        compose.common_environment(raw, compose.compose_variables(ENV_EXAMPLE, environ={}))


def test_login_through_the_simple_auth_manager(raw, variables):
    env = compose.common_environment(raw, variables)
    assert (
        env["AIRFLOW__CORE__AUTH_MANAGER"]
        == "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    )
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "airflow:admin"
    # In the mounted config folder, where airflow-init writes it and the api-server reads it.
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/config/")
    assert "${AIRFLOW_PROJ_DIR:-.}/config:/opt/airflow/config" in raw["x-airflow-common"]["volumes"]


def test_connections_default_to_the_emulator_and_the_ledger_database(raw, variables):
    env = compose.common_environment(raw, variables)
    aws = connection(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws.conn_type == "aws"
    assert aws.extra_dejson == {"endpoint_url": "http://healthimaging-emulator:8089", "region_name": "us-east-1"}
    ledger = connection(env["AIRFLOW_CONN_HEALTHIMAGING_LEDGER"])
    assert (ledger.conn_type, ledger.host, ledger.port, ledger.schema) == (
        "postgres",
        "postgres",
        5432,
        "healthimaging",
    )
    from healthimaging.bulk.ledger import url_from_connection

    assert (
        url_from_connection(ledger).render_as_string(hide_password=False)
        == "postgresql+psycopg2://airflow:airflow@postgres:5432/healthimaging"
    )
    emulator = compose.service(raw, "healthimaging-emulator", variables)
    assert emulator["profiles"] == ["emulator"]
    assert emulator["entrypoint"] == ["python", "-m", "healthimaging_emulator"]
    args = emulator["command"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--port") + 1] == "8089"
    assert "synthetic:1000" in args and "sample" in args
    from healthimaging_emulator.__main__ import build_parser

    build_parser().parse_args(args)  # the emulator accepts its command
    assert variables["COMPOSE_PROFILES"] == "emulator"


def real_aws_dotenv(tmp_path: Path) -> Path:
    """The documented switch: in .env, COMPOSE_PROFILES= and the real-AWS connection uncommented."""
    lines = []
    for line in (tmp_path / ".env").read_text().splitlines():
        if line.startswith("COMPOSE_PROFILES="):
            line = "COMPOSE_PROFILES="
        elif line.startswith("# AIRFLOW_CONN_AWS_DEFAULT=") and not any(
            x.startswith("AIRFLOW_CONN_AWS") for x in lines
        ):
            line = line[2:]
        elif line.startswith(("# AWS_ACCESS_KEY_ID=", "# AWS_SECRET_ACCESS_KEY=")):
            line = line[2:]
        lines.append(line)
    path = tmp_path / ".env"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_switching_to_real_aws_is_a_change_of_dotenv_only(raw, tmp_path):
    write_dotenv(tmp_path / ".env")
    variables = compose.compose_variables(real_aws_dotenv(tmp_path), environ={})
    assert variables["COMPOSE_PROFILES"] == ""  # the emulator service does not start
    env = compose.common_environment(raw, variables)
    aws = connection(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws.conn_type == "aws"
    assert aws.extra_dejson == {"region_name": "us-east-1"}  # no endpoint_url: the real service
    # The credentials reach the containers through env_file (.env).
    assert variables["AWS_ACCESS_KEY_ID"].startswith("AKIA")
    # Nothing else changed.
    baseline = compose.common_environment(raw, compose.compose_variables(tmp_path / ".env", environ={}))
    assert {k for k in env if env[k] != baseline.get(k)} <= {"AIRFLOW_CONN_AWS_DEFAULT"}


def test_every_variable_the_compose_file_uses_is_documented_in_env_example(raw):
    documented = set(read_dotenv(ENV_EXAMPLE)) | {
        name for name in re.findall(r"^# ?([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M)
    }
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    # AIRFLOW_PROJ_DIR is the official file's optional override of the project folder.
    assert used - documented <= {"AIRFLOW_PROJ_DIR"}
    required = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", text))
    # ... and `make .env` generates every one of them.
    assert (
        required
        == {"AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN"}
        == set(SECRETS)
    )


def test_make_dotenv_fills_in_fresh_secrets(tmp_path):
    first, second = write_dotenv(tmp_path / "a"), write_dotenv(tmp_path / "b")
    a, b = read_dotenv(first), read_dotenv(second)
    for key in (*SECRETS, "AIRFLOW_FERNET_KEY"):
        assert a[key] and a[key] != b[key], key
    assert set(a) == set(read_dotenv(ENV_EXAMPLE)) | set(SECRETS)
    assert first.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        write_dotenv(first)


def test_the_compose_file_resolves_as_docker_compose_config_requires(raw, variables):
    """What `docker compose config` refuses (there is no Docker here), checked with compose's interpolation rules:
    a value that does not interpolate with `make .env`'s variables, a service or health check key the compose
    specification does not have, a dependency on no service, a named volume not declared."""
    resolved = compose.interpolate_tree(raw, variables)
    services = resolved["services"]
    assert set(resolved) - {key for key in resolved if key.startswith("x-")} == {"services", "volumes"}
    for name, spec in services.items():
        assert set(spec) <= COMPOSE_SPEC_SERVICE_KEYS, (name, set(spec) - COMPOSE_SPEC_SERVICE_KEYS)
        assert set(spec.get("healthcheck", {})) <= COMPOSE_SPEC_HEALTHCHECK_KEYS, name
        assert set(spec.get("depends_on", {})) <= set(services), name
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in resolved["volumes"], (name, volume)


# -------------------------------------------------------------------------------------------- image


def test_dockerfile_installs_the_pinned_airflow_and_copies_the_project(raw):
    text = (REPO_ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    assert base.replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]) == "apache/airflow:3.3.2-python3.11"
    assert args["AIRFLOW_VERSION"] == "3.3.2"
    # The compose services run the image built from it, named for that version.
    image = f"healthimaging-airflow:{args['AIRFLOW_VERSION']}"
    assert raw["x-airflow-common"]["image"] == f"${{AIRFLOW_IMAGE_NAME:-{image}}}"
    assert re.search(
        r'pip install --no-cache-dir "apache-airflow==\$\{AIRFLOW_VERSION\}" -r /opt/airflow/requirements.txt', text
    )
    for folder in ("dags", "plugins", "healthimaging_emulator", "stack"):
        assert f"COPY --chown=airflow:0 {folder}/ /opt/airflow/{folder}/" in text
        assert (REPO_ROOT / folder).is_dir()
    assert "ENV PYTHONPATH=/opt/airflow" in text
    pins = (REPO_ROOT / "requirements.txt").read_text()
    assert "apache-airflow==3.3.2" in pins and "apache-airflow-providers-celery==" in pins
    # The image build context leaves out the venv and local state.
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored)


def test_the_celery_pin_works_with_the_celery_provider():
    """The celery provider imports celery.backends.database.retry (gone in celery 5.7): the pin holds."""
    from airflow.providers.celery.executors import celery_executor_utils  # noqa: F401
    from celery.backends.database import retry  # noqa: F401


# ---------------------------------------------------------------------- compose file == process stack


def test_interpolation_follows_compose_rules():
    v = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET}-$SET-$$SET", v) == "x-x-$SET"
    assert interpolate("${UNSET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}", v) == "d|d||d"
    assert interpolate("${UNSET:-a${SET:-b}c}", v) == "axc"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}", v) == "alt||alt"
    with pytest.raises(InterpolationError, match="EMPTY: needed"):
        interpolate("${EMPTY:?needed}", v)
    assert interpolate("${EMPTY?fine}", v) == ""


def test_dotenv_parsing(tmp_path):
    path = tmp_path / ".env"
    path.write_text('# comment\nA=1 # trailing\nexport B=\'{"k": "v # not a comment"}\'\nC="x\\ny"\nD=\n')
    assert read_dotenv(path) == {"A": "1", "B": '{"k": "v # not a comment"}', "C": "x\ny", "D": ""}
    path.write_text("A=1\nBARE\n")
    with pytest.raises(ValueError, match="cannot read line 2: 'BARE'"):
        read_dotenv(path)
    path.write_text('A=1\nB="unclosed\nC=3\nD E=4\n')  # python-dotenv alone would skip these with a warning
    with pytest.raises(ValueError, match="cannot read line 2: 'B=\"unclosed'; line 4: 'D E=4'"):
        read_dotenv(path)


def test_localize_changes_only_service_hosts_ports_and_the_image_home():
    local = LocalEndpoints(home="/tmp/h", api_port=1111, emulator_port=2222, redis_db=7)
    assert (
        localize("postgresql+psycopg2://u:p@postgres:5432/db", local) == "postgresql+psycopg2://u:p@127.0.0.1:5432/db"
    )
    assert localize("postgres://u:p@postgres:5432/ledger", local) == "postgres://u:p@127.0.0.1:5432/ledger"
    assert localize("redis://:@redis:6379/0", local) == "redis://:@127.0.0.1:6379/7"
    assert localize("http://airflow-apiserver:8080/execution/", local) == "http://127.0.0.1:1111/execution/"
    assert (
        localize("aws://a:b@/?endpoint_url=http%3A%2F%2Fhealthimaging-emulator%3A8089&x=1", local)
        == "aws://a:b@/?endpoint_url=http%3A%2F%2F127.0.0.1%3A2222&x=1"
    )
    assert localize("/opt/airflow/config/airflow.cfg", local) == "/tmp/h/config/airflow.cfg"
    for untouched in ("CeleryExecutor", "postgres", "airflow:admin", "/opt/airflowx", "s3://redis/key"):
        assert localize(untouched, local) == untouched
    assert (
        localize("postgresql://postgres:5432@postgres:5432/db", local) == "postgresql://postgres:5432@127.0.0.1:5432/db"
    )
    with pytest.raises(ValueError, match="not a documented substitution"):
        localize("http://airflow-apiserver:9999/", local)


@pytest.fixture
def planned(tmp_path) -> ProcessStack:
    """The process stack's plan (nothing started) from .env.example, as `make stack` would run it."""
    stack = ProcessStack(
        tmp_path / "home",
        workers=3,
        env_file=ENV_EXAMPLE,
        environ={"PATH": "/usr/bin", "HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "Nope"},
    )
    stack.plan(postgres_user="postgres", redis_db=5, api_port=1111, emulator_port=2222)
    return stack


def test_process_stack_runs_the_compose_services_commands(planned, raw):
    processes = planned.processes
    assert list(processes) == [
        "healthimaging-emulator",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
        "airflow-worker-3",
    ]
    for name, process in processes.items():
        if process.service in AIRFLOW_SERVICES:
            expected = compose.command(raw, process.service, planned.variables)
            assert Path(process.argv[0]).name == "airflow", name
            worker = process.service == "airflow-worker"
            extra = ["--celery-hostname", f"celery@worker{name.rsplit('-', 1)[1]}"] if worker else []
            assert process.argv[1:] == expected + extra, name
    init = compose.service(raw, "airflow-init", planned.variables)["command"][1]
    assert shlex.join(processes["airflow-init"].argv[1:]) == "-m stack.init" and "python -m stack.init" in init
    emulator = processes["healthimaging-emulator"].argv
    assert emulator[1:3] == ["-m", "healthimaging_emulator"]
    compose_args = compose.command(raw, "healthimaging-emulator", planned.variables)
    # Only the host, the port and the state folder (under /opt/airflow) differ.
    assert [(a, b) for a, b in zip(compose_args, emulator[3:], strict=True) if a != b] == [
        ("0.0.0.0", "127.0.0.1"),
        ("8089", "2222"),
        ("/opt/airflow/emulator-state", f"{planned.home}/emulator-state"),
    ]


@pytest.mark.parametrize(
    "name",
    [
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker-1",
        "airflow-worker-2",
    ],
)
def test_process_stack_environment_is_the_compose_environment(planned, raw, name):
    process = planned.processes[name]
    expected = compose.environment(raw, process.service, planned.variables)
    local = planned.local
    # 1. Every compose variable, with the same value up to the documented substitutions.
    for key, value in expected.items():
        assert process.env[key] == localize(value, local), key
        if process.env[key] != value:
            assert re.search(
                r"(@|//|%2F)(postgres|redis|airflow-apiserver|healthimaging-emulator)(:|%3A)|/opt/airflow", value
            ), (key, value)
    # 2. No compose service host is left.
    for key, value in process.env.items():
        assert not re.search(
            r"(@|//|%2F)(postgres|redis|airflow-apiserver|healthimaging-emulator)(:|%3A)\d+(?![\d@])", value
        ), key
    # 3. Nothing else but the documented runner-only variables, .env's variables (compose's env_file)
    #    and the shell's non-Airflow environment.
    extra = set(process.env) - set(expected)
    env_file = set(read_dotenv(ENV_EXAMPLE)) | set(RUNNER_VARIABLES)
    assert extra - env_file - {"PATH", "HOME"} <= set(RUNNER_ONLY_VARIABLES), extra
    assert "Nope" not in process.env.values()  # the shell's Airflow settings do not leak in, as in compose
    # 4. The variables the stack chose instead of .env's are the documented ones.
    assert {
        k
        for k in planned.variables
        if planned.variables[k] != read_dotenv(ENV_EXAMPLE).get(k)
        and k not in ("PATH", "HOME", "AIRFLOW__CORE__EXECUTOR")
    } <= set(RUNNER_VARIABLES)


def test_process_stack_endpoints(planned):
    env = planned.processes["airflow-worker-2"].env
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == f"postgresql+psycopg2://postgres:airflow@127.0.0.1:5432/{planned.variables['POSTGRES_DB']}"
    )
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:@127.0.0.1:6379/5"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:1111/execution/"
    assert json.dumps(env["AIRFLOW_CONN_AWS_DEFAULT"]).count("127.0.0.1%3A2222") == 1
    assert (
        env["STACK_HOSTNAME"] == "worker2" and env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "stack.hostname.get_hostname"
    )
    ports = {
        p.env.get("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT")
        for p in planned.processes.values()
        if p.service == "airflow-worker"
    }
    assert len(ports) == 3  # one log server port per worker on one machine
    api = planned.processes["airflow-apiserver"].env
    assert (api["AIRFLOW__API__HOST"], api["AIRFLOW__API__PORT"]) == ("127.0.0.1", "1111")
    assert (
        planned.processes["airflow-scheduler"].env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"]
        == "127.0.0.1"
    )
    # The login and the Fernet key are airflow-init's, in the stack's config folder (compose: ./config).
    assert planned.passwords_file == planned.home / "config" / "simple_auth_manager_passwords.json"
    assert planned.fernet_key_file == planned.home / "config" / "fernet_key"
    with pytest.raises(RuntimeError, match="airflow-init writes it"):
        planned.credentials  # noqa: B018 - nothing has run yet
    assert planned.variables["POSTGRES_DB"].startswith("hi_stack_")
    assert planned.ledger_database == planned.variables["POSTGRES_DB"] + "_ledger"
