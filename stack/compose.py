"""``docker-compose.yaml`` and ``.env`` read the way ``docker compose`` reads them, and the documented
substitutions that turn a compose service into a process on this machine.

One source of truth: the compose file's ``x-airflow-common`` environment (and each service's
``environment``, which merges it) is the configuration of every Airflow component, in Docker and as
processes. Variables come from ``.env`` (``.env.example`` when there is none) and the shell, the shell
winning, as in compose. The process stack changes nothing but what :data:`SUBSTITUTIONS` lists:
service host names and ports become local addresses and ports (the published services' address is the
one compose publishes them on, :func:`published_ports`), and the image's ``/opt/airflow`` becomes the
stack's home folder. Everything the process stack adds on top (each is
something Docker provides: a container's own host name, its own ports, the image's paths) is listed in
:data:`stack.process_stack.RUNNER_ONLY_VARIABLES`. ``tests/test_docker_compose.py`` checks both.

This module needs the standard library, PyYAML (:func:`load_compose`) and python-dotenv (:func:`read_dotenv`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
ENV_FILE = REPO_ROOT / ".env"
ENV_EXAMPLE = REPO_ROOT / ".env.example"

#: The image's AIRFLOW_HOME, where compose mounts dags/, plugins/, logs/, config/ and manifests/.
IMAGE_HOME = "/opt/airflow"

#: The Airflow services of the compose file and what each runs (``airflow <command>``).
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
INIT_SERVICE = "airflow-init"
EMULATOR_SERVICE = "healthimaging-emulator"
#: The infrastructure services the machine provides when the stack runs as processes.
INFRASTRUCTURE_SERVICES = ("postgres", "redis")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty, or a malformed ``${...}``."""


# ---------------------------------------------------------------------------------------- .env files


def read_dotenv(path: str | os.PathLike[str]) -> dict[str, str]:
    """The variables of a ``.env`` file (python-dotenv's parser, as compose's: ``export``, comments, quotes).

    Values are not interpolated (this file's values contain none) and the shell is not read here:
    :func:`compose_variables` puts the shell's variables over these. A line python-dotenv cannot parse
    (an unclosed quote, ``KEY VALUE``) and a ``KEY`` without ``=`` are refused, naming the line: compose
    would take a bare key from the shell, and a skipped line would silently drop a setting.
    """
    from dotenv.parser import parse_stream

    with open(path, encoding="utf-8") as stream:
        bindings = list(parse_stream(stream))
    bad = [
        f"line {b.original.line}: {b.original.string.strip()[:40]!r}"
        for b in bindings
        if b.error or (b.key is not None and b.value is None)
    ]
    if bad:
        raise ValueError(f"{path}: expected KEY=value lines; cannot read {'; '.join(bad)}")
    return {b.key: b.value for b in bindings if b.key is not None}


def default_env_file() -> Path:
    """``.env`` if it exists (what ``docker compose`` reads), else ``.env.example``."""
    return ENV_FILE if ENV_FILE.exists() else ENV_EXAMPLE


