"""Validate Python values against botocore shapes: one validator for requests and responses.

Problems are reported in the service's own wording ("Value 'x' at 'a.b' failed to satisfy
constraint: ...") so the emulator can return them as a ValidationException message, and tests can
assert on them. Paths name structure members with dots, list items as ``[i]`` and map entries as
``['key']``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from botocore.model import OperationModel, Shape

log = logging.getLogger(__name__)

# Java regex syntax the model uses that Python's ``re`` spells differently.
_JAVA_CLASSES = {r"\p{ASCII}": r"[\x00-\x7f]"}

# Model patterns with nested quantifiers that backtrack exponentially in Python's ``re`` (a
# 30-character MetadataFilePath with a trailing newline takes minutes), mapped to equivalent
# linear patterns. X+(Y*X+)* with X = [!-~] (a-z, A-Z, 0-9 are inside !-~) and Y = X plus space
# means: printable ASCII, first and last character not a space.
_LINEAR_EQUIVALENTS = {
    "[a-zA-Z0-9!-~]+([a-zA-Z0-9!-~ ]*[a-zA-Z0-9!-~]+)*": "[!-~](?:[ -~]*[!-~])?",
}

_MAX_SHOWN = 100  # longest value quoted in a message


@functools.cache
def compiled_pattern(pattern: str) -> re.Pattern[str] | None:
    """The model's Java-style ``pattern`` as a compiled Python regex (None if untranslatable).

    Java's ``\\w``/``\\d`` are ASCII-only, hence ``re.ASCII``.
    """
    source = _LINEAR_EQUIVALENTS.get(pattern, pattern)
    for java, python in _JAVA_CLASSES.items():
        source = source.replace(java, python)
    try:
        return re.compile(source, re.ASCII)
    except re.error as exc:  # a future model may use syntax we do not translate: skip, loudly
        log.warning("pattern %r not checked: %s", pattern, exc)
        return None


def validate(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Problems of ``value`` against ``shape`` (empty list: valid).

    ``value`` is in the Python form the emulator uses: dicts for structures and maps, lists,
    str, int, bool, float, bytes (or base64 str) for blobs, epoch seconds or datetime for
    timestamps. ``path`` prefixes every member path in the messages.
    """
    problems: list[str] = []
    _check(shape, value, path, problems)
    return problems


def validate_input(operation_model: OperationModel, params: dict) -> list[str]:
    """Problems of an operation's input params (keyed by member name, all locations merged)."""
    shape = operation_model.input_shape
    if shape is None:
        return [_fail_at(k, f"unknown member {k!r}") for k in params]
    return validate(shape, params)


def validate_output(operation_model: OperationModel, output: dict) -> list[str]:
    """Problems of an operation's output; a blob payload is only checked for presence and type."""
    shape = operation_model.output_shape
    if shape is None:
        return [_fail_at(k, f"unknown member {k!r}") for k in output]
    payload = shape.serialization.get("payload")
    if payload is None or shape.members[payload].type_name not in ("blob", "string"):
        return validate(shape, output)
    problems: list[str] = []
    if not isinstance(output, dict):
        return [_type_problem(shape, output, "")]
    _check_structure(shape, output, "", problems, skip=payload)
    body = output.get(payload)
    if body is None:
        if payload in shape.required_members:
            problems.append(_fail(payload, None, "Member must not be null"))
    elif not isinstance(body, (bytes, bytearray, memoryview, str)) and not hasattr(body, "read"):
        problems.append(_fail(payload, body, "Member must be bytes or a readable stream"))
    return problems


# --- messages -------------------------------------------------------------------------------


def _fail(path: str, value: Any, constraint: str, sensitive: bool = False) -> str:
    if value is None:
        shown = "Value null"
    elif sensitive:
        shown = "Value"  # like AWS: never echo sensitive values
    else:
        text = value if isinstance(value, str) else repr(value)
        if len(text) > _MAX_SHOWN:
            text = text[:_MAX_SHOWN] + f"...({len(text)} characters)"
        shown = f"Value '{text}'"
    return f"{shown} at '{path or '<root>'}' failed to satisfy constraint: {constraint}"


def _fail_at(path: str, constraint: str) -> str:
    """A problem that is about the member itself, not its value."""
    return f"Value at '{path or '<root>'}' failed to satisfy constraint: {constraint}"


def _type_problem(shape: Shape, value: Any, path: str) -> str:
    return _fail(path, value, f"Member must be of type {_TYPE_WORDS[shape.type_name]}", _sensitive(shape))


def _sensitive(shape: Shape) -> bool:
    return bool(shape.metadata.get("sensitive"))


_TYPE_WORDS = {
    "structure": "structure (object)",
    "list": "list",
    "map": "map (object)",
    "string": "string",
    "integer": "integer",
    "long": "long",
    "boolean": "boolean",
    "float": "float",
    "double": "double",
    "timestamp": "timestamp (epoch seconds or datetime)",
    "blob": "blob (bytes or base64 string)",
}


# --- checks by type -------------------------------------------------------------------------


