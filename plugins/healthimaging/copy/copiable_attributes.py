"""CopyImageSet's ``copiableAttributes`` and ``copyImageSetInformation``: validation and building.

``copiableAttributes`` selects SOP instances of the source by DICOM UIDs (not by image set ids, as
some AWS SDK examples wrongly show)::

    {"SchemaVersion": "1.1", "Study": {"Series": {"<SeriesInstanceUID>": {"Instances": {"<SOPInstanceUID>": {}}}}}}

It travels as a JSON *string* of at most 260,000 characters (the service model's limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
from botocore.validate import ParamValidator

from healthimaging import bounded_json
from healthimaging.copy import dicom_uid
from healthimaging.copy.service_model import service_model

_UID = dicom_uid.json_schema()

#: The documented schema of copiableAttributes, as JSON Schema.
COPIABLE_ATTRIBUTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["SchemaVersion", "Study"],
    "additionalProperties": False,
    "properties": {
        "SchemaVersion": {"enum": ["1.1", 1.1]},
        "Study": {
            "type": "object",
            "required": ["Series"],
            "additionalProperties": False,
            "properties": {
                "Series": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": _UID,
                    "additionalProperties": {
                        "type": "object",
                        "required": ["Instances"],
                        "additionalProperties": False,
                        "properties": {
                            "Instances": {
                                "type": "object",
                                "minProperties": 1,
                                "propertyNames": _UID,
                                "additionalProperties": {"type": "object", "maxProperties": 0},
                            }
                        },
                    },
                }
            },
        },
    },
}

Selection = dict[str, set[str]]


class CopyRequestError(ValueError):
    """A copy request that cannot be sent: the message names the argument and what is expected."""


def max_copiable_attributes_length() -> int:
    """The longest copiableAttributes string the service accepts (from botocore's model)."""
    return int(service_model().shape_for("CopiableAttributes").metadata["max"])


def parse_copiable_attributes(
    value: str | Mapping[str, Any], *, argument: str = "copiable_attributes"
) -> dict[str, Any]:
    """A validated copiableAttributes document from a dict or a JSON string."""
    if isinstance(value, str):
        if len(value) > max_copiable_attributes_length():
            raise CopyRequestError(
                f"{argument} is {len(value):,} characters long; the service accepts at most "
                f"{max_copiable_attributes_length():,}. Split the copy into several smaller subsets."
            )
        try:
            document = bounded_json.loads(value)
        except ValueError as exc:
            raise CopyRequestError(f"{argument} is not valid JSON ({exc}). Expected {example()}") from None
    elif isinstance(value, Mapping):
        document = dict(value)
    else:
        raise CopyRequestError(f"{argument} must be a dict or a JSON string, got {type(value).__name__}")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(COPIABLE_ATTRIBUTES_SCHEMA).iter_errors(document)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise CopyRequestError(
            f"{argument} does not follow the copiableAttributes schema at {where}: {error.message}. "
            f"Expected {example()}"
        )
    text = to_json(document)
    if len(text) > max_copiable_attributes_length():
        raise CopyRequestError(
            f"{argument} is {len(text):,} characters long as JSON; the service accepts at most "
            f"{max_copiable_attributes_length():,}. Split the copy into several smaller subsets."
        )
    return document


def example() -> str:
    return (
        '{"SchemaVersion": "1.1", "Study": {"Series": '
        '{"<SeriesInstanceUID>": {"Instances": {"<SOPInstanceUID>": {}}}}}}'
    )


def to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def selection_of(document: Mapping[str, Any]) -> Selection:
    """Series Instance UID → selected SOP Instance UIDs, of a copiableAttributes document."""
    return {series: set(body["Instances"]) for series, body in document["Study"]["Series"].items()}


def build(selection: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """A copiableAttributes document selecting the given SOP instances of each series."""
    return {
        "SchemaVersion": "1.1",
        "Study": {
            "Series": {
                series: {"Instances": {uid: {} for uid in sorted(uids)}} for series, uids in sorted(selection.items())
            }
        },
    }


def select_from_source(
    source: Mapping[str, set[str]],
    *,
    series_instance_uids: Iterable[str] | None = None,
    sop_instance_uids: Iterable[str] | None = None,
    source_name: str = "the source image set",
) -> Selection:
    """The selection that copies the named series and/or SOP instances of a source.

    ``source`` maps each Series Instance UID of the source version to its SOP Instance UIDs. A UID the
    source lacks is an error that names it.
    """
    selection: Selection = {}
    for series in series_instance_uids or ():
        if series not in source:
            raise CopyRequestError(
                f"series_instance_uids: {series} is not a series of {source_name} (it holds {len(source)} series)"
            )
        selection[series] = set(source[series])
    owner = {sop: series for series, sops in source.items() for sop in sops}
    for sop in sop_instance_uids or ():
        if sop not in owner:
            raise CopyRequestError(f"sop_instance_uids: {sop} is not a SOP instance of {source_name}")
        selection.setdefault(owner[sop], set()).add(sop)
    if not selection:
        raise CopyRequestError("series_instance_uids and sop_instance_uids select nothing")
    return selection


def parse_copy_image_set_information(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """The AWS CLI's ``--copy-image-set-information`` JSON, validated against the service model."""
    if isinstance(value, str):
        try:
            information = bounded_json.loads(value)
        except ValueError as exc:
            raise CopyRequestError(f"copy_image_set_information is not valid JSON ({exc})") from None
    else:
        information = dict(value)
    shape = service_model().shape_for("CopyImageSetInformation")
    report = ParamValidator().validate(information, shape)
    if report.has_errors():
        raise CopyRequestError(
            f"copy_image_set_information does not match CopyImageSetInformation: {report.generate_report()}"
        )
    copies = information["sourceImageSet"].get("DICOMCopies")
    if copies is not None:
        parse_copiable_attributes(
            copies["copiableAttributes"], argument="copy_image_set_information copiableAttributes"
        )
    return information
