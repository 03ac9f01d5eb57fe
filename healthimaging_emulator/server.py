"""The HTTP front of the emulator: one port serves the control plane, the data plane and the admin API.

Requests are routed on method and path only: the Host header (``runtime-…`` or not) and the SigV4
signature are ignored. Each request passes, in order: the guard (``guard.check_request``: browser
cross-origin requests, non-JSON content types and, on the admin API, the admin token are refused),
routing and validation against the service model, the operation's token bucket, fault injection, the
backend, and serialization.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from healthimaging_emulator import guard, protocol, seeding, validation
from healthimaging_emulator.backend import HealthImagingBackend
from healthimaging_emulator.exceptions import (
    HealthImagingError,
    InternalServerException,
    ThrottlingException,
    ValidationException,
)
from healthimaging_emulator.realism import Realism
from healthimaging_emulator.store import Store

log = logging.getLogger(__name__)

#: Largest request body accepted (the largest legal one, a 260,000-character copiableAttributes, is far below).
MAX_BODY_BYTES = 4 * 1024 * 1024
ADMIN_PREFIX = "/_emulator"
JOB_POLL_SECONDS = 0.02


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: EmulatorServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HealthImagingEmulator"
    sys_version = ""
    timeout = 30  # an idle or stalled connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s - %s", self.client_address[0], format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed HTTP (bad request line, headers) gets an AWS-shaped error, not HTML."""
        self.close_connection = True
        error = ValidationException(f"Malformed HTTP request: {message or code}")
        # The request line may not have been parsed: no request id yet, and the version still the
        # HTTP/0.9 default, under which BaseHTTPRequestHandler writes neither status line nor headers.
        if not hasattr(self, "request_id"):
            self.request_id = f"{time.time_ns():x}"
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        try:
            self._send(*protocol.serialize_error(error))
        except OSError:
            pass

    def parse_request(self) -> bool:
        # The request line has just been read: the quota counts from here (AWS counts arrivals), not from
        # whenever this thread gets through header parsing and the GIL to the limiter.
        self.arrived = time.monotonic()
        return super().parse_request()

    def do_GET(self) -> None:
        self._handle()

    # OPTIONS goes through the same guard: a preflight from a foreign origin gets 403 and no
    # Access-Control-Allow-* header, so the browser never sends the real request.
    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # ------------------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", self.request_id)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValidationException(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length_header = self.headers.get("Content-Length", "0") or "0"
        if not length_header.isdigit():
            raise ValidationException(f"Content-Length {length_header!r} is not a number.")
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            raise ValidationException(f"The request body ({length} bytes) is larger than {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(length) if length else b""

    def _refusal(self, body: bytes, is_admin: bool) -> tuple[int, dict[str, str], bytes] | None:
        """The error response of a request the guard refuses (foreign origin, admin token, content type); None
        when it passes."""
        try:
            guard.check_request(
                {k.lower(): v for k, v in self.headers.items()},
                body,
                admin=is_admin,
                admin_token=self.server.emulator.admin_token,
                allowed_hosts=self.server.emulator.allowed_hosts,
            )
        except HealthImagingError as refusal:
            log.warning(
                "refused %s %s from %s: %s",
                self.command,
                urlsplit(self.path).path,
                self.client_address[0],
                refusal.message,
            )
            status, headers, payload = protocol.serialize_error(refusal)
            if refusal.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="healthimaging-emulator admin API"'
            return status, headers, payload
        return None

    def _handle(self) -> None:
        self.request_id = f"{time.time_ns():x}"
        emulator = self.server.emulator
        try:
            body = self._read_body()
        except (ValidationException, ValueError) as exc:
            self.close_connection = True
            error = (
                exc if isinstance(exc, ValidationException) else ValidationException(f"Malformed chunked body: {exc}")
            )
            self._send(*protocol.serialize_error(error))
            return
        is_admin = urlsplit(self.path).path.startswith(ADMIN_PREFIX)
        refusal = self._refusal(body, is_admin)
        if refusal is not None:
            self._send(*refusal)
            return
        if is_admin:
            self._send(*emulator.admin(self.command, self.path, body))
            return
        status, headers, payload = emulator.dispatch(
            self.command, self.path, dict(self.headers.items()), body, arrived=self.arrived
        )
        if status is None:  # an injected lost response: the call took effect, the client hears nothing
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, headers, payload)


