"""Unit tests of the rest-json protocol and the shape validator, checked against botocore itself."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import re
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse, HeadersDict
from botocore.config import Config
from botocore.model import OperationModel
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.utils import percent_encode_sequence

from healthimaging_emulator import exceptions, protocol
from healthimaging_emulator.service_model import operation_model, service_model
from healthimaging_emulator.validation import compiled_pattern, validate, validate_input, validate_output

DS = "0123456789abcdef0123456789abcdef"
IS = "fedcba9876543210fedcba9876543210"
IS2 = "a" * 32
ARN = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{DS}/imageset/{IS}"
T0 = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
T1 = datetime.datetime(2024, 6, 7, 8, 9, 10, 500000, tzinfo=datetime.timezone.utc)

SERIALIZER = create_serializer("rest-json", include_validation=False)


def wire_request(name: str, params: dict) -> tuple[str, str, dict[str, str], bytes]:
    """What botocore puts on the wire for ``params``: method, target, headers, body."""
    request = SERIALIZER.serialize_to_request(params, operation_model(name))
    target = request["url_path"]
    if request["query_string"]:
        target += "?" + percent_encode_sequence(request["query_string"])
    body = request["body"] or b""
    return request["method"], target, dict(request["headers"]), body.encode() if isinstance(body, str) else body


def round_trip(name: str, params: dict) -> dict:
    operation, parsed = protocol.parse_request(*wire_request(name, params))
    assert operation.name == name
    return parsed


def botocore_parse(operation: OperationModel, status: int, headers: dict[str, str], body: bytes) -> dict:
    """botocore's reading of a response; a streaming payload arrives as a stream, as in a client."""
    if operation.has_streaming_output and status < 300:
        body = io.BytesIO(body)
    response = {"status_code": status, "headers": HeadersDict(headers), "body": body}
    return create_parser("rest-json").parse(response, operation.output_shape)


def parse_error(message_fragments: list[str], *args: Any) -> str:
    with pytest.raises(exceptions.ValidationException) as caught:
        protocol.parse_request(*args)
    assert caught.value.status == 400
    for fragment in message_fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


# --- routing --------------------------------------------------------------------------------


def _sample_label(operation: OperationModel, label: str) -> str:
    for member in operation.input_shape.members.values():
        if member.serialization.get("location") == "uri" and member.serialization.get("name") == label:
            return ARN if member.name == "Arn" else DS
    raise AssertionError(f"{operation.name}: label {label} has no uri member")


@pytest.mark.parametrize("name", service_model().operation_names)
def test_every_operation_routes_to_itself(name: str) -> None:
    operation = operation_model(name)
    template = operation.http["requestUri"]
    labels = {
        label.rstrip("+"): _sample_label(operation, label.rstrip("+")) for label in re.findall(r"{(.*?)}", template)
    }
    path = re.sub(r"{(.*?)\+?}", lambda m: quote(labels[m.group(1).rstrip("+")], safe=""), template)
    found = protocol.match_route(operation.http["method"], path)
    assert found is not None, path
    assert found[0].name == name
    assert found[1] == labels


def test_route_table_covers_the_model_once() -> None:
    routes = [(m, r.template) for m, rs in protocol.route_table().items() for r in rs]
    assert len(routes) == len(set(routes)) == len(service_model().operation_names)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/datastore", "ListDatastores"),
        ("get", f"/datastore/{DS}", "GetDatastore"),
        ("POST", "/datastore", "CreateDatastore"),
        ("DELETE", f"/datastore/{DS}", "DeleteDatastore"),
        ("PUT", "/datastore", None),
        ("GET", "/datastore/", None),
        ("GET", f"/datastore/{DS}/extra", None),
        ("POST", f"/datastore/{DS}/imageSet/{IS}/getImageSet/", None),
    ],
)
def test_datastore_routes_are_distinct(method: str, path: str, expected: str | None) -> None:
    found = protocol.match_route(method, path)
    assert (found[0].name if found else None) == expected


def test_arn_label_is_decoded_and_a_raw_slash_does_not_match() -> None:
    operation, labels = protocol.match_route("GET", "/tags/" + quote(ARN, safe=""))
    assert operation.name == "ListTagsForResource"
    assert labels == {"resourceArn": ARN}
    assert protocol.match_route("GET", "/tags/" + ARN) is None


