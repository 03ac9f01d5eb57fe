"""Headless Chromium for the dashboard's browser tests, and a stand-in for the dashboard's API.

- :func:`chromium`: Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright from PyPI through
  ``executable_path``; ``playwright install`` is never used (its download host is unreachable here).
- :class:`FakeDashboard`: the dashboard's pages and static files from the plugin folder, and canned JSON for
  its API routes (the contract of issue 12), on a local port: the pages' own behaviour (text only, errors
  shown, the chart drawn) checked without an Airflow deployment.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STATIC = REPO_ROOT / "plugins" / "healthimaging" / "bulk" / "dashboard" / "static"
#: Where the tests write their screenshots when HEALTHIMAGING_SCREENSHOTS is not set: pytest's tmp_path.
SCREENSHOTS_ENV = "HEALTHIMAGING_SCREENSHOTS"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is not installed: `apt-get install -y chromium` (.ci/run does it)")
    return path


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``) on Debian's binary."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # root in a container: no user namespaces for the sandbox; /dev/shm may be small.
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield browser
        finally:
            browser.close()


def collect_page_errors(page) -> list[str]:
    """JavaScript errors and console errors of the page, for assertions."""
    errors: list[str] = []

    def console(msg) -> None:
        # A failed resource load is reported below with its URL (the browser's own favicon.ico request aside).
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(f"console.{msg.type}: {msg.text}")

    def response(resp) -> None:
        if resp.status >= 400 and not resp.url.endswith("/favicon.ico"):
            errors.append(f"HTTP {resp.status}: {resp.url}")

    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", console)
    page.on("response", response)
    return errors


class FakeDashboard:
    """The dashboard's pages and static files, and ``routes`` (path -> (status, JSON body)) as its API.

    ``routes`` keys are API paths without the query (``/healthimaging/api/runs``); an unknown API path is 404
    ``{"detail": ...}``, as the real app answers.
    """

    def __init__(self, routes: dict[str, tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests.append(self.path)
                path = urllib.parse.urlsplit(self.path).path
                if path in ("/healthimaging/", "/healthimaging"):
                    return self._file(STATIC / "index.html")
                if path.startswith("/healthimaging/runs/"):
                    return self._file(STATIC / "run.html")
                if path.startswith("/healthimaging/static/"):
                    target = (STATIC / path.removeprefix("/healthimaging/static/")).resolve()
                    if STATIC.resolve() in target.parents and target.is_file():
                        return self._file(target)
                    return self._json(404, {"detail": "Not Found"})
                api_path = urllib.parse.unquote(path)  # as FastAPI decodes path parameters
                if api_path in outer.routes:
                    status, body = outer.routes[api_path]
                    if isinstance(body, str):
                        return self._send(status, body.encode(), "text/csv")
                    return self._json(status, body)
                return self._json(404, {"detail": "Not Found"})

            def _file(self, path: Path) -> None:
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if path.suffix == ".js":
                    kind = "text/javascript"
                self._send(200, path.read_bytes(), kind)

            def _json(self, status: int, body: Any) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, data: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDashboard:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
