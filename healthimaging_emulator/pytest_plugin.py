"""pytest fixtures that run the emulator in-process on a free port.

Use from a ``conftest.py``: ``pytest_plugins = ["healthimaging_emulator.pytest_plugin"]``.

- ``healthimaging_emulator``: a running :class:`EmulatorHandle` (fresh in-memory state, rates raised
  with the ``fast`` profile, copies lasting 50 ms), torn down after the test.
- ``healthimaging_client``: a boto3 ``medical-imaging`` client configured for it.
- ``running_emulator(**kwargs)``: the same as a context manager, with :class:`EmulatorServer` arguments
  (``s3_root=...`` for imports, ``admin_token=...``).

Every response is checked against the service model twice: by the server before it is written
(strict mode) and by the client on the wire (``before-parse``). A test whose responses broke the
model fails at teardown with the list of problems.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from healthimaging_emulator import validation
from healthimaging_emulator.admin_client import admin_request
from healthimaging_emulator.realism import Realism, Timing
from healthimaging_emulator.server import EmulatorServer

FAST_TIMING = dict(
    copy_fixed_seconds=0.05,
    copy_per_instance_seconds=0.0,
    update_seconds=0.05,
    delete_seconds=0.05,
    datastore_seconds=0.05,
    import_seconds=0.05,
)


def make_client(
    url: str, *, retries: int = 1, region: str = "us-east-1", problems: list[str] | None = None, **config: Any
):
    """A boto3 client for an emulator at ``url``: host-prefix injection off, dummy credentials.

    ``retries`` is botocore's total attempts (1 = no retries). Responses are validated on the wire
    into ``problems`` when a list is given.
    """
    client = boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(inject_host_prefix=False, retries={"mode": "standard", "total_max_attempts": retries}, **config),
    )
    if problems is not None:
        client.meta.events.register("before-parse.medical-imaging.*", wire_validator(problems))
    return client


def wire_validator(problems: list[str]):
    """A ``before-parse`` handler that validates each raw response against the model."""

    def check(operation_model, response_dict, **_: Any) -> None:
        status = response_dict["status_code"]
        headers = {k.lower(): v for k, v in response_dict["headers"].items()}
        name = operation_model.name
        if status >= 300:
            code = headers.get("x-amzn-errortype", "").split(":")[0]
            declared = {shape.name for shape in operation_model.error_shapes}
            if code not in declared:
                problems.append(f"{name}: error code {code!r} (HTTP {status}) is not declared for this operation")
            return
        if operation_model.has_streaming_output:
            return  # the payload is raw bytes; the server-side check covers its members
        try:
            body = json.loads(response_dict["body"] or b"{}")
        except ValueError as exc:
            problems.append(f"{name}: response body is not JSON: {exc}")
            return
        problems.extend(f"{name} (wire): {p}" for p in validation.validate_output(operation_model, body))

    return check


class EmulatorHandle:
    """A running emulator: its URL, a validated client factory, the admin API and the backend."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.url = server.url
        self.problems: list[str] = server.response_problems

    @property
    def backend(self):
        return self.server.backend

    def client(self, **kwargs: Any):
        return make_client(self.url, problems=self.problems, **kwargs)

    def admin(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One admin request with the server's admin token; the decoded answer, or RuntimeError if not 200."""
        status, answer = admin_request(self.url, method, path, payload, token=self.server.admin_token, timeout=30)
        if status != 200:
            raise RuntimeError(f"admin {method} {path} answered HTTP {status}: {answer}")
        return answer

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.admin("POST", "config", changes)

    def counters(self) -> dict[str, Any]:
        return self.admin("GET", "counters")

    def seed(self, spec: str) -> dict[str, Any]:
        return self.admin("POST", "seed", {"seed": spec})


def start_emulator(**kwargs: Any) -> EmulatorServer:
    realism = kwargs.pop("realism", None) or Realism(profile="fast", timing=Timing(**FAST_TIMING))
    return EmulatorServer(port=0, realism=realism, validate_responses=True, **kwargs).start()


@contextlib.contextmanager
def running_emulator(**kwargs: Any) -> Iterator[EmulatorHandle]:
    """A started emulator (``start_emulator(**kwargs)``), stopped on exit; fails if responses broke the model."""
    server = start_emulator(**kwargs)
    handle = EmulatorHandle(server)
    try:
        yield handle
    finally:
        server.stop()
    assert not handle.problems, "responses broke the service model:\n" + "\n".join(handle.problems)


@pytest.fixture
def healthimaging_emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture
def healthimaging_client(healthimaging_emulator: EmulatorHandle):
    return healthimaging_emulator.client()