def test_greedy_label_spans_slashes() -> None:
    fake = OperationModel(
        {"name": "GetThing", "http": {"method": "GET", "requestUri": "/things/{Key+}/meta?x-id=1"}}, service_model()
    )
    route = protocol._compile_route(fake)
    match = route.regex.fullmatch("/things/a/b%20c/meta")
    assert route.labels == ("Key",) and match and match.group(1) == "a/b%20c"


def test_unknown_route_is_unknown_operation() -> None:
    with pytest.raises(exceptions.UnknownOperationException) as caught:
        protocol.parse_request("PATCH", "/nowhere?x=1", {}, b"")
    assert "PATCH /nowhere" in caught.value.message
    status, headers, body = protocol.serialize_error(caught.value)
    parsed = botocore_parse(operation_model("GetImageSet"), status, headers, body)
    assert parsed["Error"]["Code"] == "UnknownOperationException"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 404


# --- request round trips (botocore serializes, we parse) ------------------------------------


def test_copy_image_set_round_trip() -> None:
    params = {
        "datastoreId": DS,
        "sourceImageSetId": IS,
        "copyImageSetInformation": {
            "sourceImageSet": {
                "latestVersionId": "3",
                "DICOMCopies": {
                    "copiableAttributes": json.dumps(
                        {"SchemaVersion": "1.1", "Study": {"Series": {"1.2.3": {"Instances": {"1.2.3.4": {}}}}}}
                    )
                },
            },
            "destinationImageSet": {"imageSetId": IS2, "latestVersionId": "1"},
        },
        "force": True,
        "promoteToPrimary": False,
    }
    assert round_trip("CopyImageSet", params) == params


def test_search_image_sets_round_trip_with_timestamps() -> None:
    params = {
        "datastoreId": DS,
        "maxResults": 50,
        "nextToken": "abc/+=",
        "searchCriteria": {
            "filters": [
                {"values": [{"createdAt": T0}, {"createdAt": T1}], "operator": "BETWEEN"},
                {"values": [{"DICOMPatientId": "PAT-1"}], "operator": "EQUAL"},
            ],
            "sort": {"sortOrder": "ASC", "sortField": "createdAt"},
        },
    }
    parsed = round_trip("SearchImageSets", params)
    values = parsed["searchCriteria"]["filters"][0]["values"]
    assert values == [{"createdAt": T0.timestamp()}, {"createdAt": T1.timestamp()}]
    assert isinstance(values[0]["createdAt"], float)
    parsed["searchCriteria"]["filters"][0]["values"] = params["searchCriteria"]["filters"][0]["values"]
    assert parsed == params


def test_iso_timestamps_are_accepted_in_the_body() -> None:
    body = json.dumps({"filters": [{"values": [{"updatedAt": "2024-01-02T03:04:05Z"}], "operator": "EQUAL"}]}).encode()
    _, parsed = protocol.parse_request("POST", f"/datastore/{DS}/searchImageSets", {}, body)
    assert parsed["searchCriteria"]["filters"][0]["values"][0]["updatedAt"] == T0.timestamp()


