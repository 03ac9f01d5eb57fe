"""The stack is closed by default: published ports on 127.0.0.1, a generated login in a 0600 file, connection
passwords encrypted with a Fernet key airflow-init generates, the same in compose and in the process stack.

- the compose file (read through stack/compose.py) publishes every port on 127.0.0.1, or on
  HEALTHIMAGING_PUBLISH_ADDRESS when it is set; the process stack listens on that same address;
- ``python -m stack.init``, run as a process with the environment the process stack gives airflow-init (the
  compose service's, localized) and a SQLite metadata DB: the passwords file and the Fernet key file, both
  0600, a generated password that is not printed, a user's password kept, generated secrets kept by a second
  run, a 0644 file made 0600; a connection password stored through Airflow is encrypted with the generated key;
- the process stack itself: the old airflow/airflow login is refused and the generated one accepted, a
  connection stored through the REST API is encrypted with the key file and read back by a worker's
  configuration, and every listening socket of the stack is on 127.0.0.1 (Airflow's log servers aside: they
  bind every interface in Airflow's own code and answer nothing without a JWT).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV, admin_request
from stack import compose
from stack.compose import COMPOSE_FILE, ENV_EXAMPLE, read_dotenv
from stack.process_stack import ProcessStack, write_dotenv
from stack.processes import spawn, stop_all
from tests.airflow_stack import StackClient, shell_environ

PUBLISHING_SERVICES = ("airflow-apiserver", "flower", "healthimaging-emulator")
ADDRESS_VARIABLE = "HEALTHIMAGING_PUBLISH_ADDRESS"
SHELL = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}


@pytest.fixture(scope="module")
def raw() -> dict:
    return compose.load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def dotenv(tmp_path_factory) -> Path:
    """What `make .env` writes, with the login password and the Fernet key left to airflow-init."""
    path = write_dotenv(tmp_path_factory.mktemp("dotenv") / ".env")
    lines = [
        "_AIRFLOW_WWW_USER_PASSWORD="
        if line.startswith("_AIRFLOW_WWW_USER_PASSWORD=")
        else "AIRFLOW_FERNET_KEY="
        if line.startswith("AIRFLOW_FERNET_KEY=")
        else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")
    assert read_dotenv(path)["_AIRFLOW_WWW_USER_PASSWORD"] == "" and read_dotenv(path)["AIRFLOW_FERNET_KEY"] == ""
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------ published ports


def test_compose_publishes_every_port_on_loopback_by_default(raw, dotenv):
    variables = compose.compose_variables(dotenv, environ={})
    published = {name: compose.published_ports(raw, name, variables) for name in raw["services"]}
    assert {name for name, ports in published.items() if ports} == set(PUBLISHING_SERVICES)
    for name in PUBLISHING_SERVICES:
        assert [port.host_ip for port in published[name]] == ["127.0.0.1"], name
    assert [p.host_port for p in published["airflow-apiserver"]] == [variables["AIRFLOW_API_PORT"]]
    assert [p.host_port for p in published["healthimaging-emulator"]] == [variables["HEALTHIMAGING_EMULATOR_PORT"]]
    # PostgreSQL and Redis stay on the compose network.
    assert "ports" not in raw["services"]["postgres"] and "ports" not in raw["services"]["redis"]


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.10"])
def test_compose_publishes_on_the_address_the_user_sets(raw, dotenv, address):
    variables = compose.compose_variables(dotenv, environ={ADDRESS_VARIABLE: address})
    for name in PUBLISHING_SERVICES:
        assert {port.host_ip for port in compose.published_ports(raw, name, variables)} == {address}, name
        assert compose.publish_address(raw, name, variables) == address


def test_the_process_stack_listens_where_compose_publishes(dotenv, tmp_path):
    default = ProcessStack(tmp_path / "a", workers=1, env_file=dotenv, environ=SHELL)
    default.plan(api_port=1111, emulator_port=2222)
    assert default.processes["airflow-apiserver"].env["AIRFLOW__API__HOST"] == "127.0.0.1"
    emulator = default.processes["healthimaging-emulator"].argv
    assert emulator[emulator.index("--host") + 1] == "127.0.0.1"

    given = ProcessStack(tmp_path / "b", workers=1, env_file=dotenv, environ={**SHELL, ADDRESS_VARIABLE: "127.0.0.2"})
    given.plan(api_port=1111, emulator_port=2222)
    api_env = given.processes["airflow-apiserver"].env
    assert api_env["AIRFLOW__API__HOST"] == "127.0.0.2"
    emulator = given.processes["healthimaging-emulator"].argv
    assert emulator[emulator.index("--host") + 1] == "127.0.0.2"
    # Clients (the stack's own components among them) reach them there.
    assert (given.api_url, given.emulator_url) == ("http://127.0.0.2:1111", "http://127.0.0.2:2222")
    worker = given.processes["airflow-worker-1"].env
    assert worker["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.2:1111/execution/"
    assert "127.0.0.2%3A2222" in worker["AIRFLOW_CONN_AWS_DEFAULT"]
    # Not published in compose: the scheduler's health server stays on loopback either way.
    scheduler = given.processes["airflow-scheduler"].env
    assert scheduler["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"


# ------------------------------------------------------------------------------- emulator admin token


def test_compose_gives_the_emulator_the_admin_token_from_dotenv(raw, dotenv):
    variables = compose.compose_variables(dotenv, environ={})
    assert len(variables[ADMIN_TOKEN_ENV]) >= 32  # `make .env` generated it
    assert compose.environment(raw, "healthimaging-emulator", variables)[ADMIN_TOKEN_ENV] == variables[ADMIN_TOKEN_ENV]
    # Its health check sends it (expanded by the container's shell, not written into the compose config).
    check = compose.service(raw, "healthimaging-emulator", variables)["healthcheck"]["test"]
    assert "Authorization: Bearer ${HEALTHIMAGING_EMULATOR_ADMIN_TOKEN}" in check[1]
    with pytest.raises(compose.InterpolationError, match=f"{ADMIN_TOKEN_ENV}: set {ADMIN_TOKEN_ENV} in .env"):
        compose.service(raw, "healthimaging-emulator", {k: v for k, v in variables.items() if k != ADMIN_TOKEN_ENV})


def test_the_process_stack_gives_the_emulator_a_token(dotenv, tmp_path):
    given = ProcessStack(tmp_path / "a", workers=1, env_file=dotenv, environ=SHELL)
    given.plan()
    assert given.emulator_admin_token == read_dotenv(dotenv)[ADMIN_TOKEN_ENV]
    assert given.processes["healthimaging-emulator"].env[ADMIN_TOKEN_ENV] == given.emulator_admin_token
    # .env.example leaves it empty: the stack generates one, as it does the JWT secret.
    generated = ProcessStack(tmp_path / "b", workers=1, env_file=ENV_EXAMPLE, environ=SHELL)
    generated.plan()
    assert len(generated.emulator_admin_token) >= 32
    assert generated.processes["healthimaging-emulator"].env[ADMIN_TOKEN_ENV] == generated.emulator_admin_token
    assert generated.emulator_admin_token not in generated.processes["healthimaging-emulator"].argv


def listening_addresses(pid: int, timeout: float = 60) -> set[tuple[str, int]]:
    """The TCP addresses a process (or its children) listens on, once it listens on any."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parent = psutil.Process(pid)
        pids = {pid} | {child.pid for child in parent.children(recursive=True)}
        found = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids
        }
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"process {pid} listened on nothing in {timeout}s")