def _check(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    checker = _CHECKERS.get(shape.type_name)
    if checker is not None:
        checker(shape, value, path, problems)


def _check_structure(shape: Shape, value: Any, path: str, problems: list[str], skip: str | None = None) -> None:
    if shape.metadata.get("document"):
        return
    if not isinstance(value, dict):
        problems.append(_type_problem(shape, value, path))
        return
    prefix = f"{path}." if path else ""
    members = shape.members
    for name in shape.required_members:
        if value.get(name) is None and name != skip:
            problems.append(_fail(prefix + name, None, "Member must not be null"))
    set_members = []
    for name, item in value.items():
        member = members.get(name)
        if member is None:
            problems.append(_unknown_member(shape, name, prefix + name))
        elif item is not None and name != skip:
            set_members.append(name)
            _check(member, item, prefix + name, problems)
    if shape.metadata.get("union") and len(set_members) != 1:
        found = ", ".join(set_members) or "none"
        problems.append(
            _fail_at(
                path,
                f"Member must have exactly one member set (union {shape.name}); found {len(set_members)}: {found}",
            )
        )


def _unknown_member(shape: Shape, name: str, path: str) -> str:
    message = f"unknown member {name!r} of {shape.name}"
    near = [m for m in shape.members if m.lower() == str(name).lower()]
    if near:
        message += f" (did you mean {near[0]!r}?)"
    return _fail_at(path, message)


def _check_list(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, (list, tuple)):
        problems.append(_type_problem(shape, value, path))
        return
    _check_length(shape, value, len(value), path, problems)
    member = shape.member
    for index, item in enumerate(value):
        if item is None:
            problems.append(_fail(f"{path}[{index}]", None, "Member must not be null"))
        else:
            _check(member, item, f"{path}[{index}]", problems)


def _check_map(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(_type_problem(shape, value, path))
        return
    _check_length(shape, value, len(value), path, problems)
    key_shape, value_shape = shape.key, shape.value
    for key, item in value.items():
        entry = f"{path}[{key!r}]"
        _check(key_shape, key, f"{entry} (key)", problems)
        if item is None:
            problems.append(_fail(entry, None, "Member must not be null"))
        else:
            _check(value_shape, item, entry, problems)


def _check_string(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(_type_problem(shape, value, path))
        return
    metadata = shape.metadata
    enum = metadata.get("enum")
    if enum and value not in enum:
        problems.append(
            _fail(path, value, f"Member must satisfy enum value set: [{', '.join(enum)}]", _sensitive(shape))
        )
        return
    # Skip the pattern on a bad length: AWS would report both, but matching a huge string is waste.
    if _check_length(shape, value, len(value), path, problems):
        pattern = metadata.get("pattern")
        if pattern is not None:
            regex = compiled_pattern(pattern)
            if regex is not None and regex.fullmatch(value) is None:
                problems.append(
                    _fail(
                        path,
                        value,
                        f"Member must satisfy regular expression pattern: {pattern}",
                        _sensitive(shape),
                    )
                )


def _check_integer(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if type(value) is bool or not isinstance(value, int):
        problems.append(_type_problem(shape, value, path))
    else:
        _check_range(shape, value, path, problems)


def _check_float(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if type(value) is bool or not isinstance(value, (int, float)):
        problems.append(_type_problem(shape, value, path))
    else:
        _check_range(shape, value, path, problems)


def _check_boolean(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, bool):
        problems.append(_type_problem(shape, value, path))


def _check_timestamp(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if type(value) is bool or not isinstance(value, (int, float, datetime.datetime)):
        problems.append(_type_problem(shape, value, path))


def _check_blob(shape: Shape, value: Any, path: str, problems: list[str]) -> None:
    if isinstance(value, str):
        try:
            size = len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            problems.append(_fail(path, value, "Member must be valid base64", _sensitive(shape)))
            return
    elif isinstance(value, (bytes, bytearray, memoryview)):
        size = len(value)
    else:
        problems.append(_type_problem(shape, value, path))
        return
    _check_length(shape, value, size, path, problems)


def _check_length(shape: Shape, value: Any, size: int, path: str, problems: list[str]) -> bool:
    """Check min/max as a length; True if within bounds."""
    metadata = shape.metadata
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and size < low:
        problems.append(
            _fail(path, value, f"Member must have length greater than or equal to {low}", _sensitive(shape))
        )
        return False
    if high is not None and size > high:
        problems.append(_fail(path, value, f"Member must have length less than or equal to {high}", _sensitive(shape)))
        return False
    return True


def _check_range(shape: Shape, value: float, path: str, problems: list[str]) -> None:
    metadata = shape.metadata
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and value < low:
        problems.append(_fail(path, value, f"Member must have value greater than or equal to {low}", _sensitive(shape)))
    elif high is not None and value > high:
        problems.append(_fail(path, value, f"Member must have value less than or equal to {high}", _sensitive(shape)))


_CHECKERS: dict[str, Callable[[Shape, Any, str, list[str]], None]] = {
    "structure": _check_structure,
    "list": _check_list,
    "map": _check_map,
    "string": _check_string,
    "integer": _check_integer,
    "long": _check_integer,
    "float": _check_float,
    "double": _check_float,
    "boolean": _check_boolean,
    "timestamp": _check_timestamp,
    "blob": _check_blob,
}