def test_update_image_set_metadata_round_trip_with_blobs() -> None:
    updates = json.dumps({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHEST"}}}).encode()
    params = {
        "datastoreId": DS,
        "imageSetId": IS,
        "latestVersionId": "7",
        "force": True,
        "updateImageSetMetadataUpdates": {
            "DICOMUpdates": {"updatableAttributes": updates, "removableAttributes": b"\x00\xff"}
        },
    }
    assert round_trip("UpdateImageSetMetadata", params) == params


def test_untag_resource_round_trip_with_repeated_query_keys() -> None:
    params = {"resourceArn": ARN, "tagKeys": ["team", "cost+center", "a/b"]}
    method, target, _, _ = wire_request("UntagResource", params)
    assert "tagKeys=team&tagKeys=cost%2Bcenter" in target
    assert round_trip("UntagResource", params) == params


def test_list_image_set_versions_round_trip_with_integer_query() -> None:
    params = {"datastoreId": DS, "imageSetId": IS, "maxResults": 7, "nextToken": "n1"}
    parsed = round_trip("ListImageSetVersions", params)
    assert parsed == params and type(parsed["maxResults"]) is int


def test_tag_resource_round_trip_with_arn_label() -> None:
    params = {"resourceArn": ARN, "tags": {"team": "imaging", "env": ""}}
    method, target, _, _ = wire_request("TagResource", params)
    assert method == "POST" and target.startswith("/tags/arn%3Aaws%3Amedical-imaging%3A")
    assert round_trip("TagResource", params) == params


def test_get_image_set_reads_the_version_query_key() -> None:
    params = {"datastoreId": DS, "imageSetId": IS, "versionId": "12"}
    assert round_trip("GetImageSet", params) == params


def test_empty_body_and_headers_are_fine() -> None:
    operation, parsed = protocol.parse_request("GET", "/datastore", {"Host": "x"}, b"")
    assert operation.name == "ListDatastores" and parsed == {}


# --- request validation ---------------------------------------------------------------------

COPY_PATH = f"/datastore/{DS}/imageSet/{IS}/copyImageSet"


def copy_body(**source: Any) -> bytes:
    return json.dumps({"sourceImageSet": {"latestVersionId": "1", **source}}).encode()


def test_bad_id_pattern() -> None:
    message = parse_error(
        ["1 validation error detected", "Value 'xyz' at 'datastoreId'", "regular expression pattern: [0-9a-z]{32}"],
        "POST",
        f"/datastore/xyz/imageSet/{IS}/copyImageSet",
        {},
        copy_body(),
    )
    assert message.startswith("1 validation error detected: Value 'xyz' at 'datastoreId' failed to satisfy constraint")


def test_oversize_copiable_attributes_is_rejected_without_echoing_it() -> None:
    huge = "x" * 260_001
    message = parse_error(
        [
            "copyImageSetInformation.sourceImageSet.DICOMCopies.copiableAttributes",
            "length less than or equal to 260000",
        ],
        "POST",
        COPY_PATH,
        {},
        copy_body(DICOMCopies={"copiableAttributes": huge}),
    )
    assert "xxxxxxxx" not in message  # the member is sensitive


def test_copiable_attributes_at_the_limit_is_fine() -> None:
    _, parsed = protocol.parse_request(
        "POST", COPY_PATH, {}, copy_body(DICOMCopies={"copiableAttributes": "x" * 260_000})
    )
    assert len(parsed["copyImageSetInformation"]["sourceImageSet"]["DICOMCopies"]["copiableAttributes"]) == 260_000


def test_missing_required_member_names_its_path() -> None:
    body = json.dumps({"sourceImageSet": {}, "destinationImageSet": {"imageSetId": IS2}}).encode()
    message = parse_error(
        [
            "2 validation errors detected",
            "Value null at 'copyImageSetInformation.sourceImageSet.latestVersionId'",
            "must not be null",
            "'copyImageSetInformation.destinationImageSet.latestVersionId'",
        ],
        "POST",
        COPY_PATH,
        {},
        body,
    )
    assert message.count("must not be null") == 2


def test_missing_payload_member() -> None:
    parse_error(["Value null at 'copyImageSetInformation'"], "POST", COPY_PATH, {}, b"")


def test_bad_enum() -> None:
    body = json.dumps({"sort": {"sortOrder": "UP", "sortField": "createdAt"}}).encode()
    parse_error(
        ["Value 'UP' at 'searchCriteria.sort.sortOrder'", "enum value set: [ASC, DESC]"],
        "POST",
        f"/datastore/{DS}/searchImageSets",
        {},
        body,
    )


def test_unknown_member_in_body() -> None:
    parse_error(
        ["'copyImageSetInformation.sourceImageSet.latestVersion'", "unknown member 'latestVersion'"],
        "POST",
        COPY_PATH,
        {},
        copy_body(latestVersion="1"),
    )


def test_located_member_sent_in_the_body_is_reported() -> None:
    body = json.dumps(
        {
            "dataAccessRoleArn": "arn:aws:iam::123456789012:role/import",
            "clientToken": "t",
            "inputS3Uri": "s3://bucket/in/",
            "outputS3Uri": "s3://bucket/out/",
            "datastoreId": DS,
        }
    ).encode()
    message = parse_error(
        ["Value at 'datastoreId'", "belongs in the uri, not in the body"],
        "POST",
        f"/startDICOMImportJob/datastore/{DS}",
        {},
        body,
    )
    assert message.startswith("1 validation error detected")
    good = json.loads(body)
    del good["datastoreId"]
    _, parsed = protocol.parse_request("POST", f"/startDICOMImportJob/datastore/{DS}", {}, json.dumps(good).encode())
    assert parsed == dict(good, datastoreId=DS)
    body = json.dumps({"sourceImageSet": {"latestVersionId": "1"}, "force": True}).encode()
    parse_error(["unknown member 'force' of CopyImageSetInformation"], "POST", COPY_PATH, {}, body)


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b"\xff\xfe\x00"])
def test_malformed_json(body: bytes) -> None:
    parse_error(["Could not parse the request body as JSON"], "POST", COPY_PATH, {}, body)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"3"])
