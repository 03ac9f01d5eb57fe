"""The bulk-copy engine: runs one batch of manifest rows to completion, exactly once, from the ledger.

All state is in the ledger, so any process can pick a batch up where another stopped:

- ``pending`` rows are claimed one at a time (an atomic UPDATE), planned (versions, subset,
  expected contents; the plan is stored), then sent within the deployment-wide token bucket and
  the in-flight cap per data store, and never while another copy of the same source is in flight;
- right before each CopyImageSet the engine renews its lease and re-checks its claim in one
  transaction, and skips the row if the same copy already succeeded or is in flight elsewhere;
- rows in flight whose owner's lease expired (its process died) are taken over and reconciled
  against the data store (the copy took effect → ``submitted``; it did not → back to ``pending``),
  never blindly re-sent; so are such rows of other runs that hold a source or the in-flight cap;
- ``submitted`` rows are polled until COPIED (verified → ``succeeded``) or COPY_FAILED (``failed``
  with the service's message), when the copies done so far say they end (:mod:`.poll_schedule`), within
  a share of GetImageSet's quota;
- a send refused for the copies in progress (402) waits, claimed and planned, until one of this engine's
  copies completes (or :data:`ROOM_WAIT_SECONDS`), and is sent again: not a failure;
- sustained throttling lowers the deployment's shared rate, which then climbs back slowly: a rate set
  above the account's quota settles just under it (:mod:`.rate_limit`).

Every write to a claimed row is fenced by the claim: an engine whose write changes nothing stops
working on that row (see :mod:`healthimaging.bulk.ledger` for the ownership rules).

The engine is synchronous and advances in small steps (:meth:`BatchCopyEngine.step`), so the same
code runs in a deferrable trigger (in a thread of the triggerer) and in plain tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from healthimaging.bulk.ledger import (
    FAILED,
    FINAL_STATUSES,
    PENDING,
    REJECTED,
    SKIPPED,
    STATEMENTS,
    SUBMITTED,
    SUBMITTING,
    SUCCEEDED,
    BatchKey,
    Ledger,
)
from healthimaging.bulk.manifest import storable_text
from healthimaging.bulk.poll_schedule import CopyDurations, PollBudget, copy_seconds
from healthimaging.bulk.rate_limit import SharedTokenBucket, ThrottleWatch
from healthimaging.bulk.settings import BulkCopySettings
from healthimaging.copy import states
from healthimaging.copy.copiable_attributes import CopyRequestError
from healthimaging.copy.plan import CopyPlan, expected_contents, resolve_plan, uid_digest
from healthimaging.copy.request import CopyRequest
from healthimaging.copy.submission import (
    CopySubmissionError,
    SendCancelled,
    SubmissionPolicy,
    reconcile,
    snapshot_series,
    submit_copy,
)
from healthimaging.hooks.medical_imaging import HealthImagingHook

log = logging.getLogger(__name__)

#: The engine sends at this share of the configured rate: with the client's and the service's buckets
#: at exactly the same rate, the calls' jitter would land some just inside one quota interval and get them
#: throttled. (The larger delay, between a token and its call leaving this process, is absorbed by
#: SendSpacing.)
PACE_MARGIN = 0.995
#: Polls stop before a send is due by as long as one poll took lately (GetImageSet, and verification when
#: the copy is done: milliseconds, or more on a loaded host), and this much at least: a send that starts
#: late loses that time from the quota for good.
SEND_GUARD_SECONDS = 0.005
#: The allowance on top of a quota interval between two calls (see SendSpacing) grows by this much with each
#: throttled call, and shrinks by a quarter as much after this many calls in a row were not throttled.
JITTER_STEP_SECONDS = 0.002
JITTER_RELAX_SENDS = 200
#: The allowance to start from, and the least it shrinks to: a loaded host (the test suite beside the stack)
#: delays some calls by a few milliseconds more than others.
JITTER_START_SECONDS = 0.004
JITTER_FLOOR_SECONDS = 0.001
#: After a send refused for the copies in progress, the copy is sent again when one of this engine's copies
#: completes, or after this long (room may come from other engines' copies, or copies outside this tool).
ROOM_WAIT_SECONDS = 1.0
#: When the data store's copies in flight are at the cap, claims are tried again after this long at most
#: (sooner when one of this engine's copies completes).
CAP_RETRY_SECONDS = 1.0


#: The rows this engine holds are read from the ledger when one is due for a poll, and at least this often.
HELD_READ_SECONDS = 10.0


class SendSpacing:
    """Keeps the CopyImageSet calls of this process at least one interval of the shared rate apart.

    The service counts a call from its arrival, and a token from the shared bucket is some milliseconds
    older than its call (the send's ledger transaction, building and signing the request, a thread waiting
    for the GIL): by a few milliseconds more or less each time. Two calls whose tokens were an interval
    apart can so leave less than an interval apart, and with AWS's burst of 1 the second is throttled. So
    right before a call leaves (botocore's before-send), it waits until an interval has passed since the
    last call of any engine of this process on the same bucket. Each call is then late by at most the
    longest of those delays, never by their sum, as it would be if each delay moved the bucket back.

    Calls that leave an interval apart can still arrive closer (the network, the service's own scheduling),
    so the interval has an allowance on top, learnt per bucket from :data:`JITTER_START_SECONDS`: each
    throttled call widens it by :data:`JITTER_STEP_SECONDS` (up to a tenth of the interval), and every
    :data:`JITTER_RELAX_SENDS` calls in a row not throttled narrow it by a quarter step, down to
    :data:`JITTER_FLOOR_SECONDS`. It settles where about one call in several hundred is throttled."""

    _lock = threading.Lock()
    _last: dict[str, float] = {}
    _allowance: dict[str, float] = {}
    _clean: dict[str, int] = {}

    @classmethod
    def wait_turn(cls, name: str, interval: float) -> None:
        with cls._lock:  # held while waiting: a call of another engine would be as early
            last = cls._last.get(name)
            allowance = min(cls._allowance.get(name, JITTER_START_SECONDS), interval / 10)
            if last is not None and (early := last + interval + allowance - time.monotonic()) > 0:
                time.sleep(early)
            cls._last[name] = time.monotonic()

    @classmethod
    def outcome(cls, name: str, throttled: bool) -> None:
        """A call on bucket ``name`` was answered: throttled or not."""
        with cls._lock:
            allowance = cls._allowance.get(name, JITTER_START_SECONDS)
            if throttled:
                cls._allowance[name], cls._clean[name] = allowance + JITTER_STEP_SECONDS, 0
            elif (clean := cls._clean.get(name, 0) + 1) >= JITTER_RELAX_SENDS:
                cls._allowance[name], cls._clean[name] = (
                    max(allowance - JITTER_STEP_SECONDS / 4, JITTER_FLOOR_SECONDS),
                    0,
                )
            else:
                cls._clean[name] = clean


class WaitForRoom(Exception):
    """A send was refused for the copies in progress: hand the copy back to the engine to wait for room."""


def state_line(event: str, row: dict[str, Any], **fields: Any) -> str:
    """One structured JSON log line for a row's state change: ids, statuses and codes, no patient data."""
    payload = {
        "event": event,
        "dag_id": row.get("dag_id"),
        "run_id": row.get("run_id"),
        "row": row.get("row_number"),
        "label": row.get("label"),
        "datastore_id": row.get("datastore_id"),
        "source_image_set_id": row.get("source_image_set_id"),
        **fields,
    }
    return json.dumps({k: v for k, v in payload.items() if v is not None}, sort_keys=True)


class BatchCopyEngine:
    """Runs the rows of one batch of one run; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        dag_id: str,
        run_id: str,
        manifest_sha256: str,
        batch: int,
        settings: BulkCopySettings,
        hook: HealthImagingHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.key = BatchKey(dag_id, run_id, manifest_sha256, batch)
        self.dag_id, self.run_id, self.manifest_sha256, self.batch = dag_id, run_id, manifest_sha256, batch
        self.settings = settings
        self.hook = hook or HealthImagingHook(aws_conn_id=settings.aws_conn_id, region_name=settings.region_name)
        self.bucket = SharedTokenBucket(
            ledger.engine, settings.rate_limit_name, settings.copies_per_second * PACE_MARGIN, settings.burst
        )
        self.clock = clock
        self.started = clock()
        self.owner = ""  # this engine's id in the ledger (its lease and its claims); set by _new_identity
        self._renew_at = 0.0
        self._sweep_at = 0.0
        self._last_progress = 0.0
        self._done_at_start: int | None = None
        self._calls_timed = False
        self.throttle_watch = ThrottleWatch()
        self.durations = CopyDurations(settings.poll_interval_seconds)
        self.poll_budget = PollBudget(settings.get_image_set_per_second, clock)
        self._refused = 0  # sends of the copy being submitted that were refused (throttled or 402)
        self.statements = 0  # SQL statements its steps sent to the ledger
        self._poll_cost = SEND_GUARD_SECONDS  # how long one poll took lately (a decaying maximum)
        self._new_identity()

    # ------------------------------------------------------------------ ownership

    def _new_identity(self) -> None:
        """Start (again) with a fresh id and no rows: the state a lost lease leaves is the ledger's alone."""
        self.owner = uuid.uuid4().hex
        self._lease_started = False
        self._next_poll: dict[int, float] = {}  # row id -> when to check it next (kept in memory: no write per poll)
        self._accepted_at: dict[int, float] = {}  # row id -> when the service accepted its copy
        self._ready: tuple[dict[str, Any], CopyPlan] | None = None
        self._room_until: float | None = None  # after a 402: the ready copy waits for room until then
        self._held_read_at = 0.0  # when the rows held are read again even if none is due
        self._sweep_at = 0.0

    def _keep_lease(self) -> None:
        """Hold the lease: start it, renew it every quarter of its length; after losing it, start over."""
        now = self.clock()
        if not self._lease_started:
            self.ledger.acquire_lease(
                self.owner,
                dag_id=self.dag_id,
                run_id=self.run_id,
                batch=self.batch,
                seconds=self.settings.lease_seconds,
            )
            self._lease_started, self._renew_at = True, now + self.settings.lease_seconds / 4
        elif now >= self._renew_at:
            if self.ledger.renew_lease(self.owner, self.settings.lease_seconds):
                self._renew_at = now + self.settings.lease_seconds / 4
            else:
                self._lost_lease()

    def _lost_lease(self) -> None:
        log.warning(
            "batch %d: engine %s lost its lease (not renewed for %.0f s); its rows may have been taken over, "
            "starting again as a new owner",
            self.batch,
            self.owner,
            self.settings.lease_seconds,
        )
        self._new_identity()
        self._keep_lease()

    def _sleep(self, seconds: float) -> None:
        """Sleep inside a step (backoff, waiting for a token) without letting the lease lapse."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            time.sleep(min(left, max(self._renew_at - self.clock(), 0.05)))
            self._keep_lease()

    def release(self) -> None:
        """End this engine's lease now (it stops): rows it still holds can be taken over at once."""
        self.ledger.release_lease(self.owner)

    def _write(
        self, row: dict[str, Any], status: str | None = None, *, add: dict[str, int] | None = None, **changes: Any
    ) -> bool:
        """A fenced write to a row this engine holds; False (nothing written, the row dropped) if it no longer does.

        ``add`` is added to the stored counters (see :meth:`Ledger.fenced_update`)."""
        if status is not None:
            changes["status"] = status
        changes["updated_at"] = self.clock()
        if status in FINAL_STATUSES or status == PENDING:
            changes.setdefault("claim", None)  # final or back in the queue: nobody holds it any more
        if not self.ledger.fenced_update(row["id"], self.owner, add=add, **changes):
            self._drop(row, "write")
            return False
        row.update(changes)
        for column, n in (add or {}).items():
            row[column] = (row.get(column) or 0) + n
        if status is not None:
            log.info(
                state_line(
                    "copy_state",
                    row,
                    status=status,
                    destination_image_set_id=row.get("destination_image_set_id"),
                    destination_version_id=row.get("destination_version_id"),
                    error_code=row.get("error_code"),
                )
            )
        return True

    def _drop(self, row: dict[str, Any], at: str) -> None:
        """Stop working on a row another engine took over."""
        log.warning(state_line("copy_claim_lost", row, owner=self.owner, at=at))
        self._forget(row)
        if self._ready is not None and self._ready[0]["id"] == row["id"]:
            self._ready, self._room_until = None, None

    def _forget(self, row: dict[str, Any]) -> None:
        self._next_poll.pop(row["id"], None)
        self._accepted_at.pop(row["id"], None)

    def counts(self) -> dict[str, int]:
        return self.ledger.batch_counts(self.key)

    # ------------------------------------------------------------------ the loop

    def run(self, sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
        """Run the batch to the end in this thread (tests, synchronous use)."""
        while (wait := self.step()) is not None:
            sleep(wait)
        return self.counts()

    def step(self) -> float | None:
        """Advance the batch; returns seconds to wait before the next step, or None when it is done."""
        before = STATEMENTS.n  # a step runs in one thread: the thread's count is this step's
        try:
            return self._step()
        finally:
            self.statements += STATEMENTS.n - before

    def _step(self) -> float | None:
        self._keep_lease()
        # Deadlines are absolute times, turned into one wait at the end: a wait measured before the polls
        # ran would make every send late by the time they took, and with burst 1 lateness is quota lost.
        send_at = self._send_ready()  # first: the token for it is due now, polls can wait a few milliseconds
        if self.clock() >= self._sweep_at:  # after the send, which it would make late
            self._take_over_orphans(self.ledger.orphans(self.key, self.owner))
            self.poll_budget.share(self.ledger.live_lease_count())
            self._sweep_at = self.clock() + min(self.settings.lease_seconds / 6, 10.0)
        poll_at = self._poll_in_flight(stop_at=send_at)
        if send_at is None:
            send_at = self._submit_some()
        self._progress()
        if not self.ledger.has_open_rows(self.key, self.owner):
            self._progress(final=True)  # the batch's last line says where it ended
            self.release()
            return None
        due = [t for t in (send_at, poll_at, self._renew_at, self._sweep_at) if t is not None]
        return max(0.0, min(min(due) - self.clock(), self.settings.poll_interval_seconds))

    def _take_over_orphans(self, orphans: Iterable[dict[str, Any]]) -> None:
        """Rows in flight whose owner's lease expired (its engine died or stalled): take each over, then
        reconcile it against the data store before anything is re-sent."""
        for orphan in orphans:
            row = self.ledger.take_over(orphan, self.owner)
            if row is None:
                continue  # its owner renewed in time, or another engine took it first
            log.warning(state_line("copy_taken_over", row, status=row["status"], previous_owner=orphan["claim"]))
            if row["status"] == SUBMITTED:
                self._next_poll[row["id"]] = self.clock()
                self._accepted_at[row["id"]] = row["submitted_at"] or self.clock()
                continue
            if not row["plan_json"]:
                self._write(row, PENDING, claimed_at=None)  # never planned, so never sent: nothing to reconcile
                continue
            plan = CopyPlan.from_dict(json.loads(row["plan_json"]))
            # Its waits renew the lease: a reconciliation must never outlast the lease of the engine doing it.
            found = reconcile(
                self.hook, plan, row["sent_at"] or row["claimed_at"] or 0.0, SubmissionPolicy(sleep=self._sleep)
            )
            if found is None:
                log.warning(state_line("copy_reconciled", row, outcome="not_sent"))
                self._write(row, PENDING, claimed_at=None, plan_json=None, sent_at=None)
            else:
                log.warning(state_line("copy_reconciled", row, outcome="took_effect"))
                # The dead engine never recorded the submission: the copy was sent after the claim, once.
                if self._write(
                    row,
                    SUBMITTED,
                    destination_image_set_id=found.destination_image_set_id,
                    destination_version_id=found.destination_version_id,
                    next_poll_at=self.clock(),
                    submitted_at=row["submitted_at"] or row["sent_at"],
                    attempts=(row.get("attempts") or 0) + 1,
                ):
                    self._next_poll[row["id"]] = self.clock()
                    self._accepted_at[row["id"]] = row["submitted_at"] or self.clock()

    def _token_due(self) -> float | None:
        """Take a token: None if taken, else the time one will be there."""
        asked = self.clock()
        wait = self.bucket.try_acquire()
        return asked + wait if wait else None

    def _take_token(self) -> None:
        """Wait for a token (before a resend)."""
        while (wait := self._token_due()) is not None:
            self._sleep(max(0.0, wait - self.clock()))

    def _copy_client(self) -> None:
        """Build the no-retry CopyImageSet client (once) and space its calls (see :class:`SendSpacing`)."""
        if not self._calls_timed:
            events = self.hook.no_retry_conn.meta.events
            events.register("before-send.medical-imaging.CopyImageSet", self._space_send)
            self._calls_timed = True

    def _space_send(self, **_: Any) -> None:
        """botocore's last step before the request goes out."""
        SendSpacing.wait_turn(self.bucket.name, 1.0 / self.bucket.last_rate)

    def _submit_some(self) -> float | None:
        """Send pending rows while tokens and in-flight room allow; returns when to come back, or None."""
        blocked_sources: set[str] = set()
        for row in self.ledger.batch_rows(self.key, PENDING, limit=200):
            if row["source_image_set_id"] in blocked_sources:
                continue
            claimed_at = self.clock()
            if not self.ledger.claim(
                row["id"],
                self.owner,
                datastore_id=row["datastore_id"],
                claimed_at=claimed_at,
                source_image_set_id=row["source_image_set_id"],
                max_in_flight=self.settings.max_copies_in_flight,
            ):
                # The claim checks both guards atomically; only why it failed is looked up here. A guard held
                # by an owner that died is taken over (and reconciled), so that nothing waits on it for ever.
                obstacle = self.ledger.claim_obstacle(row, self.settings.max_copies_in_flight)
                self._take_over_orphans(obstacle.orphans)
                if obstacle.kind == "cap":
                    # Room comes when a copy completes: this engine's own polls come back sooner than this.
                    return self.clock() + CAP_RETRY_SECONDS
                if obstacle.kind == "source":
                    blocked_sources.add(row["source_image_set_id"])  # the source is locked by a copy in flight
                continue
            row.update(status=SUBMITTING, claim=self.owner, claimed_at=claimed_at, sent_at=None)
            log.info(state_line("copy_state", row, status=SUBMITTING))
            plan = self._plan(row)
            if plan is None:
                continue
            # The token is taken right before CopyImageSet is sent, so that planning times (a few reads that
            # vary with load) do not bunch the sends of several engines together.
            send_at = self._token_due()
            if send_at is not None:
                self._ready = (row, plan)  # claimed and planned: sent first at the next step
                return send_at
            self._submit(row, plan)
            if self._room_until is not None:
                return self._room_until  # refused for the copies in progress: nothing more is claimed until room
        return None

    def _send_ready(self) -> float | None:
        """Send the row planned at an earlier step once a token is there; returns when one will be, else None."""
        if self._ready is None:
            return None
        if self._room_until is not None:
            if self.clock() < self._room_until:
                return self._room_until  # a completion noticed by a poll ends the wait sooner
            self._room_until = None
        send_at = self._token_due()
        if send_at is not None:
            return send_at
        (row, plan), self._ready = self._ready, None
        self._submit(row, plan)
        return None

    def _plan(self, row: dict[str, Any]) -> CopyPlan | None:
        """Resolve a claimed row's copy and store the plan; None if the row failed or went back to pending."""
        request = json.loads(row["request_json"])
        try:
            plan = resolve_plan(self.hook, CopyRequest.from_mapping(request))
            plan = snapshot_series(self.hook, plan)
        except CopyRequestError as exc:
            self._write(row, FAILED, error_code="InvalidCopyRequest", message=str(exc), completed_at=self.clock())
            return None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            self._write(
                row,
                FAILED,
                error_code=error.get("Code", "ClientError"),
                message=error.get("Message", str(exc)),
                completed_at=self.clock(),
            )
            return None
        except BotoCoreError as exc:
            # The service could not be reached to plan the row: leave it pending for the next step.
            log.warning(state_line("copy_plan_retry", row, error=type(exc).__name__))
            self._write(row, PENDING, claimed_at=None)
            return None
        if not self._write(
            row,
            None,
            plan_json=json.dumps(plan.to_dict()),
            source_version_id=plan.source_version_id,
            destination_version_id=None,
            copy_kind=plan.copy_kind,
        ):
            return None
        # The CopyImageSet client is built now (once per engine), not between the token and the send: building
        # it takes long enough that a send of another engine, paced after this one, would overtake it.
        self._copy_client()
        return plan

    def _clear_to_send(self, row: dict[str, Any]) -> None:
        """Right before each CopyImageSet: the lease renewed and the claim re-checked in one transaction, and
        the same copy done or in flight elsewhere in the ledger turns this row into a skip."""
        clearance = self.ledger.arm_send(
            row, self.owner, skip_copied=self.settings.skip_already_copied, lease_seconds=self.settings.lease_seconds
        )
        if clearance.send:
            self._renew_at = self.clock() + self.settings.lease_seconds / 4
            return
        if clearance.reason == "duplicate":
            other = clearance.duplicate_of or {}
            log.info(
                state_line(
                    "copy_state",
                    row,
                    status=SKIPPED,
                    duplicate_of_run=other.get("run_id"),
                    duplicate_of_row=other.get("row_number"),
                    duplicate_status=other.get("status"),
                )
            )
        else:
            self._drop(row, clearance.reason)
            if clearance.reason == "lease_lost":
                self._lost_lease()
        raise SendCancelled(clearance.reason)

    def _submit(self, row: dict[str, Any], plan: CopyPlan) -> None:
        """Send a planned row's CopyImageSet (exactly once: see copy_submission) and record the outcome."""
        try:
            # The first send uses the token taken before this call; every resend takes one of its own.
            # Throttled: wait half a quota interval or so (doubling while it lasts), then a token.
            policy = SubmissionPolicy(
                max_attempts=self.settings.max_submit_attempts,
                before_resend=self._take_token,
                before_send=lambda: self._clear_to_send(row),
                after_send=self._after_send,
                copies_limit_reached=self._copies_limit_reached,
                sleep=self._sleep,
                throttle_backoff_base_seconds=0.25 / self.settings.copies_per_second,
            )
            self._copy_client()
            self._refused = 0
            submitted = submit_copy(self.hook, plan, policy)
            accepted_at = self.clock()
        except SendCancelled:
            return
        except WaitForRoom:
            # Claimed and planned still: sent first when room comes. Its refused sends are counted now.
            if self._write(row, None, add={"throttles": self._refused}):
                self._ready, self._room_until = (row, plan), self.clock() + ROOM_WAIT_SECONDS
            return
        except CopySubmissionError as exc:
            self._write(
                row,
                FAILED,
                add={"throttles": exc.throttles},
                error_code=exc.code,
                message=exc.message,
                completed_at=self.clock(),
                attempts=(row.get("attempts") or 0) + 1,
            )
            return
        if self._write(
            row,
            SUBMITTED,
            destination_image_set_id=submitted.destination_image_set_id,
            destination_version_id=submitted.destination_version_id,
            submitted_at=submitted.submitted_at,
            attempts=(row.get("attempts") or 0) + submitted.attempts,
            # added to the stored count: a row sent again after a take-over keeps its earlier owners' throttles
            add={"throttles": submitted.throttles},
            next_poll_at=self.clock() + self.durations.next_poll(0.0),
            plan_json=json.dumps(submitted.plan.to_dict()),
            source_version_id=submitted.plan.source_version_id,
        ):
            self._accepted_at[row["id"]] = accepted_at
            self._next_poll[row["id"]] = row["next_poll_at"]

    def _after_send(self, throttled: bool) -> None:
        """Every CopyImageSet answered: sustained throttling lowers the deployment's shared rate."""
        SendSpacing.outcome(self.bucket.name, throttled)
        if throttled:
            self._refused += 1
        share = self.throttle_watch.sent(throttled)
        if share is not None and self.settings.adapt_rate and (rate := self.bucket.slow_down(share)) is not None:
            log.warning(
                "batch %d: %.0f%% of the last CopyImageSet sends were throttled: the shared rate %r is lowered to "
                "%.3f/s (configured %.3f/s; it climbs back while sends are not throttled)",
                self.batch,
                100 * share,
                self.bucket.name,
                rate,
                self.settings.copies_per_second,
            )

    def _copies_limit_reached(self, message: str) -> None:
        self._refused += 1
        log.info("batch %d: CopyImageSet refused, the data store has its copies in progress: %s", self.batch, message)
        raise WaitForRoom(message)

    def _poll_in_flight(self, stop_at: float | None = None) -> float | None:
        """Check the copies in flight that are due, stopping short of ``stop_at`` (a send is due then) and
        within the engine's share of GetImageSet's quota; returns when the next one is due."""
        now = self.clock()
        if now < self._held_read_at and not any(due <= now for due in self._next_poll.values()):
            return min(self._next_poll.values(), default=None)  # nothing due: no ledger read
        if self._send_is_near(stop_at):
            return stop_at  # polled right after the send
        rows = self.ledger.held_rows(self.owner, SUBMITTED)
        self._held_read_at = now + HELD_READ_SECONDS
        for gone in set(self._next_poll) - {r["id"] for r in rows}:  # taken over, or finished by another owner
            self._next_poll.pop(gone)
            self._accepted_at.pop(gone, None)
        next_due: float | None = None

        def come_back(when: float) -> None:
            nonlocal next_due
            next_due = when if next_due is None else min(next_due, when)

        for row in sorted(rows, key=lambda r: self._next_poll.get(r["id"], r["next_poll_at"] or 0.0)):
            due = self._next_poll.setdefault(row["id"], row["next_poll_at"] or 0.0)
            if due > now:
                come_back(due)
                continue
            if self._send_is_near(stop_at):
                come_back(stop_at)  # polled right after the send
                break
            if wait := self.poll_budget.take():
                come_back(self.clock() + wait)  # over the budget: the rest wait for it
                break
            began = self.clock()
            self._poll_one(row, now)
            self._poll_cost = max(self.clock() - began, 0.9 * self._poll_cost, SEND_GUARD_SECONDS)
            if row["id"] in self._next_poll:
                come_back(self._next_poll[row["id"]])
        return next_due

    def _send_is_near(self, send_at: float | None) -> bool:
        """Whether one more poll could delay the send due at ``send_at``. The guard is at most half the
        interval between two sends, or polls slower than that would never run while sends go on."""
        guard = min(self._poll_cost, 0.5 / self.settings.copies_per_second)
        return send_at is not None and self.clock() + guard >= send_at

    def _poll_one(self, row: dict[str, Any], now: float) -> None:
        """GetImageSet of one copy in flight: finish it (COPIED, COPY_FAILED) or set its next poll."""
        accepted_at = self._accepted_at.setdefault(row["id"], row["submitted_at"] or now)
        try:
            image_set = self.hook.get_image_set(
                row["datastore_id"], row["destination_image_set_id"], row["destination_version_id"]
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(state_line("copy_poll_error", row, error=type(exc).__name__))
            self._next_poll[row["id"]] = self.clock() + self.settings.poll_interval_seconds
            return
        workflow = image_set.get("imageSetWorkflowStatus")
        if workflow in (states.COPIED, states.COPY_FAILED):
            self.durations.observe(copy_seconds(image_set, accepted_at, self.clock()))
            self._room_until = None  # a copy in progress less: a copy refused for the limit may go now
        if workflow == states.COPIED:
            self._finish(row, image_set)
        elif workflow == states.COPY_FAILED:
            self._forget(row)
            self._write(
                row, FAILED, error_code="COPY_FAILED", message=image_set.get("message"), completed_at=self.clock()
            )
        else:
            self._next_poll[row["id"]] = self.clock() + self.durations.next_poll(self.clock() - accepted_at)

    def _finish(self, row: dict[str, Any], image_set: dict[str, Any]) -> None:
        self._forget(row)
        verified = None
        if self.settings.verify_copies and row.get("plan_json"):
            plan = CopyPlan.from_dict(json.loads(row["plan_json"]))
            held = self.hook.get_sop_instance_uids(
                row["datastore_id"], row["destination_image_set_id"], row["destination_version_id"]
            )
            expected_count, expected_digest = expected_contents(self.hook, plan, row["destination_version_id"])
            verified = uid_digest(held) == expected_digest
            if not verified:
                self._write(
                    row,
                    FAILED,
                    error_code="VerificationFailed",
                    verified=False,
                    completed_at=self.clock(),
                    message=f"the destination holds {len(held)} SOP instances, expected {expected_count}",
                )
                return
        self._write(
            row,
            SUCCEEDED,
            verified=verified,
            completed_at=self.clock(),
            error_code=None,
            message=None,
            destination_image_set_arn=image_set.get("imageSetArn"),
        )

    def _progress(self, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self._last_progress < self.settings.progress_interval_seconds:
            return
        self._last_progress = now
        counts = self.counts()
        total = sum(counts.values())
        done = sum(counts.get(s, 0) for s in FINAL_STATUSES)
        if self._done_at_start is None:
            self._done_at_start = done
        elapsed = max(now - self.started, 1e-6)
        rate = (done - self._done_at_start) / elapsed
        eta = (total - done) / rate if rate > 0 else None
        log.info(
            "batch %d: %d/%d rows done (%d succeeded, %d failed, %d in flight), %.2f rows/s, ETA %s%s%s",
            self.batch,
            done,
            total,
            counts.get(SUCCEEDED, 0),
            counts.get(FAILED, 0),
            counts.get(SUBMITTED, 0) + counts.get(SUBMITTING, 0),
            rate,
            f"{eta:.0f}s" if eta is not None else "unknown",
            self._waiting_note(),
            f"; {self.statements} ledger statements ({self.statements / max(total, 1):.1f} per row)" if final else "",
        )

    def _waiting_note(self) -> str:
        """ "; N rows wait on run R (batch B), whose lease ends at T" for every other owner this batch waits on."""
        notes = []
        for other in self.ledger.waiting_on(self.key, self.owner):
            if other["expires_at"] is None or other["expires_at"] <= time.time():
                ends = "whose owner's lease has ended (taken over shortly)"
            else:
                ends = "whose lease ends " + datetime.fromtimestamp(other["expires_at"], timezone.utc).strftime(
                    "%H:%M:%S UTC"
                )
            notes.append(
                f"{other['rows']} rows wait on copies of run {other['run_id'] or 'unknown'} "
                f"(batch {other['batch']}), {ends}"
            )
        return "; " + "; ".join(notes) if notes else ""


@dataclass
class RegisteredManifest:
    """What :func:`register_manifest` put in the ledger for a run."""

    batches: list[int]
    total_rows: int
    pending: int
    rejected: int
    skipped: int


def register_manifest(
    ledger: Ledger,
    *,
    dag_id: str,
    run_id: str,
    manifest_uri: str,
    validated: Any,
    batch_size: int,
    skip_copied: bool = True,
) -> RegisteredManifest:
    """Record every row of a validated manifest for a run: valid rows ``pending`` in batches, invalid
    ones ``rejected`` with their errors, rows copied by an earlier run ``skipped``. Idempotent for a run.

    A copy that another run left in flight (``submitting`` or ``submitted``) whose engine's lease has
    expired (it died) is taken over by this run, state and all, so that it is reconciled or polled
    rather than blocking its source or being sent a second time. A copy whose owner is alive is left
    to it: this run's row waits, and is skipped once that copy has succeeded (:meth:`Ledger.arm_send`)."""
    base = {"dag_id": dag_id, "run_id": run_id, "manifest_uri": manifest_uri, "manifest_sha256": validated.sha256}
    keys = [r.copy_key for r in validated.rows]
    already = ledger.succeeded_copy_keys(keys) if skip_copied else {}
    orphans = ledger.orphaned_copy_keys(keys, dag_id=dag_id, run_id=run_id)
    takeovers: list[tuple[dict[str, Any], int]] = []
    records: list[dict[str, Any]] = []
    pending_index = 0
    for row in validated.rows:
        record = {
            **base,
            "row_number": row.row,
            "label": row.label,
            "datastore_id": row.datastore_id,
            "source_image_set_id": row.source_image_set_id,
            "source_version_id": row.source_version_id,
            "destination_image_set_id": row.destination_image_set_id,
            "force": row.force,
            "promote_to_primary": row.promote_to_primary,
            "copy_key": row.copy_key,
            "request_json": json.dumps(row.to_dict()),
        }
        previous = already.get(row.copy_key)
        if previous is not None:
            record.update(
                status=SKIPPED,
                destination_image_set_id=previous["destination_image_set_id"],
                destination_version_id=previous["destination_version_id"],
                error_code="AlreadyCopied",
                message=f"copied by run {previous['run_id']} (row {previous['row_number']})",
            )
        else:
            if (orphan := orphans.get(row.copy_key)) is not None:
                takeovers.append((orphan, row.row))
            record.update(status=PENDING, batch=pending_index // batch_size)
            pending_index += 1
        records.append(record)
    for row_number, raw, errors in validated.rejected:
        records.append(
            {
                **base,
                "row_number": row_number,
                "status": REJECTED,
                "error_code": "InvalidManifestRow",
                "message": storable_text("; ".join(str(e) for e in errors))[:4000],
                "label": (str(raw.get("label"))[:256] if raw and raw.get("label") else None),
                "source_image_set_id": _short_id(raw.get("source_image_set_id")) if raw else None,
                "datastore_id": _short_id(raw.get("datastore_id")) if raw else None,
            }
        )
    ledger.record_rows(records)
    if takeovers:
        ids = {r["row_number"]: r["id"] for r in ledger.run_rows(dag_id, run_id, validated.sha256)}
        for orphan, row_number in takeovers:
            ledger.resume_orphan(
                orphan, ids[row_number], _RESUMED_COLUMNS, dag_id=dag_id, run_id=run_id, row_number=row_number
            )
    counts = ledger.status_counts(dag_id, run_id, validated.sha256)
    return RegisteredManifest(
        batches=ledger.open_batches(dag_id, run_id, validated.sha256),
        total_rows=validated.total_rows,
        pending=counts.get(PENDING, 0),
        rejected=counts.get(REJECTED, 0),
        skipped=counts.get(SKIPPED, 0),
    )


#: What a run taking over a dead run's copy in flight inherits from its ledger row.
_RESUMED_COLUMNS = (
    "status",
    "plan_json",
    "claimed_at",
    "sent_at",
    "submitted_at",
    "attempts",
    "source_version_id",
    "copy_kind",
    "destination_image_set_id",
    "destination_version_id",
    "destination_image_set_arn",
)


def _short_id(value: Any) -> str | None:
    """An id column of a rejected row, kept only if it fits (a bad value must not break the insert)."""
    text = str(value).strip() if value is not None else ""
    return text if 0 < len(text) <= 32 else None
