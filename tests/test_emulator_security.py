"""What the emulator refuses, over real HTTP: browser cross-origin requests and the content types a web
page can send without a preflight, imports outside ``--s3-root``, and admin requests without the admin
token; and that boto3 and the admin client still work.

Each refusal is checked for its status and message and, where the request would have changed
something, for having changed nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom.data
import pytest
from botocore.exceptions import ClientError

from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV, admin_request
from healthimaging_emulator.pytest_plugin import EmulatorHandle, running_emulator

REPO = Path(__file__).resolve().parents[1]
ROLE = "arn:aws:iam::123456789012:role/ImportRole"
TOKEN = "correct-horse-battery-staple"
SIMPLE_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "text/plain;charset=UTF-8",
]
ALLOW_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-allow-private-network",
)


# ---------------------------------------------------------------------------------------------- helpers


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def raw(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict]:
    """One request exactly as given (http.client adds Host unless ``headers`` has one): status, headers, JSON."""
    connection = http.client.HTTPConnection(*host_port(url), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(payload or b"{}")
    finally:
        connection.close()


def seeded(handle: EmulatorHandle) -> tuple[str, str]:
    """A data store with one image set: (datastore id, image set id)."""
    datastore_id = handle.seed("synthetic:1")["datastoreId"]
    summaries = handle.client().search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"]
    return datastore_id, summaries[0]["imageSetId"]


def image_set_state(handle: EmulatorHandle, datastore_id: str, image_set_id: str) -> tuple[str, str]:
    answer = handle.client().get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    return answer["imageSetState"], answer["imageSetWorkflowStatus"]


def copy_dicom(folder: Path, *names: str) -> list[Path]:
    """pydicom's bundled test files copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        target = folder / name
        shutil.copyfile(pydicom.data.get_testdata_file(name), target)
        copied.append(target)
    return copied


def import_error(client, datastore_id: str, input_uri: str, output_uri: str) -> tuple[str, int, str]:
    """(code, status, message) of a StartDICOMImportJob that must be refused."""
    with pytest.raises(ClientError) as caught:
        client.start_dicom_import_job(
            datastoreId=datastore_id, dataAccessRoleArn=ROLE, inputS3Uri=input_uri, outputS3Uri=output_uri
        )
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def run_import(client, datastore_id: str, input_uri: str, output_uri: str) -> dict:
    """Start an import and wait until it ends; its job properties."""
    job_id = client.start_dicom_import_job(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE, inputS3Uri=input_uri, outputS3Uri=output_uri
    )["jobId"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        job = client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]
        if job["jobStatus"] in ("COMPLETED", "FAILED"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"import {job_id} did not end: {job}")


def image_set_count(client, datastore_id: str) -> int:
    return len(client.search_image_sets(datastoreId=datastore_id)["imageSetsMetadataSummaries"])


@pytest.fixture
def emulator(healthimaging_emulator) -> EmulatorHandle:
    return healthimaging_emulator


# ---------------------------------------------------------------------------------------------- origins


def foreign_origins(url: str) -> list[str]:
    host, port = host_port(url)
    return [
        "http://evil.example",
        "null",
        f"https://{host}:{port}",
        f"http://{host}:{port + 1}",
        f"http://localhost:{port}",
        f"http://{host}",
        f"http://{host}:{port}.evil.example",
    ]


@pytest.mark.parametrize("path", ["/datastore", "/_emulator/health", "/_emulator/config"])
def test_a_foreign_origin_is_refused_on_api_and_admin_routes(emulator, path):
    for origin in foreign_origins(emulator.url):
        status, headers, body = raw(emulator.url, "GET", path, headers={"Origin": origin})
        assert status == 403, (origin, body)
        assert headers["x-amzn-errortype"] == "AccessDeniedException"
        assert repr(origin) in body["message"] and "cross-origin" in body["message"]
        assert emulator.url in body["message"]  # the origin it expected
        assert not set(ALLOW_HEADERS) & set(headers)


