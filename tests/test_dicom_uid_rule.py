"""A UID is checked once, by the service model's rule and the DICOM standard's, wherever a copy names one."""

from __future__ import annotations

import jsonschema
import pytest

from healthimaging.bulk.manifest import validate_row
from healthimaging.copy import dicom_uid
from healthimaging.copy.copiable_attributes import CopyRequestError, parse_copiable_attributes
from healthimaging.copy.service_model import max_length, pattern

VALID = ["1.2.840.10008.5.1.4.1.1.2", "2.25.1", "0", "1." + "2" * 62]
INVALID = ["", "1..2", ".1.2", "1.2.", "1.2a", "1.2 ", "1." + "2" * 63, "1.2.\n", 12]


def test_the_rule_is_the_service_models_within_the_dicom_standards_length():
    assert pattern(dicom_uid.SERVICE_SHAPE) == "[0-9.]+"
    assert max_length(dicom_uid.SERVICE_SHAPE) == 512
    assert dicom_uid.MAX_LENGTH == 64


@pytest.mark.parametrize("value", VALID)
def test_a_valid_uid_passes_the_function_and_the_json_schema(value):
    assert dicom_uid.is_uid(value)
    jsonschema.validate(value, dicom_uid.json_schema())


@pytest.mark.parametrize("value", INVALID)
def test_an_invalid_uid_fails_the_function_and_the_json_schema(value):
    assert not dicom_uid.is_uid(value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, dicom_uid.json_schema())


@pytest.mark.parametrize("value", ["1..2", "1." + "2" * 63])
def test_a_manifest_row_and_copiable_attributes_refuse_the_same_uids(value):
    row, errors = validate_row(
        1, {"datastore_id": "d" * 32, "source_image_set_id": "a" * 32, "series_instance_uids": value}
    )
    assert row is None
    assert [e.column for e in errors] == ["series_instance_uids"] and "is not a DICOM UID" in errors[0].problem
    document = {"SchemaVersion": "1.1", "Study": {"Series": {value: {"Instances": {}}}}}
    with pytest.raises(CopyRequestError):
        parse_copiable_attributes(document)