def compose_variables(
    env_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables compose interpolates with: the ``.env`` file's, overridden by the shell's."""
    variables = read_dotenv(env_file or default_env_file())
    variables.update(os.environ if environ is None else environ)
    return variables


# -------------------------------------------------------------------------------------- interpolation


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``; defaults may nest ``${...}``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 1)
            out.append(_expand(text[i + 2 : end], variables))
            i = end + 1
        elif (match := _NAME.match(text, i + 1)) is not None:
            out.append(variables.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    """The index of the ``}`` closing the ``{`` at ``start`` (nested ``${...}`` skipped)."""
    depth, i = 1, start + 1
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            depth += 1
            i += 2
        else:
            if text[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
    raise InterpolationError(f"unterminated ${{...}} in {text!r}")


def _expand(body: str, variables: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"invalid variable reference ${{{body}}}")
    name, rest = match.group(), body[match.end() :]
    value = variables.get(name)
    if not rest:
        return value or ""
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            word = rest[len(operator) :]
            break
    else:
        raise InterpolationError(f"invalid variable reference ${{{body}}}")
    present = value is not None and (value != "" or not operator.startswith(":"))
    if operator in (":-", "-"):
        return value if present else interpolate(word, variables)
    if operator in (":?", "?"):
        if not present:
            raise InterpolationError(f"{name}: {interpolate(word, variables) or 'required variable is not set'}")
        return value
    return interpolate(word, variables) if present else ""


def interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    """Interpolate every string value (not key) of a parsed compose file."""
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, variables) for key, value in node.items()}
    return node


# ------------------------------------------------------------------------------------- compose file


def load_compose(path: str | os.PathLike[str] = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as a dict: YAML anchors, aliases and ``<<`` merge keys resolved, not interpolated."""
    import yaml

    with open(path) as stream:
        return yaml.safe_load(stream)


def service(compose: Mapping[str, Any], name: str, variables: Mapping[str, str]) -> dict[str, Any]:
    """One service, interpolated (``x-airflow-common`` is already merged into it by the YAML loader)."""
    return interpolate_tree(compose["services"][name], variables)


def environment(compose: Mapping[str, Any], name: str, variables: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment`` as strings, interpolated (a list form ``KEY=value`` is accepted too)."""
    env = service(compose, name, variables).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, variables.get(item, "")) for item in env)
    return {
        key: "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in env.items()
    }


def common_environment(compose: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, str]:
    """``x-airflow-common``'s environment, interpolated."""
    env = interpolate_tree(compose["x-airflow-common"]["environment"], variables)
    return {key: "" if value is None else str(value) for key, value in env.items()}


@dataclass(frozen=True)
class PublishedPort:
    """One ``ports:`` entry of a service: ``HOST_IP:HOST_PORT:CONTAINER_PORT``."""

    host_ip: str | None  # None: compose publishes on every interface of the host
    host_port: str
    container_port: str


def published_ports(compose: Mapping[str, Any], name: str, variables: Mapping[str, str]) -> list[PublishedPort]:
    """A service's published ports, interpolated (short syntax; ``[::1]:80:80`` for an IPv6 address)."""
    ports = []
    for entry in service(compose, name, variables).get("ports") or []:
        if not isinstance(entry, str):
            raise ValueError(
                f"{name}: only the short ports syntax (HOST_IP:HOST_PORT:CONTAINER_PORT) is read, got {entry!r}"
            )
        parts = entry.rsplit(":", 2)
        if len(parts) == 3:
            ports.append(PublishedPort(parts[0].strip("[]"), parts[1], parts[2]))
        elif len(parts) == 2:
            ports.append(PublishedPort(None, parts[0], parts[1]))
        else:
            ports.append(PublishedPort(None, "", parts[0]))  # a random host port
    return ports


def publish_address(compose: Mapping[str, Any], name: str, variables: Mapping[str, str]) -> str:
    """The one host address a service's ports are published on (what its process listens on, run locally)."""
    addresses = {port.host_ip for port in published_ports(compose, name, variables)}
    if len(addresses) != 1 or None in addresses:
        raise ValueError(
            f"{name} must publish its ports on one given address (HOST_IP:HOST_PORT:CONTAINER_PORT), "
            f"got {sorted(map(str, addresses))}"
        )
    return addresses.pop()


def command(compose: Mapping[str, Any], name: str, variables: Mapping[str, str]) -> list[str]:
    """A service's ``command`` as an argument list (a string is split like the shell does)."""
    import shlex

    value = service(compose, name, variables).get("command") or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# ----------------------------------------------------------------------------------- substitutions


#: Addresses that mean "every interface": a client connects to the loopback address instead.
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class LocalEndpoints:
    """Where the compose services are when the stack runs as processes on one machine.

    ``api_host`` and ``emulator_host`` are the addresses the api-server and the emulator listen on: the
    ones compose publishes their ports on (``HEALTHIMAGING_PUBLISH_ADDRESS``, 127.0.0.1 by default).
    """

    home: str
    api_port: int
    emulator_port: int
    redis_db: int
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    api_host: str = "127.0.0.1"
    emulator_host: str = "127.0.0.1"

    @property
    def api_connect_host(self) -> str:
        return connect_host(self.api_host)

    @property
    def emulator_connect_host(self) -> str:
        return connect_host(self.emulator_host)


def connect_host(listen_host: str) -> str:
    """Where a client on this machine reaches a server listening on ``listen_host``."""
    if listen_host in WILDCARD_ADDRESSES:
        return "::1" if listen_host == "::" else "127.0.0.1"
    return listen_host


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


#: The only changes made to compose values to run the stack as processes (see :func:`localize`):
#: ``(compose service, its port in compose, what replaces host:port locally)``.
SUBSTITUTIONS = (
    ("postgres", 5432, "the machine's PostgreSQL (127.0.0.1:5432)"),
    ("redis", 6379, "the machine's Redis (127.0.0.1:6379), on a Redis database of its own (/N instead of /0)"),
    ("airflow-apiserver", 8080, "the address compose publishes it on (127.0.0.1 by default) and a free port"),
    ("healthimaging-emulator", 8089, "the address compose publishes it on (127.0.0.1 by default) and a free port"),
    (IMAGE_HOME, None, "the stack's home folder (the image's AIRFLOW_HOME)"),
)

# host:port after "@", "//" or "%2F" (an URL-encoded endpoint_url inside a connection URI), with ":" or "%3A";
# not user:password (followed by "@").
_HOST_PORT = re.compile(
    r"(?P<pre>@|//|%2[Ff])(?P<host>postgres|redis|airflow-apiserver|healthimaging-emulator)"
    r"(?P<sep>:|%3[Aa])(?P<port>\d+)(?![\d@])(?P<db>/\d+)?"
)


def localize(value: str, local: LocalEndpoints) -> str:
    """A compose value as the process stack uses it: :data:`SUBSTITUTIONS` applied, nothing else."""

    def replace(match: re.Match[str]) -> str:
        host, port, db = match.group("host"), int(match.group("port")), match.group("db")
        target = {
            ("postgres", 5432): (local.postgres_host, local.postgres_port),
            ("redis", 6379): (local.redis_host, local.redis_port),
            ("airflow-apiserver", 8080): (local.api_connect_host, local.api_port),
            ("healthimaging-emulator", 8089): (local.emulator_connect_host, local.emulator_port),
        }.get((host, port))
        if target is None:
            raise ValueError(f"{host}:{port} in {value!r} is not a documented substitution")
        if host == "redis" and db is not None:
            db = f"/{local.redis_db}"
        return f"{match.group('pre')}{url_host(target[0])}{match.group('sep')}{target[1]}{db or ''}"

    value = _HOST_PORT.sub(replace, value)
    return re.sub(rf"(?<![\w/.-]){re.escape(IMAGE_HOME)}(?=/|$|[\s\"'])", local.home.replace("\\", "/"), value)


def localize_environment(env: Mapping[str, str], local: LocalEndpoints) -> dict[str, str]:
    return {key: localize(value, local) for key, value in env.items()}
