"""A client for the emulator's admin API (``/_emulator/...``), with the admin token when one is set.

    from healthimaging_emulator.admin_client import admin_request
    status, counters = admin_request("http://127.0.0.1:8089", "GET", "counters")

The token defaults to the environment variable ``HEALTHIMAGING_EMULATOR_ADMIN_TOKEN``, the one the
emulator's ``--admin-token`` flag defaults to, so the same environment configures both sides.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

#: The environment variable both the emulator (``--admin-token``'s default) and this client read.
ADMIN_TOKEN_ENV = "HEALTHIMAGING_EMULATOR_ADMIN_TOKEN"
ADMIN_PREFIX = "/_emulator"


def admin_token_from_env() -> str:
    """The admin token in ``HEALTHIMAGING_EMULATOR_ADMIN_TOKEN``; empty when unset (no token)."""
    return os.environ.get(ADMIN_TOKEN_ENV, "")


def admin_url(url: str, path: str) -> str:
    """The full URL of admin route ``path``: ``counters``, ``/counters`` and ``/_emulator/counters`` are the same."""
    relative = path.lstrip("/")
    if relative == ADMIN_PREFIX.lstrip("/") or relative.startswith(ADMIN_PREFIX.lstrip("/") + "/"):
        relative = relative[len(ADMIN_PREFIX) :]
    return f"{url.rstrip('/')}{ADMIN_PREFIX}/{relative.lstrip('/')}"


def admin_headers(token: str | None = None, *, with_body: bool = False) -> dict[str, str]:
    """The headers of an admin request: ``Authorization: Bearer <token>`` when there is a token
    (``token=None`` reads the environment, ``""`` sends none) and the JSON content type for a body."""
    token = admin_token_from_env() if token is None else token
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if with_body:
        headers["Content-Type"] = "application/json"
    return headers


def admin_request(
    url: str, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One admin request to the emulator at ``url``; returns (HTTP status, decoded JSON body or None).

    Error statuses (401, 404, 400...) are returned, not raised; a connection failure raises
    ``urllib.error.URLError`` (an ``OSError``). ``body`` is sent as JSON when it is not None.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        admin_url(url, path), data=data, method=method.upper(), headers=admin_headers(token, with_body=data is not None)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _decode(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _decode(error.read())


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"message": raw.decode("utf-8", "replace")}


__all__ = ["ADMIN_TOKEN_ENV", "admin_headers", "admin_request", "admin_token_from_env", "admin_url"]