def test_non_object_json(body: bytes) -> None:
    parse_error(["must be a JSON object"], "POST", COPY_PATH, {}, body)
    parse_error(["must be a JSON object"], "POST", "/datastore", {}, body)


def test_union_with_two_members() -> None:
    body = json.dumps({"DICOMUpdates": {"updatableAttributes": "e30="}, "revertToVersionId": "1"}).encode()
    parse_error(
        ["'updateImageSetMetadataUpdates'", "exactly one member set", "found 2"],
        "POST",
        f"/datastore/{DS}/imageSet/{IS}/updateImageSetMetadata?latestVersion=2",
        {},
        body,
    )


def test_union_with_no_member() -> None:
    parse_error(
        ["exactly one member set", "found 0"],
        "POST",
        f"/datastore/{DS}/imageSet/{IS}/updateImageSetMetadata?latestVersion=2",
        {},
        b"{}",
    )


def test_blob_must_be_base64() -> None:
    body = json.dumps({"DICOMUpdates": {"updatableAttributes": "not base64!"}}).encode()
    parse_error(
        ["'updateImageSetMetadataUpdates.DICOMUpdates.updatableAttributes'", "valid base64"],
        "POST",
        f"/datastore/{DS}/imageSet/{IS}/updateImageSetMetadata?latestVersion=2",
        {},
        body,
    )


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        ("maxResults=0", ["Value '0' at 'maxResults'", "greater than or equal to 1"]),
        ("maxResults=51", ["less than or equal to 50"]),
        ("maxResults=abc", ["Value 'abc' at 'maxResults'", "of type integer"]),
        ("maxResults=1.5", ["of type integer"]),
        ("maxResults=", ["of type integer"]),
    ],
)
def test_bad_max_results(query: str, fragments: list[str]) -> None:
    parse_error(fragments, "POST", f"/datastore/{DS}/imageSet/{IS}/listImageSetVersions?{query}", {}, b"")


def test_query_booleans_are_true_or_false() -> None:
    _, parsed = protocol.parse_request("POST", COPY_PATH + "?force=false&promoteToPrimary=true", {}, copy_body())
    assert parsed["force"] is False and parsed["promoteToPrimary"] is True
    parse_error(["Value 'yes' at 'force'", "of type boolean"], "POST", COPY_PATH + "?force=yes", {}, copy_body())


def test_several_problems_are_all_reported() -> None:
    message = parse_error(
        ["3 validation errors detected"],
        "POST",
        "/datastore/bad/imageSet/BAD/copyImageSet?promoteToPrimary=1",
        {},
        copy_body(),
    )
    assert message.count("failed to satisfy constraint") == 3


# --- the validator on its own ---------------------------------------------------------------


def test_validator_types() -> None:
    shape = operation_model("GetImageSet").output_shape
    good = {
        "datastoreId": DS,
        "imageSetId": IS,
        "versionId": "1",
        "imageSetState": "ACTIVE",
        "createdAt": T0,
        "updatedAt": 1.5,
        "isPrimary": True,
        "overrides": {"forced": False},
    }
    assert validate(shape, good) == []
    bad = dict(good, isPrimary="true", createdAt=True, versionId=1, overrides=[])
    problems = validate(shape, bad)
    assert len(problems) == 4
    assert {p.split("'")[3] for p in problems} == {"isPrimary", "createdAt", "versionId", "overrides"}


def test_validator_rejects_bool_as_integer_and_checks_maps() -> None:
    summary = service_model().shape_for("ImageSetsMetadataSummary")
    assert validate(summary, {"imageSetId": IS, "version": True}) != []
    assert validate(summary, {"imageSetId": IS, "version": 3}) == []
    tags = service_model().shape_for("TagMap")
    problems = validate(tags, {"aws:internal": "x", "ok": "y" * 257}, "tags")
    assert any("tags['aws:internal'] (key)" in p and "pattern" in p for p in problems)
    assert any("tags['ok']" in p and "length less than or equal to 256" in p for p in problems)


