"""The bulk-copy benchmark's plain-loop baseline (bench/baselines.py) against a real emulator process.

The naive DAG baseline needs the whole stack; it is run by hand (``python bench/baselines.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.baselines import dags_folder_with_naive, emulator_args, plain_loop, synthetic_sources
from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV, admin_request
from stack.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
ROWS = 10
RATE = 5.0


@pytest.fixture
def emulator(monkeypatch):
    """Start ``python -m healthimaging_emulator`` with ROWS synthetic image sets, CopyImageSet at RATE/s burst 1
    and copies of the given seconds; yields its URL."""
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    processes = []

    def start(copy_seconds: float) -> str:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "healthimaging_emulator",
                "--port",
                str(port),
                *emulator_args(ROWS, RATE, copy_seconds),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        for line in process.stdout:
            if "listening on" in line:
                return f"http://127.0.0.1:{port}"
        raise RuntimeError(f"the emulator exited with code {process.wait()}")

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_plain_loop_copies_every_row_at_the_rate(emulator):
    url = emulator(0.5)
    datastore_id, ids = synthetic_sources(url, ROWS)
    result = plain_loop(url, datastore_id, ids, RATE)
    assert (result["copied"], result["failed"], result["refused"]) == (ROWS, 0, 0), result
    # The emulator accepted one copy per row; each throttled send (arrival jitter against burst 1, and the
    # SDK's resends the limiter does not see) is a call of its own.
    assert result["copy_calls"] == ROWS + result["throttled"], result
    assert result["refused_402"] == 0 and result["lost_responses"] == 0, result
    # Per row: GetImageSet for the version, CopyImageSet, at least one poll.
    assert result["calls_per_row"] >= 3, result
    # Sends are at least 1 / RATE apart and the last copy lasts 0.5 s; each throttle costs the loop at most
    # the SDK's backoff (under 1 s for a first resend, 2 s for a second) and polling once a second one more.
    floor = (ROWS - 1) / RATE + 0.5
    assert floor <= result["makespan"] <= floor + 1.5 + 2 * result["throttled"], result
    assert result["duplicates"] == 0 and result["untracked"] == 0, result
    assert 0 < result["cpu_seconds"] < result["makespan"], result
    # The fault table is as before (it was never set).
    assert admin_request(url, "GET", "config")[1]["faults"] == {}


def test_sdk_retries_after_lost_responses_make_duplicates_the_emulator_counts(emulator):
    # Short copies: botocore's resend (rand(0, 1) s later, more when throttled) reaches an ACTIVE source again.
    url = emulator(0.05)
    datastore_id, ids = synthetic_sources(url, ROWS)
    result = plain_loop(url, datastore_id, ids, RATE, lost_response=0.5)
    assert result["lost_responses"] > 0, result
    assert result["duplicates"] > 0, result
    # Every source has a copy in the emulator, though a row whose resend met the first copy's lock
    # (ConflictException) or ran out of attempts was given up by the loop.
    assert result["sources_without_copy"] == 0, result
    assert result["copied"] + result["refused"] == ROWS, result
    # Each lost response left at most one image set the loop never heard of (none when the call it dropped
    # was refused): a duplicate, or the only copy of a row the loop gave up on.
    assert result["untracked"] == result["duplicates"] + ROWS - result["copied"], result
    assert 0 < result["untracked"] <= result["lost_responses"], result
    # The run's fault was removed afterwards.
    assert admin_request(url, "GET", "config")[1]["faults"] == {}
    again = plain_loop(url, datastore_id, ids, RATE)
    assert (again["copied"], again["duplicates"], again["lost_responses"]) == (ROWS, 0, 0), again


def test_dags_folder_with_naive_holds_the_project_dags_and_the_naive_one(tmp_path):
    folder = dags_folder_with_naive(tmp_path / "dags")
    names = {p.name for p in folder.iterdir()}
    assert {p.name for p in (ROOT / "dags").glob("*.py")} <= names
    assert "naive_healthimaging_copy.py" in names
