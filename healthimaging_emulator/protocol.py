"""The rest-json wire protocol, driven by botocore's service model.

Requests: route on method and path (``match_route``), then read each input member from its
``location`` (uri label, query string, header) or from the JSON body, convert it to Python form and
validate it (``parse_request``). Responses: put each output member where the model says
(``serialize_response``); errors carry their code in ``x-amzn-ErrorType`` (``serialize_error``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import email.utils
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from botocore.model import OperationModel, Shape

from healthimaging_emulator.exceptions import (
    HealthImagingError,
    UnknownOperationException,
    ValidationException,
)
from healthimaging_emulator.service_model import service_model
from healthimaging_emulator.validation import validate_input, validate_output

_LABEL = re.compile(r"\{([^}]+)\}")
_INTEGER = re.compile(r"[+-]?\d+")
_BOOLEANS = {"true": True, "false": False}

# Default timestamp formats of rest-json by location (a member's timestampFormat trait wins).
_TIMESTAMP_FORMATS = {"body": "unixTimestamp", "header": "rfc822", "querystring": "iso8601", "uri": "iso8601"}


# --- routing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One operation's ``http.method`` and ``http.requestUri``, compiled."""

    method: str
    template: str
    regex: re.Pattern[str]
    labels: tuple[str, ...]
    operation: OperationModel


def _compile_route(operation: OperationModel) -> Route:
    # A requestUri may carry a static query ("/x?y"); only the path part routes.
    template = operation.http["requestUri"].split("?", 1)[0]
    parts = _LABEL.split(template)  # literal, label, literal, label, ..., literal
    regex, labels = [], []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            regex.append(re.escape(part))
        elif part.endswith("+"):  # greedy label: may span "/"
            labels.append(part[:-1])
            regex.append("(.+)")
        else:
            labels.append(part)
            regex.append("([^/]+)")
    return Route(operation.http["method"].upper(), template, re.compile("".join(regex)), tuple(labels), operation)


@functools.cache
def route_table() -> dict[str, tuple[Route, ...]]:
    """Every operation's route, by HTTP method; more literal text first so it wins ties."""
    model = service_model()
    table: dict[str, list[Route]] = {}
    for name in model.operation_names:
        route = _compile_route(model.operation_model(name))
        table.setdefault(route.method, []).append(route)
    return {
        method: tuple(sorted(routes, key=lambda r: -len(_LABEL.sub("", r.template))))
        for method, routes in table.items()
    }


def match_route(method: str, path: str) -> tuple[OperationModel, dict[str, str]] | None:
    """The operation for ``method`` and ``path`` (as sent, still percent-encoded, no query),
    with its URI labels URL-decoded; None if no operation matches."""
    for route in route_table().get(method.upper(), ()):
        match = route.regex.fullmatch(path)
        if match is not None:
            return route.operation, {label: unquote(value) for label, value in zip(route.labels, match.groups())}
    return None


# --- requests -------------------------------------------------------------------------------