class EmulatorServer:
    """The emulator as an object: start it in a thread (tests, ``make demo``) or serve in the foreground (CLI).

    ``admin_token``: when not empty, every admin route requires ``Authorization: Bearer <admin_token>``.
    ``allowed_hosts``: host names clients may use besides IP addresses and localhost (DNS rebinding guard).
    ``s3_root``: the only folder imports may read and write (``s3://bucket/key`` is ``s3_root/bucket/key``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8089,
        state_dir: str | Path | None = None,
        realism: Realism | None = None,
        account_id: str = "123456789012",
        region: str = "us-east-1",
        s3_root: str | Path | None = None,
        validate_responses: bool = False,
        admin_token: str = "",
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        #: The admin API (``/_emulator/...``) requires ``Authorization: Bearer <admin_token>``; empty: open.
        self.admin_token = admin_token
        #: Host names (besides IP addresses and localhost) that requests may address the emulator by.
        self.allowed_hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
        self.validate_responses = validate_responses
        #: Problems found by strict mode (``validate_responses``): responses that broke the service model.
        self.response_problems: list[str] = []
        self.realism = realism or Realism()
        self.store = Store(state_dir)
        self.backend = HealthImagingBackend(
            self.store, self.realism, account_id=account_id, region=region, s3_root=s3_root
        )
        self.httpd = _Server((host, port), _Handler)
        self.httpd.emulator = self
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> EmulatorServer:
        """Serve in background threads; returns at once."""
        self._threads = [
            threading.Thread(
                target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="emulator-http", daemon=True
            ),
            threading.Thread(target=self._run_jobs, name="emulator-jobs", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def serve_forever(self) -> None:
        jobs = threading.Thread(target=self._run_jobs, name="emulator-jobs", daemon=True)
        jobs.start()
        self._threads = [jobs]
        try:
            self.httpd.serve_forever(poll_interval=0.1)
        finally:
            self._stopping.set()
            jobs.join(timeout=5)

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_jobs(self) -> None:
        while not self._stopping.is_set():
            try:
                self.backend.run_due_jobs()
                due = self.backend.next_due()
            except Exception:  # keep the loop alive; the failure is logged and the job retried
                log.exception("running due jobs failed")
                due = None
            wait = JOB_POLL_SECONDS if due is None else min(max(due - time.time(), 0.0), JOB_POLL_SECONDS)
            self._stopping.wait(wait)

    # ------------------------------------------------------------------ the AWS API

    def dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, arrived: float | None = None
    ) -> tuple[int | None, dict[str, str], bytes]:
        """One API request (that arrived at ``arrived``, ``time.monotonic()``); a status of None means: drop the
        connection without answering."""
        counters = self.realism.counters
        try:
            operation, params = protocol.parse_request(method, target, headers, body)
        except HealthImagingError as error:
            route = protocol.match_route(method, urlsplit(target).path)
            counters.record(route[0].name if route else "Unknown", outcome="error", error_code=error.code)
            return protocol.serialize_error(error)
        name = operation.name
        if not self.realism.limiter.allow(name, arrived):
            counters.record(name, outcome="throttled", error_code="ThrottlingException")
            return protocol.serialize_error(ThrottlingException("Rate exceeded"))
        fault = self.realism.faults.draw(name)
        if fault == "throttle":
            counters.record(name, outcome="throttled", fault=fault, error_code="ThrottlingException")
            return protocol.serialize_error(ThrottlingException("Rate exceeded"))
        if fault == "internal_error":
            counters.record(name, outcome="error", fault=fault, error_code="InternalServerException")
            return protocol.serialize_error(InternalServerException("An internal error occurred (injected fault)."))
        try:
            output = self.backend.call(name, params, fault=fault)
        except HealthImagingError as error:
            counters.record(name, outcome="error", fault=fault, error_code=error.code)
            if self.validate_responses and error.code not in {e.name for e in operation.error_shapes}:
                self.response_problems.append(f"{name}: raised {error.code}, which the model does not declare for it")
            return protocol.serialize_error(error)
        except Exception as exc:
            log.exception("%s failed", name)
            if self.validate_responses:
                self.response_problems.append(f"{name}: crashed with {exc!r}")
            counters.record(name, outcome="error", fault=fault, error_code="InternalServerException")
            return protocol.serialize_error(InternalServerException("An internal error occurred."))
        counters.record(name, outcome="succeeded", fault=fault)
        if self.validate_responses:
            problems = validation.validate_output(operation, output)
            if problems:
                self.response_problems.extend(f"{name}: {p}" for p in problems)
                return protocol.serialize_error(InternalServerException(f"{name} produced an invalid response."))
        if fault == "lost_response":
            return None, {}, b""
        return protocol.serialize_response(operation, output)

    # ------------------------------------------------------------------ the admin API

    def admin(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """``/_emulator/health``, ``/_emulator/config`` (GET, POST), ``/_emulator/counters`` (GET, DELETE),
        ``/_emulator/seed`` (POST ``{"seed": "sample" | "synthetic:N"}``)."""
        path = urlsplit(target).path.rstrip("/")
        try:
            payload = json.loads(body) if body.strip() else {}
            if not isinstance(payload, dict):
                raise ValueError("the request body must be a JSON object")
            if path == f"{ADMIN_PREFIX}/health" and method == "GET":
                result: Any = {"status": "ok", "url": self.url}
            elif path == f"{ADMIN_PREFIX}/config" and method == "GET":
                result = self.realism.describe()
            elif path == f"{ADMIN_PREFIX}/config" and method in ("POST", "PUT"):
                result = self.realism.update(payload)
            elif path == f"{ADMIN_PREFIX}/counters" and method == "GET":
                result = self.realism.counters.snapshot()
            elif path == f"{ADMIN_PREFIX}/counters" and method == "DELETE":
                self.realism.counters.reset()
                result = {}
            elif path == f"{ADMIN_PREFIX}/seed" and method == "POST":
                outcome = seeding.seed(self.backend, str(payload.get("seed", "")))
                result = {
                    "datastoreId": outcome.datastore_id,
                    "datastoreName": outcome.datastore_name,
                    "imageSets": outcome.image_sets,
                    "created": outcome.created,
                }
            else:
                return (
                    404,
                    {"Content-Type": "application/json"},
                    json.dumps({"message": f"no admin route {method} {path}"}).encode(),
                )
        except ValueError as exc:
            return 400, {"Content-Type": "application/json"}, json.dumps({"message": str(exc)}).encode()
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