def health_status(stack: ProcessStack, host_name: str, token: str) -> int:
    """The emulator's answer to GET /_emulator/health sent with ``Host: <host_name>:<port>``."""
    connection = http.client.HTTPConnection(stack.local.emulator_connect_host, stack.local.emulator_port, timeout=10)
    try:
        connection.request(
            "GET",
            "/_emulator/health",
            headers={"Host": f"{host_name}:{stack.local.emulator_port}", "Authorization": f"Bearer {token}"},
        )
        return connection.getresponse().status
    finally:
        connection.close()


def test_compose_services_call_the_emulator_by_a_name_it_answers_to(raw, dotenv):
    from airflow.models.connection import Connection

    variables = compose.compose_variables(dotenv, environ={})
    endpoint = Connection(
        conn_id="aws_default", uri=compose.common_environment(raw, variables)["AIRFLOW_CONN_AWS_DEFAULT"]
    ).extra_dejson["endpoint_url"]
    args = compose.command(raw, "healthimaging-emulator", variables)
    allowed = [args[i + 1] for i, arg in enumerate(args) if arg == "--allowed-host"]
    assert urllib.parse.urlsplit(endpoint).hostname in allowed


def test_the_emulator_listens_on_the_given_address_only(dotenv, tmp_path):
    """The emulator process as the process stack runs it, with HEALTHIMAGING_PUBLISH_ADDRESS=127.0.0.2."""
    stack = ProcessStack(
        tmp_path / "home",
        workers=1,
        env_file=dotenv,
        environ={**SHELL, ADDRESS_VARIABLE: "127.0.0.2", "HEALTHIMAGING_EMULATOR_SYNTHETIC_IMAGE_SETS": "1"},
    )
    process = stack.plan()["healthimaging-emulator"]
    (tmp_path / "home").mkdir()
    with (tmp_path / "emulator.log").open("ab") as log:
        popen = spawn(process.argv, cwd=tmp_path / "home", env=process.env, log=log)
        try:
            assert listening_addresses(popen.pid) == {("127.0.0.2", stack.local.emulator_port)}, (
                tmp_path / "emulator.log"
            ).read_text()
            assert stack.emulator_admin("GET", "health")
            # The compose services' name for it passes its DNS-rebinding check; another name does not.
            token = stack.emulator_admin_token
            assert health_status(stack, "healthimaging-emulator", token) == 200
            assert health_status(stack, "rebound.example", token) == 403
            with pytest.raises(urllib.error.URLError):
                admin_request(
                    f"http://127.0.0.1:{stack.local.emulator_port}",
                    "GET",
                    "health",
                    token=stack.emulator_admin_token,
                    timeout=5,
                )
        finally:
            stop_all([popen], 10)


