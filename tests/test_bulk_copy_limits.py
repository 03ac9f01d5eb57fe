"""The service's two copy limits and GetImageSet's quota, reached by the engine with its defaults.

- A send refused for the copies in progress (402) is sent again when a copy completes: no row fails, and
  the emulator's count of 402s is what the ledger's ``throttles`` recorded.
- A 402 for the image frames of one copy is final at once.
- A ``copies_per_second`` above the account's quota: the shared rate comes down near the quota
  (additive increase, multiplicative decrease in the ledger's bucket) and no row fails.
- Polls follow the observed copy durations: a copy's completion is noticed soon after it happened.
- The pieces alone: :class:`CopyDurations`, :func:`copy_seconds`, :class:`PollBudget`, :class:`ThrottleWatch`
  and the bucket's decrease and climb, on SQLite and PostgreSQL.

Ground truth is the emulator's counters and its image sets, read over HTTP.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from healthimaging.bulk import rate_limit
from healthimaging.bulk.engine import PACE_MARGIN, BatchCopyEngine
from healthimaging.bulk.ledger import Ledger, engine_for
from healthimaging.bulk.poll_schedule import MIN_POLL_SECONDS, CopyDurations, PollBudget, copy_seconds
from healthimaging.bulk.rate_limit import SharedTokenBucket, ThrottleWatch, buckets
from healthimaging.bulk.run import copy_rate, prepare
from healthimaging.bulk.settings import BulkCopySettings
from tests.bulk_helpers import copy_calls, image_set_ids, seed, write_manifest

DAG_ID = "copy-limits-test"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def run_batch(ledger: Ledger, tmp_path, datastore_id: str, sources: list[str], **params: Any) -> list[dict[str, Any]]:
    """Register ``sources`` as one batch and run its engine to the end in this thread; the ledger rows."""
    manifest = write_manifest(tmp_path / f"m-{uuid.uuid4().hex}.csv", [{"source_image_set_id": s} for s in sources])
    run_id = f"run-{time.time_ns()}"
    prepared = prepare(
        ledger,
        dag_id=DAG_ID,
        run_id=run_id,
        params={"manifest": str(manifest), "default_datastore_id": datastore_id, "batch_size": 1000, **params},
    )
    engine = BatchCopyEngine(
        ledger,
        dag_id=DAG_ID,
        run_id=run_id,
        manifest_sha256=prepared["manifest_sha256"],
        batch=0,
        settings=BulkCopySettings.from_dict(prepared["settings"]),
    )
    engine.run()
    return ledger.run_rows(DAG_ID, run_id)


def test_a_copy_refused_for_the_copies_in_progress_is_sent_again_when_one_completes(
    ledger, emulator_connection, tmp_path
):
    # The account allows 3 copies in progress; the engine is told the service's default, 100: it learns from
    # the 402s instead of failing rows.
    emulator = emulator_connection
    datastore_id, sources = seed(emulator, 12)
    emulator.configure(max_concurrent_copies=3, timing={"copy_fixed_seconds": 0.5})
    rows = run_batch(ledger, tmp_path, datastore_id, sources, copies_per_second=50, burst=10)
    assert [r["status"] for r in rows] == ["succeeded"] * 12
    assert all(r["attempts"] == 1 for r in rows), [r["attempts"] for r in rows]
    calls = copy_calls(emulator)
    refused = calls["errors"].get("ServiceQuotaExceededException", 0)
    assert refused > 0, calls  # the limit was reached...
    assert sum(r["throttles"] for r in rows) == refused + calls["throttled"]  # ...and every refusal is on a row
    assert calls["succeeded"] == 12
    assert len(image_set_ids(emulator.client(), datastore_id)) == 24  # each source copied once


def test_a_copy_over_the_frames_quota_fails_at_once(ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    datastore_id, sources = seed(emulator, 2)
    emulator.configure(max_frames_per_copy=1)
    rows = run_batch(ledger, tmp_path, datastore_id, sources, copies_per_second=50, burst=10)
    assert {r["status"] for r in rows} == {"failed"}
    assert {r["error_code"] for r in rows} == {"ServiceQuotaExceededException"}
    assert all("image frames" in r["message"] for r in rows), [r["message"] for r in rows]
    assert copy_calls(emulator)["calls"] == 2  # one send each, not resent


def test_a_rate_set_above_the_quota_comes_down_near_it_without_failing_a_row(ledger, emulator_connection, tmp_path):
    emulator = emulator_connection
    datastore_id, sources = seed(emulator, 60)
    emulator.configure(rates={"CopyImageSet": {"rate": 5, "burst": 1}}, timing={"copy_fixed_seconds": 0.1})
    rows = run_batch(ledger, tmp_path, datastore_id, sources, copies_per_second=12, burst=1)
    assert [r["status"] for r in rows] == ["succeeded"] * 60
    with ledger.engine.connect() as db:  # this test's own ledger: the default bucket is its own
        rate, ceiling = db.execute(
            sa.select(buckets.c.rate, buckets.c.ceiling).where(buckets.c.name == "CopyImageSet")
        ).one()
    assert ceiling == pytest.approx(12 * PACE_MARGIN)
    # Lowered from 11.9/s while sends were throttled, by a tenth at least: it stops within a step of the quota.
    assert 5 * 0.8 <= rate <= 5 * 1.15, rate
    calls = copy_calls(emulator)
    assert calls["succeeded"] == 60
    assert sum(r["throttles"] for r in rows) == calls["throttled"]
    # The report states the rate found, in the terms of copies_per_second (the engine paces a hair below it).
    found = copy_rate(ledger, {"copies_per_second": 12, "burst": 1})
    assert found == {"configuredPerSecond": 12.0, "foundPerSecond": pytest.approx(rate / PACE_MARGIN, abs=0.001)}


def test_a_copy_is_noticed_soon_after_it_completes(ledger, emulator_connection, tmp_path):
    # 3 s copies, the DAG's default longest poll interval (5 s): after the first copies, polls land at the
    # observed end, not at a fixed interval.
    emulator = emulator_connection
    datastore_id, sources = seed(emulator, 8)
    emulator.configure(timing={"copy_fixed_seconds": 3.0})
    rows = run_batch(ledger, tmp_path, datastore_id, sources, copies_per_second=2, burst=1)
    assert [r["status"] for r in rows] == ["succeeded"] * 8
    client = emulator.client()
    lags = []
    for row in sorted(rows, key=lambda r: r["submitted_at"])[2:]:  # the first copies teach the durations
        version = client.get_image_set(
            datastoreId=datastore_id,
            imageSetId=row["destination_image_set_id"],
            versionId=row["destination_version_id"],
        )
        lags.append(row["completed_at"] - version["updatedAt"].timestamp())
    # A fixed 5 s poll would notice each copy 2 s late or more; verification adds its own reads.
    assert max(lags) < 1.0, lags


# ------------------------------------------------------------------------------------------ the pieces


def test_poll_times_follow_the_observed_durations():
    durations = CopyDurations(max_interval=5.0)
    assert durations.next_poll(0.0) == MIN_POLL_SECONDS  # nothing seen yet: soon, then less often
    assert durations.next_poll(20.0) == 2.0
    assert durations.next_poll(100.0) == 5.0
    for seconds in (60.0, 60.0, 60.0):
        durations.observe(seconds)
    assert durations.next_poll(0.0) == pytest.approx(60.05)  # all alike: one poll, right after the end
    assert durations.next_poll(60.1) == 5.0  # late: a tenth of its running time, at most the longest interval
    spread = CopyDurations(max_interval=5.0)
    for seconds in range(10, 110, 10):
        spread.observe(float(seconds))
    assert spread.next_poll(0.0) == pytest.approx(20.05)  # the 10th percentile of 10..100 (index 1)
    assert spread.next_poll(20.05) == pytest.approx(30.05 - 20.05)


def test_the_durations_window_forgets_old_copies():
    durations = CopyDurations(max_interval=5.0, window=3)
    for seconds in (100.0, 1.0, 1.0, 1.0):
        durations.observe(seconds)
    assert len(durations) == 3
    assert durations.next_poll(0.0) == pytest.approx(1.05)
    assert durations.next_poll(1.1) == MIN_POLL_SECONDS  # past the longest kept: 100 s is forgotten


def test_copy_seconds_prefers_the_service_clock_when_plausible():
    created = datetime(2026, 12, 1, tzinfo=timezone.utc)
    done = {"createdAt": created, "updatedAt": created + timedelta(seconds=2)}
    assert copy_seconds(done, accepted_at=1000.0, noticed_at=1003.0) == 2.0
    # createdAt of the image set, long before this copy: the local bound instead
    old = {"createdAt": created - timedelta(days=3), "updatedAt": created}
    assert copy_seconds(old, accepted_at=1000.0, noticed_at=1003.0) == 3.0
    assert copy_seconds({}, accepted_at=1000.0, noticed_at=1003.5) == 3.5


def test_the_poll_budget_is_shared_between_the_engines():
    now = [0.0]
    budget = PollBudget(25.0, clock=lambda: now[0])
    budget.share(5)  # 25/s, half for polls, five engines: 2.5/s each
    taken = 0
    while budget.take() == 0.0:
        taken += 1
    assert taken == 1
    now[0] += 2.0  # 5 polls' worth, but a burst of at most one second's share
    assert sum(budget.take() == 0.0 for _ in range(10)) == 2
    assert budget.take() == pytest.approx(0.2)  # half a token left: 0.2 s to the next


def test_throttle_watch_tells_sustained_throttling_from_the_odd_throttle():
    watch = ThrottleWatch(window=20, threshold=3)
    outcomes = ([True] + [False] * 19) * 5  # one in twenty: never sustained
    assert not any(watch.sent(t) for t in outcomes)
    assert [watch.sent(t) for t in (True, False, True, True)] == [None, None, None, 3 / 20]
    # the window starts afresh after it fired, and decides only once it is whole again
    assert [watch.sent(t) for t in [True] * 19] == [None] * 19
    assert watch.sent(False) == 19 / 20


@pytest.fixture(params=["sqlite", "postgresql"])
def bucket_engine(request, tmp_path):
    if request.param == "sqlite":
        engine = engine_for(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    else:
        try:
            engine = engine_for(POSTGRES_URL)
        except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has PostgreSQL
            pytest.skip(f"PostgreSQL is not reachable: {exc}")
    yield engine
    engine.dispose()


def test_the_shared_rate_goes_down_once_per_cooldown_and_climbs_back(bucket_engine, monkeypatch):
    monkeypatch.setattr(rate_limit, "DECREASE_COOLDOWN_SECONDS", 0.3)
    monkeypatch.setattr(rate_limit, "INCREASE_PERIOD_SECONDS", 0.3)
    monkeypatch.setattr(rate_limit, "INCREASE_SHARE", 0.1)
    name = f"test-{uuid.uuid4().hex}"
    first, second = (SharedTokenBucket(bucket_engine, name, rate=10, burst=1) for _ in range(2))
    assert first.slow_down(0.1) == pytest.approx(9.0)  # by a tenth at least
    assert second.slow_down(0.1) is None  # within the cooldown: one burst of throttling lowers it once
    time.sleep(0.35)
    assert second.slow_down(0.2) == pytest.approx(8.1)
    time.sleep(0.35)
    assert second.slow_down(1.0) == pytest.approx(4.05)  # half at most
    time.sleep(0.35)
    assert second.slow_down(0.0) == pytest.approx(3.645)
    with bucket_engine.begin() as db:  # back to 8.1 to test the climb
        db.execute(buckets.update().where(buckets.c.name == name).values(rate=8.1))
    assert Ledger(bucket_engine).bucket_rate(name) == (pytest.approx(8.1), 10.0)
    # A bucket built again with the same configuration keeps the rate found; a new configuration resets it.
    SharedTokenBucket(bucket_engine, name, rate=10, burst=1)
    assert Ledger(bucket_engine).bucket_rate(name)[0] == pytest.approx(8.1)
    time.sleep(0.35)
    first.acquire(timeout=5)  # a token taken after a quiet period climbs by a tenth of the ceiling
    assert Ledger(bucket_engine).bucket_rate(name)[0] == pytest.approx(9.1)
    time.sleep(0.35)
    first.acquire(timeout=5)
    time.sleep(0.35)
    first.acquire(timeout=5)
    assert Ledger(bucket_engine).bucket_rate(name)[0] == pytest.approx(10.0)  # never above the ceiling
    SharedTokenBucket(bucket_engine, name, rate=4, burst=1)
    assert Ledger(bucket_engine).bucket_rate(name) == (4.0, 4.0)


def test_the_shared_rate_never_goes_below_the_floor(bucket_engine, monkeypatch):
    monkeypatch.setattr(rate_limit, "DECREASE_COOLDOWN_SECONDS", 0.0)
    bucket = SharedTokenBucket(bucket_engine, f"test-{uuid.uuid4().hex}", rate=0.3, burst=1)
    assert bucket.slow_down() == pytest.approx(0.27)
    assert bucket.slow_down() == pytest.approx(0.25)  # the AWS default quota
    assert bucket.slow_down() is None