def parse_request(method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[OperationModel, dict]:
    """Parse and validate one request; ``target`` is the raw request target (path[?query]).

    Returns the operation and its input params keyed by the model's member names, in Python form.
    Raises UnknownOperationException if no route matches, ValidationException on any problem.
    """
    path, _, query = target.partition("?")
    found = match_route(method, path)
    if found is None:
        raise UnknownOperationException(f"No operation matches {method.upper()} {path}")
    operation, labels = found
    shape = operation.input_shape
    params: dict[str, Any] = {}
    problems: list[str] = []
    if shape is not None:
        _read_located_members(shape, labels, query, headers, params)
        problems.extend(_read_body(shape, body, params))
    problems.extend(validate_input(operation, _without_local_uris(operation.name, params)))
    if problems:
        raise ValidationException(format_problems(problems))
    return operation, params


#: Emulator extension: an import may read from and write to a local folder under ``--s3-root`` (an
#: absolute path or a ``file://`` URI) where the model expects an ``s3://`` URI.
LOCAL_URI_MEMBERS = {"StartDICOMImportJob": ("inputS3Uri", "outputS3Uri")}


def _without_local_uris(operation: str, params: dict) -> dict:
    """``params`` with local-folder URIs replaced by a valid S3 URI, for validation only."""
    members = LOCAL_URI_MEMBERS.get(operation, ())
    local = [m for m in members if isinstance(params.get(m), str) and params[m].startswith(("/", "file://"))]
    return {**params, **{m: "s3://local-folder/" for m in local}} if local else params


def format_problems(problems: list[str]) -> str:
    """AWS's wording for a list of validation problems."""
    count = len(problems)
    return f"{count} validation error{'s' if count != 1 else ''} detected: " + "; ".join(problems)


def _read_located_members(
    shape: Shape, labels: dict[str, str], query: str, headers: Mapping[str, str], params: dict
) -> None:
    query_values: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        query_values.setdefault(key, []).append(value)
    lower_headers: dict[str, str] | None = None
    claimed_query_keys = {
        m.serialization.get("name", n)
        for n, m in shape.members.items()
        if m.serialization.get("location") == "querystring" and m.type_name != "map"
    }
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        if location is None:
            continue
        key = member.serialization.get("name", name)
        if location == "uri":
            if key in labels:
                params[name] = _from_text(member, labels[key], "uri")
        elif location == "querystring":
            if member.type_name == "map":  # a map takes every query key no other member names
                params[name] = {
                    k: _query_value(member.value, v) for k, v in query_values.items() if k not in claimed_query_keys
                }
            elif key in query_values:
                params[name] = _query_value(member, query_values[key])
        elif location in ("header", "headers"):
            if lower_headers is None:
                lower_headers = {k.lower(): v for k, v in headers.items()}
            if location == "header":
                if key.lower() in lower_headers:
                    params[name] = _header_value(member, lower_headers[key.lower()])
            else:  # a map of every header with this prefix
                prefix = key.lower()
                params[name] = {k[len(prefix) :]: v for k, v in headers.items() if k.lower().startswith(prefix)}


def _query_value(shape: Shape, values: list[str]) -> Any:
    if shape.type_name == "list":
        return [_from_text(shape.member, v, "querystring") for v in values]
    return _from_text(shape, values[0], "querystring")


def _header_value(shape: Shape, text: str) -> Any:
    if shape.type_name == "list":
        return [_from_text(shape.member, v.strip(), "header") for v in text.split(",")]
    return _from_text(shape, text, "header")


def _from_text(shape: Shape, text: str, location: str) -> Any:
    """A scalar from a label, query value or header; left as text if it does not convert, so that
    validation reports it with the member's name."""
    kind = shape.type_name
    if kind in ("integer", "long"):
        return int(text) if _INTEGER.fullmatch(text) else text
    if kind == "boolean":
        return _BOOLEANS.get(text, text)
    if kind in ("float", "double"):
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "timestamp":
        return _parse_timestamp(text)
    if kind == "blob":
        return _decode_base64(text)
    return text


def _read_body(shape: Shape, body: bytes, params: dict) -> list[str]:
    """Put the body's members into ``params``; returns problems found on the way."""
    payload = shape.serialization.get("payload")
    if payload is not None:
        member = shape.members[payload]
        if member.type_name == "blob":
            if body:
                params[payload] = bytes(body)
        elif member.type_name == "string":
            if body:
                params[payload] = _decode_utf8(body)
        else:
            document = _load_json(body)
            if document is not None:
                if member.type_name == "structure" and not isinstance(document, dict):
                    raise ValidationException("The request body must be a JSON object")
                params[payload] = _from_json(member, document)
        return []
    located = {n for n, m in shape.members.items() if "location" in m.serialization}
    if len(located) == len(shape.members):
        return []  # the operation has no body: ignore whatever was sent
    document = _load_json(body)
    if document is None:
        return []
    if not isinstance(document, dict):
        raise ValidationException("The request body must be a JSON object")
    problems = []
    for key in [k for k in document if k in located]:
        problems.append(
            f"Value at '{key}' failed to satisfy constraint: member {key!r} belongs in the "
            f"{shape.members[key].serialization['location']}, not in the body"
        )
        del document[key]
    params.update(_struct_from_json(shape, document))
    return problems


def _load_json(body: bytes) -> Any:
    """The body as JSON; None for an empty body."""
    if not body or not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationException(f"Could not parse the request body as JSON: {exc}") from None


def _decode_utf8(body: bytes) -> str:
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationException("The request body must be UTF-8 text") from None


def _from_json(shape: Shape, value: Any) -> Any:
    """A JSON value in Python form; values of the wrong JSON type are left for validation."""
    kind = shape.type_name
    if kind == "structure":
        if isinstance(value, dict) and not shape.metadata.get("document"):
            return _struct_from_json(shape, value)
    elif kind == "list":
        if isinstance(value, list):
            return [None if v is None else _from_json(shape.member, v) for v in value]
    elif kind == "map":
        if isinstance(value, dict):
            return {k: None if v is None else _from_json(shape.value, v) for k, v in value.items()}
    elif kind == "timestamp":
        return _parse_timestamp(value)
    elif kind == "blob":
        return _decode_base64(value)
    return value


def _struct_from_json(shape: Shape, document: dict) -> dict:
    names = {m.serialization.get("name", n): n for n, m in shape.members.items()}
    members = shape.members
    result = {}
    for key, value in document.items():
        if value is None:  # JSON null means absent
            continue
        name = names.get(key)
        # An unknown key stays as it is: validation reports it as an unknown member.
        result[key if name is None else name] = value if name is None else _from_json(members[name], value)
    return result


def _parse_timestamp(value: Any) -> Any:
    """Epoch seconds (float) from a number, or a numeric, ISO-8601 or RFC 822 string."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def _decode_base64(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value  # validation reports "must be valid base64"


# --- responses ------------------------------------------------------------------------------


def serialize_response(
    operation_model: OperationModel, output: dict, strict: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a successful response.

    Members not in the model are not serialized; with ``strict`` the output is validated first
    and any problem raises AssertionError.
    """
    if strict:
        problems = validate_output(operation_model, output)
        if problems:
            raise AssertionError(f"invalid {operation_model.name} output:\n" + "\n".join(problems))
    status = int(operation_model.http.get("responseCode", 200))
    shape = operation_model.output_shape
    if shape is None:
        return status, {"Content-Type": "application/json"}, b"{}"
    payload = shape.serialization.get("payload")
    headers: dict[str, str] = {}
    body_values: dict[str, Any] = {}
    for name, value in output.items():
        member = shape.members.get(name)
        if value is None or member is None:
            continue
        location = member.serialization.get("location")
        key = member.serialization.get("name", name)
        if location == "header":
            headers[key] = _header_text(member, value)
        elif location == "headers":
            headers.update({key + k: str(v) for k, v in value.items()})
        elif location == "statusCode":
            status = int(value)
        elif name != payload:
            body_values[name] = value
    if payload is not None and shape.members[payload].type_name in ("blob", "string"):
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/octet-stream"
        return status, headers, _raw_bytes(output.get(payload))
    if payload is not None:
        value = output.get(payload)
        document = {} if value is None else _to_json(shape.members[payload], value)
    else:
        document = _struct_to_json(shape, body_values)
    headers["Content-Type"] = "application/json"
    return status, headers, _dump(document)


def serialize_error(error: HealthImagingError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of an error response, as botocore's rest-json parser reads it."""
    headers = {"x-amzn-ErrorType": error.code, "Content-Type": "application/json"}
    return error.status, headers, _dump({"message": error.message})


def _dump(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _raw_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8")
    if hasattr(value, "read"):
        return value.read()
    return bytes(value)


def _struct_to_json(shape: Shape, values: dict) -> dict:
    members = shape.members
    document = {}
    for name, value in values.items():
        member = members.get(name)
        if member is not None and value is not None:
            document[member.serialization.get("name", name)] = _to_json(member, value)
    return document


def _to_json(shape: Shape, value: Any) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return value if shape.metadata.get("document") else _struct_to_json(shape, value)
    if kind == "list":
        return [_to_json(shape.member, v) for v in value]
    if kind == "map":
        return {k: _to_json(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        return _format_timestamp(value, shape.serialization.get("timestampFormat", _TIMESTAMP_FORMATS["body"]))
    if kind == "blob":
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return base64.b64encode(raw).decode("ascii")
    return value


def _header_text(shape: Shape, value: Any) -> str:
    kind = shape.type_name
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "timestamp":
        fmt = shape.serialization.get("timestampFormat", _TIMESTAMP_FORMATS["header"])
        return str(_format_timestamp(value, fmt))
    if kind == "list":
        return ",".join(_header_text(shape.member, v) for v in value)
    if kind == "blob":
        return _to_json(shape, value)
    return str(value)


def _format_timestamp(value: Any, fmt: str) -> Any:
    """A timestamp (epoch seconds or datetime) in a model timestampFormat."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        epoch: float = value.timestamp()
    else:
        epoch = value
    fmt = fmt.lower()
    if fmt == "unixtimestamp":
        return epoch
    if fmt == "rfc822":
        return email.utils.formatdate(epoch, usegmt=True)
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