# ------------------------------------------------------------------------------------- airflow-init


@pytest.fixture(scope="module")
def metadata_db(tmp_path_factory) -> str:
    """One SQLite metadata DB for every init run of this module (the first run migrates it)."""
    return f"sqlite:///{tmp_path_factory.mktemp('metadata') / 'airflow.db'}"


def init_environment(home: Path, dotenv: Path, metadata_db: str, **variables: str) -> dict[str, str]:
    """What the process stack gives airflow-init (the compose service's environment, localized), on SQLite and
    without the PostgreSQL ledger; ``variables`` are the shell's, as for compose."""
    stack = ProcessStack(home, workers=1, env_file=dotenv, environ={**SHELL, **variables}, emulator=False)
    env = stack.plan()["airflow-init"].env
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_db
    del env["AIRFLOW_CONN_HEALTHIMAGING_LEDGER"]
    return env


def run_init(env: Mapping[str, str], *, check: bool = True) -> subprocess.CompletedProcess:
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "stack.init"],
        env=dict(env),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def passwords_file(env: Mapping[str, str]) -> Path:
    return Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])


def key_file(env: Mapping[str, str]) -> Path:
    return Path(env["AIRFLOW__CORE__FERNET_KEY_CMD"].split(" ", 1)[1])


def login_password(env: Mapping[str, str]) -> str:
    return json.loads(passwords_file(env).read_text())["airflow"]


@pytest.fixture(scope="module")
def first_init(tmp_path_factory, dotenv, metadata_db) -> tuple[dict[str, str], subprocess.CompletedProcess]:
    """airflow-init's first run with neither a password nor a Fernet key given."""
    env = init_environment(tmp_path_factory.mktemp("init") / "home", dotenv, metadata_db)
    return env, run_init(env)


def test_init_generates_the_login_into_a_private_file_and_says_where(first_init):
    env, result = first_init
    path = passwords_file(env)
    assert path == Path(env["AIRFLOW_HOME"]) / "config" / "simple_auth_manager_passwords.json"
    assert mode(path) == 0o600
    password = login_password(env)
    assert password != "airflow" and len(password) >= 24
    logs = output(result)
    assert password not in logs
    assert f"login 'airflow': password generated, in {path}" in logs and f"cat {path}" in logs
    # Nothing else is left readable next to it (the temporary file is renamed, not copied).
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_init_generates_the_fernet_key_into_a_private_file(first_init):
    env, result = first_init
    from cryptography.fernet import Fernet

    key = key_file(env).read_text()
    Fernet(key.encode())  # a valid key
    assert key_file(env) == Path(env["AIRFLOW_HOME"]) / "config" / "fernet_key"
    assert mode(key_file(env)) == 0o600
    assert key not in output(result) and f"Fernet key generated in {key_file(env)}" in output(result)


def test_init_keeps_generated_secrets_on_a_second_run(first_init):
    env, _ = first_init
    password, key = login_password(env), key_file(env).read_text()
    result = run_init(env)
    assert (login_password(env), key_file(env).read_text()) == (password, key)
    assert "login 'airflow': password kept" in output(result) and "Fernet key kept" in output(result)
    assert password not in output(result)