def test_a_foreign_origin_changes_nothing(emulator):
    datastore_id, image_set_id = seeded(emulator)
    path = f"/datastore/{datastore_id}/imageSet/{image_set_id}/deleteImageSet"
    status, _, _ = raw(emulator.url, "POST", path, headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _, _ = raw(
        emulator.url,
        "POST",
        "/_emulator/config",
        json.dumps({"timing": {"copy_fixed_seconds": 99}}).encode(),
        headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
    )
    assert status == 403
    assert image_set_state(emulator, datastore_id, image_set_id) == ("ACTIVE", "CREATED")
    assert emulator.admin("GET", "config")["timing"]["copy_fixed_seconds"] != 99


def test_a_cross_site_fetch_without_origin_is_refused(emulator):
    for site in ("cross-site", "same-site"):
        status, _, body = raw(emulator.url, "GET", "/datastore", headers={"Sec-Fetch-Site": site})
        assert status == 403 and site in body["message"]
    assert raw(emulator.url, "GET", "/datastore", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_the_same_origin_is_accepted(emulator):
    host, port = host_port(emulator.url)
    for path in ("/datastore", "/_emulator/health"):
        assert raw(emulator.url, "GET", path, headers={"Origin": emulator.url})[0] == 200
        # the origin is the one the request was addressed to, as in its Host header
        assert (
            raw(emulator.url, "GET", path, headers={"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"})[
                0
            ]
            == 200
        )
        assert (
            raw(emulator.url, "GET", path, headers={"Host": f"LOCALHOST:{port}", "Origin": f"http://localhost:{port}"})[
                0
            ]
            == 200
        )
        assert raw(emulator.url, "GET", path, headers={"Host": f"localhost:{port}", "Origin": emulator.url})[0] == 403


@pytest.mark.parametrize("path", ["/datastore", "/_emulator/config"])
def test_a_foreign_preflight_is_refused_without_cors_headers(emulator, path):
    preflight = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    status, headers, body = raw(emulator.url, "OPTIONS", path, headers=preflight)
    assert status == 403 and "http://evil.example" in body["message"]
    assert not set(ALLOW_HEADERS) & set(headers)
    # without an Origin, OPTIONS is no operation of the API, and still nothing allows cross-origin use
    status, headers, _ = raw(emulator.url, "OPTIONS", path)
    assert status == 404 and not set(ALLOW_HEADERS) & set(headers)


# ---------------------------------------------------------------------------------------------- content types


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
def test_simple_content_types_are_refused_on_json_operations(emulator, content_type):
    datastore_id, image_set_id = seeded(emulator)
    search = f"/datastore/{datastore_id}/searchImageSets"
    status, headers, body = raw(emulator.url, "POST", search, b"{}", headers={"Content-Type": content_type})
    assert status == 415, body
    assert headers["x-amzn-errortype"] == "UnsupportedMediaTypeException"
    assert repr(content_type) in body["message"] and "'application/json'" in body["message"]

    # an empty HTML form posted to an operation without a body: refused, and the image set is not deleted
    delete = f"/datastore/{datastore_id}/imageSet/{image_set_id}/deleteImageSet"
    assert raw(emulator.url, "POST", delete, b"", headers={"Content-Type": content_type})[0] == 415
    assert image_set_state(emulator, datastore_id, image_set_id) == ("ACTIVE", "CREATED")

    before = emulator.admin("GET", "config")
    change = json.dumps({"timing": {"copy_fixed_seconds": 99}}).encode()
    status, _, body = raw(emulator.url, "POST", "/_emulator/config", change, headers={"Content-Type": content_type})
    assert status == 415 and repr(content_type) in body["message"]
    assert emulator.admin("GET", "config") == before


def test_other_non_json_bodies_are_refused_and_json_ones_accepted(emulator):
    datastore_id, _ = seeded(emulator)
    search = f"/datastore/{datastore_id}/searchImageSets"
    for content_type in ("application/xml", "application/octet-stream", "image/png"):
        status, _, body = raw(emulator.url, "POST", search, b"{}", headers={"Content-Type": content_type})
        assert status == 415 and repr(content_type) in body["message"], content_type
    for content_type in ("application/json", "Application/JSON; charset=utf-8", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        status, _, body = raw(emulator.url, "POST", search, b"{}", headers=headers)
        assert status == 200 and len(body["imageSetsMetadataSummaries"]) == 1, content_type


def test_boto3_still_works_on_every_kind_of_operation(emulator):
    datastore_id, image_set_id = seeded(emulator)
    client = emulator.client()
    assert [d["datastoreId"] for d in client.list_datastores()["datastoreSummaries"]] == [datastore_id]
    version = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)["versionId"]
    copied = client.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=image_set_id,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": version}},
    )
    assert copied["destinationImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING"
    client.tag_resource(resourceArn=copied["destinationImageSetProperties"]["imageSetArn"], tags={"k": "v"})
    found = client.search_image_sets(
        datastoreId=datastore_id,
        searchCriteria={"filters": [{"values": [{"DICOMPatientId": "no-such-patient"}], "operator": "EQUAL"}]},
    )
    assert found["imageSetsMetadataSummaries"] == []
    assert emulator.counters()["CopyImageSet"]["succeeded"] == 1


def test_botocore_shows_the_refusal_readably(emulator):
    """A client whose requests carry a foreign Origin gets an AccessDeniedException with the message."""
    client = emulator.client()
    client.meta.events.register(
        "before-send.medical-imaging.*",
        lambda request, **_: request.headers.__setitem__("Origin", "http://evil.example"),
    )
    with pytest.raises(ClientError) as caught:
        client.list_datastores()
    error = caught.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "http://evil.example" in error["Message"] and "cross-origin" in error["Message"]


# ---------------------------------------------------------------------------------------------- imports


@pytest.fixture
def s3_root(tmp_path) -> Path:
    root = tmp_path / "s3"
    copy_dicom(root / "bucket" / "input", "CT_small.dcm", "MR_small.dcm")
    return root


@pytest.fixture
def rooted(s3_root) -> Iterator[EmulatorHandle]:
    with running_emulator(s3_root=s3_root) as handle:
        yield handle


@pytest.fixture
def datastore(rooted) -> str:
    rooted.configure(timing={"datastore_seconds": 0})
    return rooted.client().create_datastore(datastoreName="imports")["datastoreId"]


@pytest.mark.parametrize(
    ("input_uri", "output_uri"),
    [
        ("s3://bucket/../..", "s3://bucket/out"),
        ("s3://bucket/a/../../x", "s3://bucket/out"),
        ("s3://bucket/input/..", "s3://bucket/out"),
        ("s3://bucket/input", "s3://bucket/../../out"),
        ("LOCAL/bucket/input/../../..", "s3://bucket/out"),
    ],
)
def test_parent_segments_are_refused(rooted, datastore, s3_root, input_uri, output_uri):
    input_uri = input_uri.replace("LOCAL", str(s3_root))
    client = rooted.client()
    code, status, message = import_error(client, datastore, input_uri, output_uri)
    assert (code, status) == ("ValidationException", 400)
    bad = input_uri if ".." in input_uri else output_uri
    assert repr(bad) in message and "'..'" in message and str(s3_root.resolve()) in message
    assert client.list_dicom_import_jobs(datastoreId=datastore)["jobSummaries"] == []


def test_a_symlink_inside_the_root_that_points_outside_is_refused(rooted, datastore, s3_root, tmp_path):
    outside = tmp_path / "outside"
    copy_dicom(outside, "CT_small.dcm")
    (s3_root / "bucket" / "escape").symlink_to(outside, target_is_directory=True)
    client = rooted.client()
    code, status, message = import_error(client, datastore, "s3://bucket/escape", "s3://bucket/out")
    assert (code, status) == ("AccessDeniedException", 403)
    assert "'s3://bucket/escape'" in message and str(outside.resolve()) in message and str(s3_root.resolve()) in message
    # the output is confined the same way
    code, status, _ = import_error(client, datastore, "s3://bucket/input", "s3://bucket/escape/out")
    assert (code, status) == ("AccessDeniedException", 403)
    assert client.list_dicom_import_jobs(datastoreId=datastore)["jobSummaries"] == []
    assert not (outside / "out").exists()


@pytest.mark.parametrize("spelling", ["{path}", "file://{path}", "s3://local-folder{path}"])
def test_a_local_folder_outside_the_root_is_refused(rooted, datastore, s3_root, tmp_path, spelling):
    outside = tmp_path / "outside"
    copy_dicom(outside, "CT_small.dcm")
    client = rooted.client()
    uri = spelling.format(path=outside)
    code, status, message = import_error(client, datastore, uri, "s3://bucket/out")
    assert (code, status) == ("AccessDeniedException", 403)
    assert repr(uri) in message and str(s3_root.resolve()) in message
    code, status, _ = import_error(client, datastore, "s3://bucket/input", spelling.format(path=tmp_path / "written"))
    assert (code, status) == ("AccessDeniedException", 403)
    assert not (tmp_path / "written").exists()
    assert client.list_dicom_import_jobs(datastoreId=datastore)["jobSummaries"] == []


def test_a_good_import_under_the_root_still_works(rooted, datastore, s3_root):
    client = rooted.client()
    job = run_import(client, datastore, "s3://bucket/input", "s3://bucket/out")
    assert job["jobStatus"] == "COMPLETED", job
    assert image_set_count(client, datastore) == 2
    manifest = s3_root / "bucket" / "out" / f"{datastore}-DicomImport-{job['jobId']}" / "job-output-manifest.json"
    assert json.loads(manifest.read_text())["imageSetsCreated"] == 2
    # a local folder under the root is accepted too, and reported back as a URI that works again
    job = run_import(client, datastore, str(s3_root / "bucket" / "input"), f"file://{s3_root / 'bucket' / 'out'}")
    assert job["jobStatus"] == "COMPLETED" and job["inputS3Uri"].startswith("s3://local-folder/")
    assert run_import(client, datastore, job["inputS3Uri"], job["outputS3Uri"])["jobStatus"] == "COMPLETED"
    assert image_set_count(client, datastore) == 6


def test_a_linked_file_that_leaves_the_root_is_not_read(rooted, datastore, s3_root, tmp_path):
    outside = tmp_path / "outside"
    (secret,) = copy_dicom(outside, "CT_small.dcm")
    folder = s3_root / "bucket" / "mixed"
    copy_dicom(folder, "MR_small.dcm")
    (folder / "linked.dcm").symlink_to(secret)
    (folder / "linked-dir").symlink_to(outside, target_is_directory=True)
    client = rooted.client()
    job = run_import(client, datastore, "s3://bucket/mixed", "s3://bucket/out")
    assert job["jobStatus"] == "COMPLETED"
    assert image_set_count(client, datastore) == 1  # MR_small only
    out = s3_root / "bucket" / "out" / f"{datastore}-DicomImport-{job['jobId']}"
    failures = [json.loads(line) for line in (out / "FAILURE" / "failure.ndjson").read_text().splitlines()]
    assert [Path(f["inputFile"]).name for f in failures] == ["linked.dcm"]
    assert "outside --s3-root" in failures[0]["exception"]["message"]


def test_a_root_reached_through_a_symlink_works(tmp_path, s3_root):
    link = tmp_path / "root-link"
    link.symlink_to(s3_root, target_is_directory=True)
    with running_emulator(s3_root=link) as handle:
        handle.configure(timing={"datastore_seconds": 0})
        client = handle.client()
        datastore_id = client.create_datastore(datastoreName="linked")["datastoreId"]
        assert run_import(client, datastore_id, "s3://bucket/input", "s3://bucket/out")["jobStatus"] == "COMPLETED"
        assert (
            run_import(client, datastore_id, str(link / "bucket" / "input"), "s3://bucket/out")["jobStatus"]
            == "COMPLETED"
        )


def test_without_a_root_every_import_is_refused(emulator, s3_root):
    emulator.configure(timing={"datastore_seconds": 0})
    client = emulator.client()
    datastore_id = client.create_datastore(datastoreName="no-root")["datastoreId"]
    for uri in ("s3://bucket/input", str(s3_root / "bucket" / "input"), f"file://{s3_root / 'bucket' / 'input'}"):
        code, status, message = import_error(client, datastore_id, uri, "s3://bucket/out")
        assert (code, status) == ("ValidationException", 400)
        assert repr(uri) in message and "--s3-root" in message
    assert client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"] == []


# ---------------------------------------------------------------------------------------------- admin token


@pytest.fixture
def guarded() -> Iterator[EmulatorHandle]:
    with running_emulator(admin_token=TOKEN) as handle:
        yield handle


ADMIN_CALLS = [
    ("GET", "health", None),
    ("GET", "config", None),
    ("POST", "config", {"timing": {"copy_fixed_seconds": 99}}),
    ("GET", "counters", None),
    ("DELETE", "counters", None),
    ("POST", "seed", {"seed": "synthetic:1"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_every_admin_route_needs_the_token(guarded, method, path, body):
    for token in ("", "wrong-token", TOKEN + "x", TOKEN[:-1]):
        status, answer = admin_request(guarded.url, method, path, body, token=token)
        assert status == 401, (token, answer)
        assert "Authorization: Bearer" in answer["message"] and "--admin-token" in answer["message"]
        assert TOKEN not in answer["message"]
        if token:  # the empty token is in every string
            assert token not in answer["message"]
    assert guarded.client().list_datastores()["datastoreSummaries"] == []  # no seed went through
    assert guarded.admin("GET", "config")["timing"]["copy_fixed_seconds"] != 99  # no config either
    status, _ = admin_request(guarded.url, method, path, body, token=TOKEN)
    assert status == 200


def test_the_token_must_come_as_a_bearer_header(guarded):
    for authorization in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}", "Bearer"):
        status, headers, body = raw(guarded.url, "GET", "/_emulator/health", headers={"Authorization": authorization})
        assert status == 401, authorization
        assert headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in json.dumps(body)
    assert raw(guarded.url, "GET", "/_emulator/health", headers={"Authorization": f"bearer  {TOKEN}"})[0] == 200


def test_the_token_guards_only_the_admin_api(guarded):
    guarded.configure(timing={"datastore_seconds": 0})  # the handle sends the server's token itself
    client = guarded.client()
    created = client.create_datastore(datastoreName="open-api")
    assert created["datastoreStatus"] == "ACTIVE"
    assert guarded.counters()["CreateDatastore"]["succeeded"] == 1


def test_without_a_token_the_admin_api_is_open(emulator):
    assert emulator.server.admin_token == ""
    assert admin_request(emulator.url, "GET", "health", token="")[0] == 200
    assert admin_request(emulator.url, "GET", "/_emulator/health", token="anything")[0] == 200
    assert admin_request(emulator.url, "POST", "config", {"seed": 5}, token="")[1]["seed"] == 5


def test_the_admin_client_reads_the_token_from_the_environment(guarded, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
    assert admin_request(guarded.url, "GET", "health")[0] == 200
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "other")
    assert admin_request(guarded.url, "GET", "health")[0] == 401
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    assert admin_request(guarded.url, "GET", "health")[0] == 401


# ---------------------------------------------------------------------------------------------- the command line


@contextmanager
def cli_emulator(*args: str, env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """``python -m healthimaging_emulator --port 0 ARGS`` with exactly ``env`` added to a clean environment:
    (its URL, the lines it printed up to 'listening on')."""
    environ = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV} | env | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "healthimaging_emulator", "--port", "0", *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    printed: list[str] = []
    try:
        while (line := lines.get(timeout=30)) is not None:
            printed.append(line)
            if found := re.search(r"listening on (http://\S+)", line):
                yield found.group(1), printed
                return
        raise AssertionError(f"the emulator exited with {process.wait()}: {''.join(printed)}")
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--admin-token", TOKEN], {}),
        ([], {ADMIN_TOKEN_ENV: TOKEN}),
        (["--admin-token", TOKEN], {ADMIN_TOKEN_ENV: "the-flag-wins"}),
    ],
)
def test_the_cli_flag_and_the_environment_set_the_token(args, env):
    with cli_emulator(*args, env=env) as (url, printed):
        assert admin_request(url, "GET", "health", token="")[0] == 401
        assert admin_request(url, "GET", "health", token="the-flag-wins")[0] == 401
        assert admin_request(url, "GET", "health", token=TOKEN)[0] == 200
        assert any("admin API: token required" in line for line in printed)
        assert not any(TOKEN in line for line in printed)


def test_the_cli_without_a_token_is_open_and_help_never_prints_the_token():
    with cli_emulator(env={}) as (url, printed):
        assert admin_request(url, "GET", "health", token="")[0] == 200
        assert any("admin API: open" in line for line in printed)
    shown = subprocess.run(
        [sys.executable, "-m", "healthimaging_emulator", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, ADMIN_TOKEN_ENV: TOKEN},
        check=True,
    ).stdout
    assert "--admin-token" in shown and ADMIN_TOKEN_ENV in shown.replace("\n", "").replace(" ", "")
    assert TOKEN not in shown


# ---------------------------------------------------------------------------------------------- DNS rebinding


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.nip.io:{port}",
        "localhost.evil.example",
        "runtime-evil.example:{port}",
    ],
)
def test_a_host_name_the_emulator_was_not_told_about_is_refused(emulator, host):
    """A page whose domain was pointed at this machine is same-origin by its Origin: only Host shows it."""
    _, port = host_port(emulator.url)
    named = host.format(port=port)
    status, _, answer = raw(
        emulator.url,
        "POST",
        "/_emulator/config",
        b'{"faults": {}}',
        {"Host": named, "Origin": f"http://{named}", "Content-Type": "application/json"},
    )
    assert status == 403 and "DNS rebinding" in answer["message"] and "--allowed-host" in answer["message"]
    status, _, _ = raw(emulator.url, "DELETE", "/datastore/" + "0" * 32, headers={"Host": named})
    assert status == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "10.1.2.3"])