def test_validator_list_lengths() -> None:
    criteria = service_model().shape_for("SearchCriteria")
    filt = {"values": [{"isPrimary": True}], "operator": "EQUAL"}
    assert validate(criteria, {"filters": [filt, filt]}) == []
    problems = validate(criteria, {"filters": [filt] * 3}, "searchCriteria")
    assert len(problems) == 1 and "at 'searchCriteria.filters'" in problems[0]
    assert "length less than or equal to 2" in problems[0]
    assert (
        "[0].values[0].isPrimary"
        in validate(criteria, {"filters": [{"values": [{"isPrimary": "no"}], "operator": "EQUAL"}]})[0]
    )


def test_catastrophic_pattern_is_linear_and_equivalent() -> None:
    shape = service_model().shape_for("MetadataFilePath")
    # With the model's own pattern this input takes hours (exponential backtracking); the pytest
    # timeout is the guard, not a wall-clock assertion.
    assert validate(shape, "a" * 60 + "\n") != []
    original = re.compile(shape.metadata["pattern"])
    samples = ["a", "a b", " a", "a ", "a  b~!", "x/y z.json", "", "a\tb", "ab  ", "!", "~ ~"]
    for sample in samples:
        assert bool(compiled_pattern(shape.metadata["pattern"]).fullmatch(sample)) == bool(
            original.fullmatch(sample)
        ), sample


def test_java_ascii_class_is_translated() -> None:
    token = service_model().shape_for("NextToken")
    assert validate(token, "abc/+=") == []
    assert "pattern" in validate(token, "é")[0]


def test_validate_input_on_parsed_params() -> None:
    operation = operation_model("GetImageSet")
    assert validate_input(operation, {"datastoreId": DS, "imageSetId": IS}) == []
    assert validate_input(operation, {"datastoreId": DS}) == [
        "Value null at 'imageSetId' failed to satisfy constraint: Member must not be null"
    ]


# --- responses (we serialize, botocore parses) ----------------------------------------------


def test_get_image_set_response_round_trip() -> None:
    operation = operation_model("GetImageSet")
    output = {
        "datastoreId": DS,
        "imageSetId": IS,
        "versionId": "2",
        "imageSetState": "LOCKED",
        "imageSetWorkflowStatus": "COPYING",
        "createdAt": T0,
        "updatedAt": T1.timestamp(),
        "imageSetArn": ARN,
        "overrides": {"forced": True},
        "isPrimary": True,
        "message": None,
    }
    status, headers, body = protocol.serialize_response(operation, output, strict=True)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert b"message" not in body
    assert json.loads(body)["createdAt"] == T0.timestamp()
    parsed = botocore_parse(operation, status, headers, body)
    assert parsed["createdAt"] == T0 and parsed["updatedAt"] == T1
    assert {k: parsed[k] for k in ("versionId", "imageSetWorkflowStatus", "overrides", "isPrimary")} == {
        "versionId": "2",
        "imageSetWorkflowStatus": "COPYING",
        "overrides": {"forced": True},
        "isPrimary": True,
    }