def test_init_makes_readable_credential_files_private(first_init):
    env, _ = first_init
    password, key = login_password(env), key_file(env).read_text()
    for path in (passwords_file(env), key_file(env)):
        path.chmod(0o644)
    result = run_init(env)
    assert mode(passwords_file(env)) == 0o600 and mode(key_file(env)) == 0o600
    assert (login_password(env), key_file(env).read_text()) == (password, key)
    assert f"{key_file(env)} was mode 0644; now 0600" in output(result)


def test_init_keeps_what_the_user_gives(tmp_path, dotenv, metadata_db):
    from cryptography.fernet import Fernet

    given_key = Fernet.generate_key().decode()
    env = init_environment(
        tmp_path / "home",
        dotenv,
        metadata_db,
        _AIRFLOW_WWW_USER_PASSWORD="correct-horse-42",
        AIRFLOW_FERNET_KEY=given_key,
    )
    result = run_init(env)
    assert login_password(env) == "correct-horse-42" and key_file(env).read_text() == given_key
    assert mode(passwords_file(env)) == 0o600 and mode(key_file(env)) == 0o600
    assert "correct-horse-42" not in output(result) and given_key not in output(result)
    assert "password set from _AIRFLOW_WWW_USER_PASSWORD" in output(result)
    # Later runs without them keep them (nothing is regenerated over a user's choice).
    run_init(init_environment(tmp_path / "home", dotenv, metadata_db))
    assert login_password(env) == "correct-horse-42" and key_file(env).read_text() == given_key


def test_init_refuses_an_empty_fernet_key_variable(tmp_path, dotenv, metadata_db):
    """An empty AIRFLOW__CORE__FERNET_KEY would win over the key file and store passwords in clear."""
    env = {**init_environment(tmp_path / "home", dotenv, metadata_db), "AIRFLOW__CORE__FERNET_KEY": ""}
    result = run_init(env, check=False)
    assert result.returncode != 0
    assert "AIRFLOW__CORE__FERNET_KEY is set but empty" in result.stderr
    assert not key_file(env).exists() and not passwords_file(env).exists()


def test_init_refuses_an_invalid_fernet_key(tmp_path, dotenv, metadata_db):
    env = init_environment(tmp_path / "home", dotenv, metadata_db, AIRFLOW_FERNET_KEY="not-a-key")
    result = run_init(env, check=False)
    assert result.returncode != 0 and "AIRFLOW_FERNET_KEY is not a valid Fernet key" in result.stderr
    assert "not-a-key" not in result.stderr and not key_file(env).exists()


def stored_connection(metadata_db: str, conn_id: str) -> tuple[str, bool]:
    with sqlite3.connect(metadata_db.removeprefix("sqlite:///")) as db:
        (row,) = db.execute("SELECT password, is_encrypted FROM connection WHERE conn_id = ?", (conn_id,)).fetchall()
    return row[0], bool(row[1])


def add_connection(env: Mapping[str, str], conn_id: str, password: str) -> None:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "connections", "add", conn_id, "--conn-type", "postgres", "--conn-password", password],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_connection_passwords_are_encrypted_with_the_generated_key(first_init, metadata_db):
    from cryptography.fernet import Fernet

    env, _ = first_init
    conn_id = f"probe_{uuid.uuid4().hex[:8]}"
    add_connection(env, conn_id, "plain-secret")
    stored, encrypted = stored_connection(metadata_db, conn_id)
    assert encrypted and stored != "plain-secret"
    assert Fernet(key_file(env).read_text().encode()).decrypt(stored.encode()) == b"plain-secret"
    # Why compose must not set AIRFLOW__CORE__FERNET_KEY at all: set empty, it wins over the key file.
    add_connection({**env, "AIRFLOW__CORE__FERNET_KEY": ""}, f"{conn_id}_clear", "plain-secret")
    assert stored_connection(metadata_db, f"{conn_id}_clear") == ("plain-secret", False)


# ------------------------------------------------------------------------------------- process stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, dotenv) -> Iterator[ProcessStack]:
    environ = shell_environ()
    environ["HEALTHIMAGING_EMULATOR_SYNTHETIC_IMAGE_SETS"] = "10"
    stack = ProcessStack(
        tmp_path_factory.mktemp("secure") / "home", workers=1, worker_concurrency=1, env_file=dotenv, environ=environ
    )
    with stack:
        yield stack


