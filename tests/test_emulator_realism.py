"""The emulator's realism over real HTTP with real boto3 clients: rate limits, seeded faults,
lost responses and what SDK retries make of them, counters and the admin API, durability across
``kill -9``, the command line, and concurrent clients.

Timing-sensitive expectations are derived from times measured around the calls, never from a
fixed wall-clock bound.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, HTTPClientError
from botocore.retries import standard as standard_retries

from healthimaging_emulator.admin_client import admin_request
from healthimaging_emulator.pytest_plugin import EmulatorHandle, make_client, start_emulator
from healthimaging_emulator.realism import TokenBucket

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
COPY_OPERATION = "CopyImageSet"


# ---------------------------------------------------------------------------------------------- helpers


def seed_synthetic(handle: EmulatorHandle, count: int) -> tuple[str, list[str]]:
    """Seed ``count`` synthetic image sets; returns the data store id and the image set ids."""
    result = handle.seed(f"synthetic:{count}")
    datastore_id = result["datastoreId"]
    return datastore_id, all_image_set_ids(handle.client(), datastore_id)


def all_image_set_ids(client, datastore_id: str, **criteria) -> list[str]:
    paginator = client.get_paginator("search_image_sets")
    kwargs = {"datastoreId": datastore_id}
    if criteria:
        kwargs["searchCriteria"] = criteria
    return [s["imageSetId"] for page in paginator.paginate(**kwargs) for s in page["imageSetsMetadataSummaries"]]


def series_uid(client, datastore_id: str, image_set_id: str) -> str:
    for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id):
        for summary in page["imageSetsMetadataSummaries"]:
            if summary["imageSetId"] == image_set_id:
                return summary["DICOMTags"]["DICOMSeriesInstanceUID"]
    raise AssertionError(f"image set {image_set_id} not found")


def holders_of_series(client, datastore_id: str, uid: str) -> set[str]:
    return set(
        all_image_set_ids(
            client, datastore_id, filters=[{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": uid}]}]
        )
    )


def copy_new(client, datastore_id: str, source_id: str, version: str = "1", **kwargs):
    return client.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=source_id,
        copyImageSetInformation={"sourceImageSet": {"latestVersionId": version}},
        **kwargs,
    )


def wait_for_state(client, datastore_id: str, image_set_id: str, *, timeout: float = 15.0) -> dict:
    """Poll GetImageSet until the image set is no longer LOCKED; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        if answer["imageSetState"] != "LOCKED":
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(
                f"image set {image_set_id} still LOCKED after {timeout}s: {answer['imageSetWorkflowStatus']}"
            )
        time.sleep(0.05)


def error_of(exc: ClientError) -> tuple[str, int]:
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