def test_get_image_set_metadata_response_is_raw_gzip() -> None:
    operation = operation_model("GetImageSetMetadata")
    document = gzip.compress(json.dumps({"SchemaVersion": "1.1", "ImageSetID": IS}).encode())
    output = {"imageSetMetadataBlob": document, "contentType": "application/json", "contentEncoding": "gzip"}
    assert validate_output(operation, output) == []
    status, headers, body = protocol.serialize_response(operation, output, strict=True)
    assert body == document
    assert headers == {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    parsed = botocore_parse(operation, status, headers, body)
    assert parsed["contentEncoding"] == "gzip" and parsed["contentType"] == "application/json"
    assert json.loads(gzip.decompress(parsed["imageSetMetadataBlob"].read()))["ImageSetID"] == IS


def test_streaming_output_requires_its_payload() -> None:
    operation = operation_model("GetImageFrame")
    assert "Value null at 'imageFrameBlob'" in validate_output(operation, {"contentType": "x"})[0]
    assert validate_output(operation, {"imageFrameBlob": io.BytesIO(b"j2k")}) == []
    status, headers, body = protocol.serialize_response(operation, {"imageFrameBlob": io.BytesIO(b"j2k")})
    assert body == b"j2k" and headers["Content-Type"] == "application/octet-stream"


def test_list_image_set_versions_uses_capital_workflow_status() -> None:
    operation = operation_model("ListImageSetVersions")
    item = {
        "imageSetId": IS,
        "versionId": "1",
        "imageSetState": "ACTIVE",
        "ImageSetWorkflowStatus": "COPY_FAILED",
        "message": "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match.",
        "createdAt": T0,
        "overrides": {"forced": False},
    }
    output = {"imageSetPropertiesList": [item], "nextToken": "t"}
    status, headers, body = protocol.serialize_response(operation, output, strict=True)
    parsed = botocore_parse(operation, status, headers, body)
    assert parsed["imageSetPropertiesList"][0]["ImageSetWorkflowStatus"] == "COPY_FAILED"
    assert parsed["imageSetPropertiesList"][0]["createdAt"] == T0

    wrong = {
        "imageSetPropertiesList": [
            dict(imageSetId=IS, versionId="1", imageSetState="ACTIVE", imageSetWorkflowStatus="COPIED")
        ]
    }
    problems = validate_output(operation, wrong)
    assert problems == [
        "Value at 'imageSetPropertiesList[0].imageSetWorkflowStatus' failed to satisfy constraint: unknown member "
        "'imageSetWorkflowStatus' of ImageSetProperties (did you mean 'ImageSetWorkflowStatus'?)"
    ]
    with pytest.raises(AssertionError, match="did you mean 'ImageSetWorkflowStatus'"):
        protocol.serialize_response(operation, wrong, strict=True)


def test_search_summaries_carry_an_integer_version() -> None:
    operation = operation_model("SearchImageSets")
    output = {
        "imageSetsMetadataSummaries": [
            {
                "imageSetId": IS,
                "version": 4,
                "createdAt": T0,
                "DICOMTags": {"DICOMPatientId": "P", "DICOMSeriesNumber": 3},
            }
        ]
    }
    status, headers, body = protocol.serialize_response(operation, output, strict=True)
    assert botocore_parse(operation, status, headers, body)["imageSetsMetadataSummaries"][0]["version"] == 4
    assert validate_output(operation, {"imageSetsMetadataSummaries": [{"imageSetId": IS, "version": "4"}]}) != []


def test_copy_image_set_response_round_trip() -> None:
    operation = operation_model("CopyImageSet")
    output = {
        "datastoreId": DS,
        "sourceImageSetProperties": {
            "imageSetId": IS,
            "latestVersionId": "3",
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "COPYING_WITH_READ_ONLY_ACCESS",
            "imageSetArn": ARN,
        },
        "destinationImageSetProperties": {
            "imageSetId": IS2,
            "latestVersionId": "1",
            "imageSetState": "LOCKED",
            "imageSetWorkflowStatus": "COPYING",
            "createdAt": T0,
        },
    }
    parsed = botocore_parse(operation, *protocol.serialize_response(operation, output, strict=True))
    assert parsed["destinationImageSetProperties"]["createdAt"] == T0
    assert parsed["sourceImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING_WITH_READ_ONLY_ACCESS"


def test_empty_output() -> None:
    status, headers, body = protocol.serialize_response(operation_model("TagResource"), {}, strict=True)
    assert (status, body) == (200, b"{}")


def test_timestamp_format_trait_is_honoured() -> None:
    assert protocol._format_timestamp(T1, "iso8601") == "2024-06-07T08:09:10.500000Z"
    assert protocol._format_timestamp(T0.timestamp(), "rfc822") == "Tue, 02 Jan 2024 03:04:05 GMT"
    assert protocol._format_timestamp(T0, "unixTimestamp") == T0.timestamp()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (exceptions.ThrottlingException("Rate exceeded"), 429),
        (exceptions.ServiceQuotaExceededException("Too many copies"), 402),
        (exceptions.ConflictException("Image set is locked"), 409),
        (exceptions.ValidationException("1 validation error detected: x"), 400),
        (exceptions.ResourceNotFoundException("no such image set"), 404),
    ],
)
def test_errors_parse_in_botocore(error: exceptions.HealthImagingError, status: int) -> None:
    wire_status, headers, body = protocol.serialize_error(error)
    assert wire_status == status and headers["x-amzn-ErrorType"] == error.code
    parsed = botocore_parse(operation_model("CopyImageSet"), wire_status, headers, body)
    assert parsed["Error"] == {"Code": error.code, "Message": error.message}
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == status


