"""What the emulator refuses before routing a request: what a hostile web page or local user could send.

- A browser cross-origin request (an ``Origin`` other than the emulator's own, or ``Sec-Fetch-Site``
  cross-site or same-site): 403 AccessDeniedException. boto3, the AWS CLI and curl send no ``Origin``.
- A CORS "simple request" content type (``text/plain``, ``application/x-www-form-urlencoded``,
  ``multipart/form-data``) on any request, or any other non-JSON content type on a request with a
  body: 415 UnsupportedMediaTypeException. Every request body of this API is JSON.
- A ``Host`` that names the emulator by a host name it was not told about: 403 AccessDeniedException.
  This is DNS rebinding: a page at ``evil.example`` that points its own name at 127.0.0.1 makes its
  requests same-origin, and only the Host header shows it. IP addresses, ``localhost`` and the names
  given with ``--allowed-host`` pass.
- An admin request (``/_emulator/...``) without ``Authorization: Bearer <token>`` when the emulator
  has an admin token: 401 UnauthorizedException.

Headers are given as a mapping with lower-case names.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

from healthimaging_emulator.exceptions import (
    AccessDeniedException,
    UnauthorizedException,
    UnsupportedMediaTypeException,
)

#: The content types a page may send cross-origin without a CORS preflight (the Fetch standard's list).
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
EXPECTED_CONTENT_TYPE = "application/json"
#: ``Sec-Fetch-Site`` values a browser sends for a request that a page of another origin started.
FOREIGN_FETCH_SITES = ("cross-site", "same-site")
ADMIN_TOKEN_HINT = (
    "send the header 'Authorization: Bearer <token>' with the token the emulator was started with "
    "(--admin-token or HEALTHIMAGING_EMULATOR_ADMIN_TOKEN)"
)


def _host_and_port(netloc: str) -> tuple[str, int] | None:
    """(host, port) of ``host[:port]`` (port 80 when absent), lower-cased; None when it does not parse."""
    try:
        parts = urlsplit(f"//{netloc.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host, port or 80) if host else None


def own_origin(headers: Mapping[str, str]) -> str | None:
    """The emulator's origin as this request addressed it: ``http://`` plus the Host header."""
    host = headers.get("host", "").strip()
    return f"http://{host}" if host else None


def is_same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header) is ``http://`` plus the host and port in ``host_header``."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() != "http" or not parts.hostname or parts.path or parts.query:
        return False  # "null" (a sandboxed or file:// page), https://..., or not an origin at all
    addressed = _host_and_port(host_header)
    return addressed is not None and (parts.hostname, origin_port or 80) == addressed


def check_origin(headers: Mapping[str, str]) -> None:
    """Refuse a request that a web page of another origin sent (AccessDeniedException, 403)."""
    origin = headers.get("origin")
    own = own_origin(headers)
    if origin is not None and not (own and is_same_origin(origin, headers["host"])):
        raise AccessDeniedException(
            f"Cross-origin request refused: Origin {origin!r} is not this emulator's origin "
            f"({own or 'no Host header'}). "
            "The emulator refuses browser cross-origin requests so that a web page cannot drive it; call it from "
            "boto3, the AWS CLI or curl, which send no Origin header."
        )
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in FOREIGN_FETCH_SITES:
        raise AccessDeniedException(
            f"Cross-origin request refused: Sec-Fetch-Site is {fetch_site!r}, so a page of another origin sent it. "
            "The emulator refuses browser cross-origin requests; call it from boto3, the AWS CLI or curl."
        )


#: Host names that always pass the Host check (IP addresses pass too).
ALWAYS_ALLOWED_HOSTS = ("localhost",)
#: The host prefix of the data-plane operations in the service model (``hostPrefix: "runtime-"``).
DATA_PLANE_PREFIX = "runtime-"


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_host(headers: Mapping[str, str], allowed_hosts: Collection[str]) -> None:
    """Refuse a request addressed to a host name the emulator was not told about (AccessDeniedException, 403):
    DNS rebinding. No Host header (HTTP/1.0) passes: a browser always sends one."""
    host_header = headers.get("host")
    if host_header is None:
        return
    addressed = _host_and_port(host_header)
    # botocore's data-plane host prefix (runtime-<endpoint host>) names the same host.
    host = addressed[0].removeprefix(DATA_PLANE_PREFIX) if addressed else None
    if host is not None and (_is_ip_address(host) or host in ALWAYS_ALLOWED_HOSTS or host in allowed_hosts):
        return
    raise AccessDeniedException(
        f"Host {host_header!r} is not a name this emulator answers to (IP addresses, localhost and "
        f"{', '.join(sorted(allowed_hosts)) or 'no --allowed-host names'}). A page can point its own domain at "
        "this machine (DNS rebinding); start the emulator with --allowed-host NAME (or "
        "HEALTHIMAGING_EMULATOR_ALLOWED_HOSTS) for each name its clients use."
    )


def media_type(content_type: str) -> str:
    """``application/json`` of ``Application/JSON; charset=utf-8``."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json_media_type(media: str) -> bool:
    """JSON by name: ``application/json``, ``application/x-amz-json-1.1``, ``application/<anything>+json``."""
    return (
        media == EXPECTED_CONTENT_TYPE
        or media.startswith("application/x-amz-json")
        or (media.startswith("application/") and media.endswith("+json"))
    )


def check_content_type(headers: Mapping[str, str], body: bytes) -> None:
    """Refuse a simple-request content type on any request, and a non-JSON one on a request with a body
    (UnsupportedMediaTypeException, 415). A body without a Content-Type is accepted (python ``requests``)."""
    content_type = headers.get("content-type")
    if content_type is None:
        return
    media = media_type(content_type)
    if media in SIMPLE_CONTENT_TYPES:
        raise UnsupportedMediaTypeException(
            f"Content-Type {content_type!r} is refused: send the body as {EXPECTED_CONTENT_TYPE!r}. The emulator "
            "refuses "
            f"{', '.join(SIMPLE_CONTENT_TYPES)} on every request, because a web page can send those to it "
            "without a CORS preflight."
        )
    if body and not is_json_media_type(media):
        raise UnsupportedMediaTypeException(
            f"Content-Type {content_type!r} is not accepted: the request body must be JSON, sent as "
            f"{EXPECTED_CONTENT_TYPE!r}."
        )


def check_admin_token(headers: Mapping[str, str], token: str) -> None:
    """Refuse an admin request without ``Authorization: Bearer <token>`` (UnauthorizedException, 401);
    an empty ``token`` means the admin API is open. The token given is never echoed."""
    if not token:
        return
    authorization = headers.get("authorization")
    if authorization is None:
        raise UnauthorizedException(
            f"The admin API requires a token and the request has no Authorization header: {ADMIN_TOKEN_HINT}."
        )
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthorizedException(f"The Authorization header is not of the Bearer scheme: {ADMIN_TOKEN_HINT}.")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise UnauthorizedException(f"The admin token given is wrong: {ADMIN_TOKEN_HINT}.")


def check_request(
    headers: Mapping[str, str], body: bytes, *, admin: bool, admin_token: str, allowed_hosts: Collection[str] = ()
) -> None:
    """Every check, in order: host and origin (403), then the admin token (401), then the content type (415)."""
    check_host(headers, {h.lower() for h in allowed_hosts})
    check_origin(headers)
    if admin:
        check_admin_token(headers, admin_token)
    check_content_type(headers, body)