def test_ip_addresses_and_localhost_pass_the_host_check(emulator, host):
    _, port = host_port(emulator.url)
    status, _, answer = raw(emulator.url, "GET", "/_emulator/health", headers={"Host": host.format(port=port)})
    assert status == 200 and answer["status"] == "ok"


def test_allowed_host_names_pass(tmp_path):
    with running_emulator(allowed_hosts=["healthimaging-emulator"]) as handle:
        _, port = host_port(handle.url)
        assert raw(handle.url, "GET", "/_emulator/health", headers={"Host": f"healthimaging-emulator:{port}"})[0] == 200
        assert raw(handle.url, "GET", "/_emulator/health", headers={"Host": f"other:{port}"})[0] == 403


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--allowed-host", "emulator.internal"], {}),
        ([], {"HEALTHIMAGING_EMULATOR_ALLOWED_HOSTS": "other.internal, emulator.internal"}),
    ],
)
def test_the_cli_flag_and_the_environment_allow_host_names(args, env):
    with cli_emulator(*args, env=env) as (url, _):
        _, port = host_port(url)
        assert raw(url, "GET", "/_emulator/health", headers={"Host": f"emulator.internal:{port}"})[0] == 200
        assert raw(url, "GET", "/_emulator/health", headers={"Host": f"rebound.example:{port}"})[0] == 403