# --- a real boto3 client, answered in process ------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._stream = io.BytesIO(body)

    def stream(self, **_: Any):
        yield self._stream.read()

    def read(self, *args: Any, **_: Any) -> bytes:
        return self._stream.read(*args)


@pytest.fixture
def client_and_calls():
    """A boto3 client whose requests go through parse_request and come back via serialize_*."""
    calls: list[tuple[str, dict]] = []
    outputs: dict[str, Any] = {}

    def answer(request, **_: Any) -> AWSResponse:
        url = urlsplit(request.url)
        target = url.path + (f"?{url.query}" if url.query else "")
        body = request.body or b""
        try:
            operation, params = protocol.parse_request(request.method, target, dict(request.headers), body)
            calls.append((operation.name, params))
            result = outputs[operation.name]
            if isinstance(result, exceptions.HealthImagingError):
                raise result
            status, headers, payload = protocol.serialize_response(operation, result, strict=True)
        except exceptions.HealthImagingError as error:
            status, headers, payload = protocol.serialize_error(error)
        return AWSResponse(request.url, status, headers, _Raw(payload))

    client = boto3.client(
        "medical-imaging",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(inject_host_prefix=False, retries={"total_max_attempts": 1}),
    )
    client.meta.events.register("before-send.medical-imaging.*", answer)
    return client, calls, outputs


def test_boto3_copy_and_metadata(client_and_calls) -> None:
    client, calls, outputs = client_and_calls
    outputs["CopyImageSet"] = {
        "datastoreId": DS,
        "sourceImageSetProperties": {"imageSetId": IS, "latestVersionId": "1"},
        "destinationImageSetProperties": {"imageSetId": IS2, "latestVersionId": "1", "createdAt": T0},
    }
    result = client.copy_image_set(
        datastoreId=DS,
        sourceImageSetId=IS,
        force=True,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}},
    )
    assert result["destinationImageSetProperties"]["createdAt"] == T0
    assert calls[-1] == (
        "CopyImageSet",
        {
            "datastoreId": DS,
            "sourceImageSetId": IS,
            "force": True,
            "copyImageSetInformation": {"sourceImageSet": {"latestVersionId": "1"}},
        },
    )
    document = gzip.compress(b'{"SchemaVersion":"1.1"}')
    outputs["GetImageSetMetadata"] = {
        "imageSetMetadataBlob": document,
        "contentType": "application/json",
        "contentEncoding": "gzip",
    }
    result = client.get_image_set_metadata(datastoreId=DS, imageSetId=IS, versionId="1")
    assert result["contentEncoding"] == "gzip" and result["imageSetMetadataBlob"].read() == document
    outputs["ListTagsForResource"] = {"tags": {"a": "b"}}
    assert client.list_tags_for_resource(resourceArn=ARN)["tags"] == {"a": "b"}
    assert calls[-1] == ("ListTagsForResource", {"resourceArn": ARN})


def test_boto3_sees_modeled_errors(client_and_calls) -> None:
    client, _, outputs = client_and_calls
    outputs["CopyImageSet"] = exceptions.ServiceQuotaExceededException("quota")
    with pytest.raises(client.exceptions.ServiceQuotaExceededException) as caught:
        client.copy_image_set(
            datastoreId=DS, sourceImageSetId=IS, copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}}
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    # botocore sends a bad id pattern; the server answers ValidationException
    with pytest.raises(client.exceptions.ValidationException, match="at 'datastoreId'"):
        client.get_image_set(datastoreId="not-an-id", imageSetId=IS)
    outputs["GetImageSet"] = exceptions.ThrottlingException("Rate exceeded")
    with pytest.raises(client.exceptions.ThrottlingException):
        client.get_image_set(datastoreId=DS, imageSetId=IS)


def test_unknown_operation_is_a_client_error() -> None:
    status, headers, body = protocol.serialize_error(
        exceptions.UnknownOperationException("No operation matches PATCH /x")
    )
    response = {"status_code": status, "headers": HeadersDict(headers), "body": body}
    parsed = create_parser("rest-json").parse(response, None)
    error = botocore.exceptions.ClientError(parsed, "Nothing")
    assert error.response["Error"]["Code"] == "UnknownOperationException"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 404