def raw_admin(url: str, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    """An admin request that returns (status, decoded JSON) for errors too."""
    return admin_request(url, method, path, body)


def outcome_sequence(client, datastore_id: str, image_set_id: str, calls: int) -> list[str]:
    outcomes = []
    for _ in range(calls):
        try:
            client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(error_of(exc)[0])
    return outcomes


# ---------------------------------------------------------------------------------------------- throttling


def test_throttling_follows_the_token_bucket(healthimaging_emulator):
    """GetImageSet at 5/s with a burst of 5, called back to back for 2 s: as many calls succeed as the bucket
    allows, counted from the calls' own times (the server is in this process and times arrivals with the same
    monotonic clock; each call arrives between its send and its answer), so a stalled test thread moves the
    bounds with it instead of breaking them."""
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    rate, burst = 5, 5
    handle.configure(rates={"GetImageSet": {"rate": rate, "burst": burst}})  # a new bucket, full
    handle.admin("DELETE", "counters")
    client = handle.client(retries=1)

    calls: list[tuple[float, float, bool]] = []  # (sent, answered, succeeded)
    started = time.monotonic()
    while time.monotonic() - started <= 2.0:
        sent = time.monotonic()
        try:
            client.get_image_set(datastoreId=datastore_id, imageSetId=ids[0])
            ok = True
        except ClientError as exc:
            assert error_of(exc) == ("ThrottlingException", 429)
            ok = False
        calls.append((sent, time.monotonic(), ok))
    succeeded = sum(ok for _, _, ok in calls)
    throttled = len(calls) - succeeded
    assert throttled > succeeded, "the client was not fast enough to exceed the bucket"

    # At most: the full bucket plus the refill between the first arrival and the last.
    assert succeeded <= burst + rate * (calls[-1][1] - calls[0][0]), (succeeded, len(calls))
    # At least, up to the last throttled call (the bucket held less than a token after it): the full bucket plus
    # the refill of every gap between two calls that was surely at most 1/rate long (answer of the later minus
    # send of the earlier), minus that last fraction of a token. After any call the bucket holds at most burst - 1,
    # so such a gap loses nothing to the cap; a longer gap (a stall) may, and its refill is not counted.
    last = max(i for i, (_, _, ok) in enumerate(calls) if not ok)
    refill, run_start = 0.0, 0
    for i in range(last):
        if calls[i + 1][1] - calls[i][0] > 1 / rate:
            refill += max(0.0, calls[i][0] - calls[run_start][1])  # arrival i - arrival run_start, at least
            run_start = i + 1
    refill += max(0.0, calls[last][0] - calls[run_start][1])
    low = burst + rate * refill - 1 - 1e-9  # (and a hair for float rounding: the bound itself is exact)
    assert sum(ok for _, _, ok in calls[: last + 1]) >= low, (succeeded, low, refill)

    counters = handle.counters()["GetImageSet"]
    assert counters["calls"] == succeeded + throttled
    assert counters["succeeded"] == succeeded
    assert counters["throttled"] == throttled
    assert counters["errors"] == {"ThrottlingException": throttled}
    assert counters["faults"] == {}


def test_the_token_bucket_counts_arrivals_and_never_refills_backwards():
    """Requests are checked at their arrival time; one checked after a later arrival (threads) gets no refill
    from the time between them, and the bucket's clock never moves back."""
    bucket = TokenBucket(rate=4, burst=1)  # one token every 0.25 s
    start = time.monotonic() + 10  # well after the bucket filled
    assert bucket.try_acquire(at=start)
    assert not bucket.try_acquire(at=start + 0.24)  # 0.96 of a token
    assert bucket.try_acquire(at=start + 0.26)
    assert not bucket.try_acquire(at=start + 0.10)  # arrived earlier, checked later: no token out of thin air
    assert not bucket.try_acquire(at=start + 0.50)  # 0.24 s since the last token: the clock did not move back
    assert bucket.try_acquire(at=start + 0.52)


def test_aws_default_copy_quota_and_unthrottling(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 3)
    config = handle.configure(profile="aws")
    assert config["rates"]["CopyImageSet"] == {"rate": 0.25, "burst": 1.0}
    client = handle.client(retries=1)

    first = copy_new(client, datastore_id, ids[0])
    assert first["destinationImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING"
    with pytest.raises(ClientError) as caught:
        copy_new(client, datastore_id, ids[1])
    assert error_of(caught.value) == ("ThrottlingException", 429)
    # The throttled copy took no effect: only the first copy's destination is new.
    assert len(all_image_set_ids(client, datastore_id)) == 4

    config = handle.configure(rates={"CopyImageSet": None})
    assert "CopyImageSet" not in config["rates"]
    assert config["rates"]["GetImageSet"] == {"rate": 25.0, "burst": 50.0}  # the rest of the profile stays
    assert "CopyImageSet" not in handle.admin("GET", "config")["rates"]
    for source in ids[1:]:  # back to back, well within 4 s: no longer throttled
        copy_new(client, datastore_id, source)
    assert len(all_image_set_ids(client, datastore_id)) == 6
    counters = handle.counters()["CopyImageSet"]
    assert (counters["calls"], counters["succeeded"], counters["throttled"]) == (4, 3, 1)


# ---------------------------------------------------------------------------------------------- faults


FAULTS = {"GetImageSet": {"throttle": 0.2, "internal_error": 0.2}}


def test_seeded_faults_replay_identically(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    client = handle.client(retries=1)

    handle.configure(faults=FAULTS, seed=7)
    first = outcome_sequence(client, datastore_id, ids[0], 40)
    assert set(first) == {"ok", "ThrottlingException", "InternalServerException"}

    # Reconfiguring with the same seed restarts the generators; calls of another operation, with
    # faults of their own, do not shift GetImageSet's sequence.
    handle.configure(seed=7, faults={**FAULTS, "SearchImageSets": {"throttle": 0.5}})
    replay = []
    for _ in range(40):
        replay.extend(outcome_sequence(client, datastore_id, ids[0], 1))
        try:
            client.search_image_sets(datastoreId=datastore_id)
        except ClientError:
            pass
    assert replay == first

    # A fresh emulator with the same seed gives the same sequence.
    other = EmulatorHandle(start_emulator())
    try:
        other_ds, other_ids = seed_synthetic(other, 1)
        other.configure(faults=FAULTS, seed=7)
        assert outcome_sequence(other.client(retries=1), other_ds, other_ids[0], 40) == first
    finally:
        other.server.stop()
    assert not other.problems

    handle.configure(seed=8, faults=FAULTS)
    assert outcome_sequence(client, datastore_id, ids[0], 40) != first

    handle.admin("DELETE", "counters")
    handle.configure(seed=7)
    again = outcome_sequence(client, datastore_id, ids[0], 40)
    counters = handle.counters()["GetImageSet"]
    assert counters["calls"] == 40
    assert counters["succeeded"] == again.count("ok")
    assert counters["throttled"] == again.count("ThrottlingException")
    assert counters["faults"] == {
        k: v
        for k, v in (
            ("throttle", again.count("ThrottlingException")),
            ("internal_error", again.count("InternalServerException")),
        )
        if v
    }


def test_lost_response_copy_took_effect(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    client = handle.client(retries=1)
    uid = series_uid(client, datastore_id, ids[0])
    assert holders_of_series(client, datastore_id, uid) == {ids[0]}

    handle.configure(script={COPY_OPERATION: ["lost_response"]})
    with pytest.raises(ConnectionClosedError):
        copy_new(client, datastore_id, ids[0])

    # The client heard nothing, yet the copy happened: re-reading state finds the new image set.
    new = holders_of_series(client, datastore_id, uid) - {ids[0]}
    assert len(new) == 1
    (destination,) = new
    versions = client.list_image_set_versions(datastoreId=datastore_id, imageSetId=destination)[
        "imageSetPropertiesList"
    ]
    assert [v["versionId"] for v in versions] == ["1"]
    final = wait_for_state(client, datastore_id, destination)
    assert (final["imageSetState"], final["imageSetWorkflowStatus"]) == ("ACTIVE", "COPIED")
    counters = handle.counters()[COPY_OPERATION]
    assert (counters["calls"], counters["succeeded"], counters["faults"]) == (1, 1, {"lost_response": 1})
    assert handle.admin("GET", "config")["script"] == {}


def test_sdk_retry_after_lost_response_creates_a_second_copy(healthimaging_emulator, monkeypatch):
    """Why CopyImageSet must not be retried blindly: botocore's standard retry mode retries the
    connection error, and the repeated request makes a second, independent copy."""
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    reader = handle.client(retries=1)
    uid = series_uid(reader, datastore_id, ids[0])

    # botocore waits rand(0, 1) s before retrying. Make the wait last until the first attempt's copy
    # has finished (it locks the source until then), so the retry meets an ACTIVE source every time.
    def wait_for_copies_then_retry(self, context):
        deadline = time.monotonic() + 10
        while handle.backend.next_due() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        return 0.0

    monkeypatch.setattr(standard_retries.ExponentialBackoff, "delay_amount", wait_for_copies_then_retry)
    client = handle.client(retries=3)
    handle.configure(script={COPY_OPERATION: ["lost_response"]})
    answer = copy_new(client, datastore_id, ids[0])
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1

    new = holders_of_series(reader, datastore_id, uid) - {ids[0]}
    assert len(new) == 2, "the SDK retry created a second copy"
    assert answer["destinationImageSetProperties"]["imageSetId"] in new
    for destination in new:
        final = wait_for_state(reader, datastore_id, destination)
        assert final["imageSetWorkflowStatus"] == "COPIED"
    counters = handle.counters()[COPY_OPERATION]
    assert (counters["calls"], counters["succeeded"], counters["faults"]) == (2, 2, {"lost_response": 1})


def test_sdk_retry_after_lost_response_hits_the_lock_of_the_first_copy(healthimaging_emulator):
    """The other face of the same ambiguity: while the first copy runs, the retry meets a locked
    source and the caller sees ConflictException although a copy is under way."""
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    reader = handle.client(retries=1)
    uid = series_uid(reader, datastore_id, ids[0])
    handle.configure(timing={"copy_fixed_seconds": 30.0}, script={COPY_OPERATION: ["lost_response"]})
    client = handle.client(retries=3)
    with pytest.raises(ClientError) as caught:  # botocore's first retry waits under 1 s: the copy still runs
        copy_new(client, datastore_id, ids[0])
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert error_of(caught.value) == ("ConflictException", 409)
    new = holders_of_series(reader, datastore_id, uid) - {ids[0]}
    assert len(new) == 1
    (destination,) = new
    current = reader.get_image_set(datastoreId=datastore_id, imageSetId=destination)
    assert (current["imageSetState"], current["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")


def test_internal_error_changes_nothing(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    client = handle.client(retries=1)
    before = client.get_image_set(datastoreId=datastore_id, imageSetId=ids[0])
    handle.configure(script={COPY_OPERATION: ["internal_error"]})
    with pytest.raises(ClientError) as caught:
        copy_new(client, datastore_id, ids[0])
    assert error_of(caught.value) == ("InternalServerException", 500)
    assert all_image_set_ids(client, datastore_id) == ids
    after = client.get_image_set(datastoreId=datastore_id, imageSetId=ids[0])
    for key in ("versionId", "imageSetState", "imageSetWorkflowStatus", "updatedAt"):
        assert after[key] == before[key]
    assert handle.backend.next_due() is None  # no job was scheduled
    counters = handle.counters()[COPY_OPERATION]
    assert counters == {
        "calls": 1,
        "succeeded": 0,
        "throttled": 0,
        "faults": {"internal_error": 1},
        "errors": {"InternalServerException": 1},
    }
    copy_new(client, datastore_id, ids[0])  # the script is used up: the next copy is accepted


def test_copy_failed_fault_ends_copy_failed(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    client = handle.client(retries=1)
    handle.configure(script={COPY_OPERATION: ["copy_failed"]})
    answer = copy_new(client, datastore_id, ids[0])
    destination = answer["destinationImageSetProperties"]
    assert (destination["imageSetState"], destination["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
    final = wait_for_state(client, datastore_id, destination["imageSetId"])
    assert (final["imageSetState"], final["imageSetWorkflowStatus"]) == ("ACTIVE", "COPY_FAILED")
    assert final["message"]
    source = wait_for_state(client, datastore_id, ids[0])
    assert source["imageSetState"] == "ACTIVE" and source["versionId"] == "1"
    assert handle.counters()[COPY_OPERATION]["faults"] == {"copy_failed": 1}


# ---------------------------------------------------------------------------------------------- admin API


def test_counters_over_http_and_reset(healthimaging_emulator):
    handle = healthimaging_emulator
    datastore_id, ids = seed_synthetic(handle, 1)
    client = handle.client(retries=1)
    raw_admin(handle.url, "DELETE", "counters")
    handle.configure(script={"GetImageSet": ["none", "throttle", "internal_error", "none"]})
    outcomes = outcome_sequence(client, datastore_id, ids[0], 4)
    assert outcomes == ["ok", "ThrottlingException", "InternalServerException", "ok"]
    with pytest.raises(ClientError) as caught:
        client.get_image_set(datastoreId=datastore_id, imageSetId="0" * 32)
    assert error_of(caught.value) == ("ResourceNotFoundException", 404)
    with pytest.raises(ClientError) as caught:
        client.get_image_set(datastoreId=datastore_id, imageSetId="NOT-AN-ID")
    assert error_of(caught.value) == ("ValidationException", 400)
    client.search_image_sets(datastoreId=datastore_id)

    status, counters = raw_admin(handle.url, "GET", "counters")
    assert status == 200
    assert counters["GetImageSet"] == {
        "calls": 6,
        "succeeded": 2,
        "throttled": 1,
        "faults": {"throttle": 1, "internal_error": 1},
        "errors": {
            "ThrottlingException": 1,
            "InternalServerException": 1,
            "ResourceNotFoundException": 1,
            "ValidationException": 1,
        },
    }
    assert counters["SearchImageSets"] == {"calls": 1, "succeeded": 1, "throttled": 0, "faults": {}, "errors": {}}

    assert raw_admin(handle.url, "DELETE", "counters") == (200, {})
    assert raw_admin(handle.url, "GET", "counters") == (200, {})
    client.get_image_set(datastoreId=datastore_id, imageSetId=ids[0])
    assert handle.counters()["GetImageSet"]["calls"] == 1
    assert raw_admin(handle.url, "GET", "health")[1]["status"] == "ok"
    assert raw_admin(handle.url, "GET", "nowhere")[0] == 404


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"bogus": 1}, "bogus"),
        ({"faults": {"GetImageSet": {"throttle": 1.5}}}, "faults.GetImageSet.throttle"),
        ({"faults": {"GetImageSet": {"throttle": -0.1}}}, "faults.GetImageSet.throttle"),
        ({"faults": {"GetImageSet": {"explode": 0.1}}}, "explode"),
        ({"faults": {"GetImageSet": {"throttle": 0.6, "internal_error": 0.6}}}, "faults.GetImageSet"),
        ({"faults": {"GetImageSet": {"copy_failed": 0.1}}}, "copy_failed"),
        ({"script": {"CopyImageSet": ["nope"]}}, "nope"),
        ({"timing": {"copy_fixed_seconds": -1}}, "timing.copy_fixed_seconds"),
        ({"timing": {"warp_seconds": 1}}, "timing.warp_seconds"),
        ({"rates": {"GetImageSet": {"rate": -1, "burst": 5}}}, "rates.GetImageSet"),
        ({"rates": {"GetImageSet": {"rate": 5, "burst": 0}}}, "rates.GetImageSet"),
        ({"profile": "warp"}, "warp"),
        ({"max_concurrent_copies": 0}, "max_concurrent_copies"),
        ({"seed": "x"}, "seed"),
        ({"seed": None}, "seed"),
        ({"timing": 5}, "timing"),
        ({"rates": [1]}, "rates"),
        ({"script": ["lost_response"]}, "script"),
        ({"script": {"CopyImageSet": "lost_response"}}, "script.CopyImageSet"),
        ({"faults": []}, "faults"),
    ],
)
def test_admin_config_rejects_bad_entries(healthimaging_emulator, change, named):
    handle = healthimaging_emulator
    before = handle.admin("GET", "config")
    status, body = raw_admin(handle.url, "POST", "config", change)
    assert status == 400
    assert named in body["message"]
    assert handle.admin("GET", "config") == before


def test_rejected_config_changes_nothing(healthimaging_emulator):
    """A configuration change is one unit: a bad entry anywhere leaves every setting as it was."""
    handle = healthimaging_emulator
    before = handle.admin("GET", "config")
    for change in (
        {"timing": {"copy_fixed_seconds": 9}, "faults": {"GetImageSet": {"throttle": 2}}},
        {"rates": {"GetImageSet": {"rate": 1, "burst": 1}}, "timing": {"nope": 1}},
        {"timing": {"copy_fixed_seconds": 9, "update_seconds": -1}},
        {"seed": 3, "faults": {"GetImageSet": {"throttle": 0.1}}, "max_frames_per_copy": 0},
        {"script": {"CopyImageSet": ["lost_response"]}, "profile": "warp"},
    ):
        status, _ = raw_admin(handle.url, "POST", "config", change)
        assert status == 400, change
        assert handle.admin("GET", "config") == before, change


def test_get_config_reflects_changes(healthimaging_emulator):
    handle = healthimaging_emulator
    posted = handle.configure(
        rates={"GetImageSet": {"rate": 7, "burst": 9}},
        timing={"copy_fixed_seconds": 1.5},
        faults={"CopyImageSet": {"copy_failed": 0.25}},
        seed=42,
        script={"GetImageSet": ["throttle", "none"]},
        max_concurrent_copies=3,
    )
    config = handle.admin("GET", "config")
    assert config == posted
    assert config["rates"]["GetImageSet"] == {"rate": 7.0, "burst": 9.0}
    assert config["timing"]["copy_fixed_seconds"] == 1.5
    assert config["faults"] == {"CopyImageSet": {"copy_failed": 0.25}}
    assert config["seed"] == 42
    assert config["script"] == {"GetImageSet": ["throttle", "none"]}
    assert config["max_concurrent_copies"] == 3
    # script entries are appended; rates overrides survive unrelated changes
    config = handle.configure(script={"GetImageSet": ["internal_error"]}, timing={"update_seconds": 0.5})
    assert config["script"] == {"GetImageSet": ["throttle", "none", "internal_error"]}
    assert config["rates"]["GetImageSet"] == {"rate": 7.0, "burst": 9.0}
    # a profile change alone drops the overrides
    config = handle.configure(profile="off")
    assert config["profile"] == "off" and config["rates"] == {}


# ---------------------------------------------------------------------------------------------- subprocesses


class EmulatorProcess:
    """``python -m healthimaging_emulator`` as a child process on a free port."""

    def __init__(self, *args: str, log_path: Path) -> None:
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "healthimaging_emulator", "--port", "0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = self._wait_listening()

    def _drain(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _wait_listening(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the emulator exited with {self.process.wait()}: {''.join(self.lines)}")
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                return found.group(1)
        self.kill()
        raise AssertionError(f"the emulator did not start listening: {''.join(self.lines)}")

    def client(self, **kwargs):
        return make_client(self.url, **kwargs)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def datastores_named(client, name: str) -> list[dict]:
    return [d for d in client.list_datastores()["datastoreSummaries"] if d["datastoreName"] == name]


@pytest.mark.slow
def test_state_survives_kill_9_and_copy_in_flight_completes(tmp_path):
    state = tmp_path / "state"
    args = ("--state-dir", str(state), "--seed", "sample", "--copy-seconds", "3")
    with EmulatorProcess(*args, log_path=tmp_path / "log") as first:
        assert any("seed sample: created data store 'demo'" in line for line in first.lines)
        client = first.client()
        (datastore,) = datastores_named(client, "demo")
        datastore_id = datastore["datastoreId"]
        ids = all_image_set_ids(client, datastore_id)
        source = ids[0]
        source_arn = client.get_image_set(datastoreId=datastore_id, imageSetId=source)["imageSetArn"]
        client.tag_resource(resourceArn=source_arn, tags={"project": "realism"})
        copy_sent = time.monotonic()  # the server scheduled the copy's end after this + 3 s
        answer = copy_new(client, datastore_id, source)
        first.process.send_signal(signal.SIGKILL)  # right after the acknowledged response
    destination = answer["destinationImageSetProperties"]["imageSetId"]
    assert answer["destinationImageSetProperties"]["imageSetWorkflowStatus"] == "COPYING"

    with EmulatorProcess(*args, log_path=tmp_path / "log") as second:
        assert any("kept existing data store 'demo'" in line for line in second.lines)
        client = second.client()
        assert [d["datastoreId"] for d in datastores_named(client, "demo")] == [datastore_id]
        assert len(client.list_datastores()["datastoreSummaries"]) == 1
        assert client.list_tags_for_resource(resourceArn=source_arn)["tags"] == {"project": "realism"}
        assert sorted(all_image_set_ids(client, datastore_id)) == sorted([*ids, destination])
        current = client.get_image_set(datastoreId=datastore_id, imageSetId=destination)
        # the copy lasts 3 s plus 0.02 s per instance; if this read came sooner it is still running
        if time.monotonic() - copy_sent < 3.0:
            assert (current["imageSetState"], current["imageSetWorkflowStatus"]) == ("LOCKED", "COPYING")
        final = wait_for_state(client, datastore_id, destination)
        assert (final["imageSetState"], final["imageSetWorkflowStatus"]) == ("ACTIVE", "COPIED")
        assert wait_for_state(client, datastore_id, source)["imageSetState"] == "ACTIVE"
        source_doc = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=source)
        copy_doc = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=destination)
        source_study = json.loads(gzip.decompress(source_doc["imageSetMetadataBlob"].read()))["Study"]
        copy_study = json.loads(gzip.decompress(copy_doc["imageSetMetadataBlob"].read()))["Study"]
        assert copy_study == source_study


@pytest.mark.slow
def test_in_memory_state_is_lost_on_restart(tmp_path):
    with EmulatorProcess("--seed", "synthetic:5", log_path=tmp_path / "log") as first:
        client = first.client()
        (datastore,) = datastores_named(client, "synthetic")
        assert len(all_image_set_ids(client, datastore["datastoreId"])) == 5
        first.process.send_signal(signal.SIGKILL)
    with EmulatorProcess(log_path=tmp_path / "log") as second:
        assert second.client().list_datastores()["datastoreSummaries"] == []


@pytest.mark.slow
def test_cli_synthetic_seed_and_rate_flag(tmp_path):
    with EmulatorProcess(
        "--seed",
        "synthetic:1000",
        "--rate",
        "CopyImageSet=5:5",
        "--rate-profile",
        "fast",
        "--fault",
        "CopyImageSet:copy_failed=0.25",
        "--fault-seed",
        "7",
        log_path=tmp_path / "log",
    ) as emulator:
        assert any("with 1000 image sets" in line for line in emulator.lines)
        client = emulator.client()
        (datastore,) = datastores_named(client, "synthetic")
        pages = list(
            client.get_paginator("search_image_sets").paginate(
                datastoreId=datastore["datastoreId"], PaginationConfig={"PageSize": 50}
            )
        )
        summaries = [s for page in pages for s in page["imageSetsMetadataSummaries"]]
        assert len(pages) == 20 and len(summaries) == 1000
        assert len({s["imageSetId"] for s in summaries}) == 1000
        assert len({s["DICOMTags"]["DICOMSeriesInstanceUID"] for s in summaries}) == 1000
        status, config = raw_admin(emulator.url, "GET", "config")
        assert status == 200
        assert config["rates"]["CopyImageSet"] == {"rate": 5.0, "burst": 5.0}
        assert config["profile"] == "fast"
        assert config["rates"]["GetImageSet"] == {"rate": 25000.0, "burst": 50000.0}
        assert config["faults"] == {"CopyImageSet": {"copy_failed": 0.25}} and config["seed"] == 7


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seed", "bogus"], "bogus"),
        (["--seed", "synthetic:0"], "synthetic:0"),
        (["--fault", "X:nope=0.1"], "nope"),
        (["--fault", "GetImageSet:throttle=lots"], "GetImageSet:throttle=lots"),
        (["--fault", "GetImageSet:throttle=1.5"], "faults.GetImageSet.throttle"),
        (["--rate", "CopyImageSet=fast"], "CopyImageSet=fast"),
        (["--rate-profile", "warp"], "warp"),
    ],
)
def test_cli_rejects_bad_flags(flags, message):
    done = subprocess.run(
        [PYTHON, "-m", "healthimaging_emulator", "--port", "0", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "listening on" not in done.stdout


# ---------------------------------------------------------------------------------------------- concurrency


def test_concurrent_clients_get_no_5xx_and_no_hang(tmp_path):
    handle = EmulatorHandle(start_emulator(state_dir=tmp_path / "state"))
    try:
        datastore_id, ids = seed_synthetic(handle, 8)
        # Low enough limits that throttling, conflicts and the copy quota all come into play.
        handle.configure(rates={"CopyImageSet": {"rate": 40, "burst": 10}}, max_concurrent_copies=4)
        threads_n, per_thread = 16, 30
        clients = [
            handle.client(retries=1, read_timeout=20, connect_timeout=5, max_pool_connections=2)
            for _ in range(threads_n)
        ]
        results: list[list[tuple[str, str]]] = [[] for _ in range(threads_n)]
        copies: list[list[str]] = [[] for _ in range(threads_n)]

        def work(index: int) -> None:
            client = clients[index]
            for step in range(per_thread):
                source = ids[(index + step) % len(ids)]
                operation = COPY_OPERATION if (index + step) % 3 == 0 else "GetImageSet"
                try:
                    if operation == COPY_OPERATION:
                        answer = copy_new(client, datastore_id, source)
                        copies[index].append(answer["destinationImageSetProperties"]["imageSetId"])
                    else:
                        client.get_image_set(datastoreId=datastore_id, imageSetId=source)
                    results[index].append((operation, "ok"))
                except ClientError as exc:
                    code, status = error_of(exc)
                    results[index].append((operation, f"{status} {code}"))
                except HTTPClientError as exc:  # a dropped connection or a read timeout
                    results[index].append((operation, f"connection {exc!r}"))

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads_n)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not [t for t in threads if t.is_alive()], "a client hung"
        elapsed = time.monotonic() - started

        outcomes = [outcome for per in results for outcome in per]
        assert len(outcomes) == threads_n * per_thread
        unexpected = [
            o
            for o in outcomes
            if o[1] != "ok"
            and o[1] not in {"429 ThrottlingException", "409 ConflictException", "402 ServiceQuotaExceededException"}
        ]
        assert not unexpected, unexpected[:10]
        assert ("GetImageSet", "ok") in outcomes and (COPY_OPERATION, "ok") in outcomes

        counters = handle.counters()
        for operation in ("GetImageSet", COPY_OPERATION):
            seen = [o for o in outcomes if o[0] == operation]
            assert counters[operation]["calls"] == len(seen)
            assert counters[operation]["succeeded"] == sum(1 for o in seen if o[1] == "ok")
            assert "InternalServerException" not in counters[operation]["errors"]
        # at 40 copies/s with a burst of 10, no more copies can have been accepted than the bucket allowed
        accepted = [c for per in copies for c in per]
        assert len(accepted) <= 10 + 40 * elapsed + 1
        # every accepted copy exists and completes
        reader = handle.client(retries=1)
        assert len(all_image_set_ids(reader, datastore_id)) == len(ids) + len(accepted)
        for destination in accepted:
            assert wait_for_state(reader, datastore_id, destination)["imageSetWorkflowStatus"] == "COPIED"
    finally:
        handle.server.stop()
    assert not handle.problems, handle.problems
