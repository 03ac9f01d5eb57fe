"""Is the stack up: Airflow's ``/api/v2/monitor/health``, and the compose file's health checks run on this
machine.

A compose ``healthcheck`` runs inside its container; :func:`compose_health_check` makes it a local command
with only these changes (:data:`HEALTH_CHECK_SUBSTITUTIONS`): ``localhost:<container port>`` becomes the
address and port the process listens on, ``HOSTNAME`` (which Docker sets to the container's host name) is the
host name the process registers under, and ``PATH`` starts with this interpreter's scripts (the image has
``airflow`` and ``celery`` on its ``PATH``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack import compose

#: The parts of ``/api/v2/monitor/health`` that must say ``healthy``.
AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")

HEALTH_CHECK_SUBSTITUTIONS = {
    "localhost:<container port>": "the address and port the service's process listens on",
    "HOSTNAME": "the container's host name; here, the host name the process registers under",
    "PATH": "the image's PATH has airflow and celery; here, this interpreter's scripts folder comes first",
}


def airflow_health(api_url: str) -> dict[str, Any] | None:
    """``GET /api/v2/monitor/health`` (no login needed), or None while the api-server does not answer."""
    try:
        with urllib.request.urlopen(f"{api_url}/api/v2/monitor/health", timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def wait_for_airflow(
    api_url: str, deadline: float, check_alive: Callable[[], None], diagnostics: Callable[[], str]
) -> None:
    """Wait until the metadata DB, scheduler, triggerer and dag-processor report healthy heartbeats (by
    ``deadline``, a :func:`time.monotonic` value); ``check_alive`` raises if a process died meanwhile."""
    health: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        check_alive()
        health = airflow_health(api_url)
        if health and all((health.get(part) or {}).get("status") == "healthy" for part in AIRFLOW_COMPONENTS):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Airflow did not become healthy in time; last health: {health}\n" + diagnostics())


@dataclass(frozen=True)
class HealthCheck:
    """A compose service's health check as a command on this machine."""

    process: str
    argv: list[str]
    env: dict[str, str]

    def run(self, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run it once (exit code 0: healthy), output captured."""
        return subprocess.run(
            self.argv,
            env=self.env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )


def compose_test(raw: Mapping[str, Any], service: str, variables: Mapping[str, str]) -> list[str]:
    """A service's ``healthcheck.test`` as compose runs it: ``CMD`` argv, or ``CMD-SHELL`` through ``/bin/sh``."""
    test = compose.service(raw, service, variables)["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "CMD":
        return list(rest)
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    raise ValueError(f"{service}: health check {test!r} is neither CMD nor CMD-SHELL")


def compose_health_check(
    raw: Mapping[str, Any],
    process: str,
    service: str,
    variables: Mapping[str, str],
    *,
    env: Mapping[str, str],
    hostname: str,
    ports: Mapping[int, tuple[str, int]],
) -> HealthCheck:
    """The health check of ``service`` for one of its processes: ``ports`` maps a container port to where the
    process listens (host, port), ``hostname`` is its host name."""

    def local(match: re.Match[str]) -> str:
        container_port = int(match.group(1))
        if container_port not in ports:
            raise ValueError(f"{service}: its health check probes localhost:{container_port}, which has no local port")
        host, port = ports[container_port]
        return f"{compose.url_host(host)}:{port}"

    argv = [re.sub(r"\blocalhost:(\d+)", local, arg) for arg in compose_test(raw, service, variables)]
    scripts = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    return HealthCheck(process, argv, {**env, "HOSTNAME": hostname, "PATH": f"{scripts}:{path}" if path else scripts})