def post_token(stack: ProcessStack, username: str, password: str) -> int:
    request = urllib.request.Request(
        f"{stack.api_url}/auth/token",
        method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["access_token"]
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_api_server_accepts_only_the_generated_login(stack):
    username, password = stack.credentials
    assert (username, mode(stack.passwords_file), mode(stack.fernet_key_file)) == ("airflow", 0o600, 0o600)
    assert password != "airflow"
    assert post_token(stack, "airflow", "airflow") == 401
    assert post_token(stack, username, password) == 201
    assert password not in stack.log_path("airflow-init").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_component_uses_the_generated_fernet_key(stack):
    """A connection stored through the api-server is encrypted with the key file; a worker decrypts it."""
    import sqlalchemy as sa
    from cryptography.fernet import Fernet

    api = StackClient(stack, stack.token())
    conn_id = f"probe_{uuid.uuid4().hex[:8]}"
    api.api(
        "POST", "/api/v2/connections", {"connection_id": conn_id, "conn_type": "postgres", "password": "plain-secret"}
    )
    engine = sa.create_engine(stack.sql_alchemy_conn)
    try:
        with engine.connect() as db:
            stored, encrypted = db.execute(
                sa.text("SELECT password, is_encrypted FROM connection WHERE conn_id = :c"), {"c": conn_id}
            ).one()
    finally:
        engine.dispose()
    assert encrypted and stored != "plain-secret"
    assert Fernet(stack.fernet_key_file.read_text().encode()).decrypt(stored.encode()) == b"plain-secret"
    worker = stack.processes[stack.worker_names[0]].env
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "connections", "get", conn_id, "-o", "json"],
        env=worker,
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)[0]["password"] == "plain-secret"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_emulator_admin_api_wants_the_stack_token(stack):
    assert admin_request(stack.emulator_url, "GET", "counters", token="")[0] == 401
    assert admin_request(stack.emulator_url, "GET", "counters", token="wrong")[0] == 401
    status, counters = admin_request(stack.emulator_url, "GET", "counters", token=stack.emulator_admin_token)
    assert status == 200 and isinstance(counters, dict)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_stack_listens_on_loopback_only(stack):
    import psutil

    pids = set(stack.pids())
    listening = {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }
    ports = {port for _, port in listening}
    assert {stack.local.api_port, stack.local.emulator_port} <= ports
    scheduler = stack.processes["airflow-scheduler"].env
    assert ("127.0.0.1", int(scheduler["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"])) in listening
    # Airflow's log servers bind every interface (airflow.utils.serve_logs: host=""), not configurable; they
    # serve nothing without a JWT signed with the stack's secret.
    log_servers = {
        int(p.env[key])
        for p in stack.processes.values()
        for key in ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT")
        if key in p.env
    }
    assert log_servers and log_servers <= ports
    elsewhere = {(ip, port) for ip, port in listening if ip != "127.0.0.1"}
    assert {port for _, port in elsewhere} <= log_servers, elsewhere
    for port in {port for _, port in elsewhere}:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/log/anything.log", timeout=10)
        assert refused.value.code == 403


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_compose_health_check_passes_on_the_process_stack(stack):
    """The compose file's health checks, run as the process stack runs them (stack.health), against this stack:
    every one it has (the api-server, scheduler, dag-processor, triggerer, the worker, the emulator, PostgreSQL and
    Redis) exits 0."""
    checks = stack.health_checks()
    assert {stack.processes[name].service if name in stack.processes else name for name in checks} == {
        *compose.AIRFLOW_SERVICES,
        compose.EMULATOR_SERVICE,
        *compose.INFRASTRUCTURE_SERVICES,
    }
    failed = {}
    for name, check in checks.items():
        result = check.run(stack.home)
        if result.returncode != 0:
            failed[name] = (check.argv, result.returncode, result.stdout[-2000:])
    assert not failed, failed


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_health_checks_fail_for_a_process_that_is_not_there(stack):
    """The checks that find their process by host name (the worker's Celery ping, the dag-processor's job) fail
    for a host name no process of the stack has: a pass above is the process answering, not the command."""
    for name in (stack.worker_names[0], "airflow-dag-processor"):
        check = stack.health_check(name)
        elsewhere = dataclasses.replace(check, env={**check.env, "HOSTNAME": "no-such-host"})
        assert elsewhere.run(stack.home).returncode != 0, name
