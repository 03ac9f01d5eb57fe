"""Sending one CopyImageSet exactly once.

CopyImageSet has no idempotency token, so the SDK must never repeat it (the hook's
``no_retry_conn``) and this module decides every retry itself:

- throttling backs off exponentially and tries again: the call did not take effect;
- the concurrent-copies quota (402, ServiceQuotaExceededException: 100 copies in progress per data store by
  default) did not take effect either: the copy waits for room (the caller's ``copies_limit_reached``, which
  waits for one of its copies to complete) and is sent again; it is not a failed attempt. A 402 for the
  image frames per copy (1,000) is final: sending the same copy again cannot succeed;
- a connection that never opened is retried: nothing was sent;
- an ambiguous failure (5xx, a lost response, a read timeout) is **reconciled first**: the data store
  is read (ListImageSetVersions of the destination, or SearchImageSets by series UID and creation
  time for a new image set) and the copy is sent again only when no copy took effect;
- a Conflict re-reads the image sets: a lock held by another copy is waited out; a stale version is
  re-resolved (bounded) when the caller did not pin it, and fails with a message when it did.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, HTTPClientError

from healthimaging.copy import states
from healthimaging.copy.plan import CopyPlan
from healthimaging.hooks.medical_imaging import HealthImagingHook

log = logging.getLogger(__name__)

THROTTLING_CODES = frozenset({"ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded"})
#: Seconds either side of the submission that a reconciling search still counts as "created by us".
CLOCK_SKEW_SECONDS = 300


class SendCancelled(Exception):
    """``before_send`` decided that this copy must not be sent (the caller no longer owns it, or the same
    copy is already done elsewhere); nothing was sent by this attempt."""


def is_frames_quota(message: str) -> bool:
    """A ServiceQuotaExceededException about the image frames of one copy, not the copies in progress.

    AWS does not document the two messages' wording; both name their quota ("image frames" in one), and
    the emulator's do the same."""
    return "frame" in message.lower()


class CopySubmissionError(Exception):
    """CopyImageSet failed for good; ``code`` is the service's error code (or ours), ``message`` its text.

    ``throttles`` is how many of its sends were throttled before it failed (set by :func:`submit_copy`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.throttles = 0


@dataclass
class SubmissionPolicy:
    """How hard to try. Backoff is exponential with full jitter: ``min(cap, base * 2**n) * U(0.5, 1)``."""

    max_attempts: int = 8
    max_throttle_retries: int = 30
    max_version_conflicts: int = 3
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0
    #: The base of the backoff after throttling. A caller that paces its sends to the quota sets it to a
    #: fraction of the quota's interval: a throttle then means "a little early", not "back off for seconds".
    throttle_backoff_base_seconds: float = 1.0
    reconcile_attempts: int = 3
    reconcile_delay_seconds: float = 2.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    #: Called before every CopyImageSet after the first (after throttling, a 5xx, a lost response, a
    #: conflict): a caller that paces its sends with a shared rate limit takes a token there, so that
    #: every call the service sees was paid for (an unpaid resend takes the quota of someone else's send).
    before_resend: Callable[[], object] | None = field(default=None, repr=False)
    #: Called right before every CopyImageSet, the first included, after ``before_resend``: a caller whose
    #: right to send can lapse (a lease) checks it there and raises :class:`SendCancelled` to send nothing.
    before_send: Callable[[], object] | None = field(default=None, repr=False)
    #: Called after every CopyImageSet answered, with True if it was throttled: a caller adapting its rate
    #: to the quota watches the share of throttled sends there.
    after_send: Callable[[bool], object] | None = field(default=None, repr=False)
    #: Called with the service's message when a send is refused for the copies in progress (402): it waits
    #: for room (a copy of the caller's completes) or raises to hand the copy back to the caller. Without
    #: it, the copy waits a backoff of its own (base ``backoff_base_seconds``) and is sent again.
    copies_limit_reached: Callable[[str], object] | None = field(default=None, repr=False)
    #: Sends refused for the copies in progress before the copy fails (an hour or so of backoff without
    #: ``copies_limit_reached``).
    max_copies_limit_waits: int = 90

    def backoff(self, attempt: int, base: float | None = None) -> float:
        base = self.backoff_base_seconds if base is None else base
        return min(self.backoff_cap_seconds, base * 2**attempt) * random.uniform(0.5, 1.0)


@dataclass
class SubmittedCopy:
    """A copy the service accepted: where it goes and when it was sent."""

    plan: CopyPlan
    destination_image_set_id: str
    destination_version_id: str
    submitted_at: float
    source_image_set_arn: str | None = None
    destination_image_set_arn: str | None = None
    reconciled: bool = False
    attempts: int = 1
    #: Sends refused and sent again, throttled (a throttling code or HTTP 429) or over the copies in progress
    #: (402): not counted in ``attempts``. 0 from :func:`reconcile` on its own, which sends nothing.
    throttles: int = 0


def submit_copy(
    hook: HealthImagingHook,
    plan: CopyPlan,
    policy: SubmissionPolicy | None = None,
    replan: Callable[[CopyPlan], CopyPlan] | None = None,
) -> SubmittedCopy:
    """Send ``plan`` until the service accepts it once; see the module docstring for the rules.

    ``replan`` re-resolves a plan whose unpinned versions went stale (default: re-read the latest
    versions).
    """
    policy = policy or SubmissionPolicy()
    replan = replan or (lambda p: refresh_versions(hook, p))
    plan = snapshot_series(hook, plan)
    started = time.time()
    throttles = conflicts = attempts = sends = limit_waits = 0
    try:
        while True:
            attempts += 1
            if sends and policy.before_resend is not None:
                policy.before_resend()
            sends += 1
            if policy.before_send is not None:
                policy.before_send()
            try:
                response = hook.no_retry_conn.copy_image_set(**plan.request())
                _after_send(policy, False)
                return _accepted(plan, response, started, attempts, throttles)
            except (EndpointConnectionError, ConnectTimeoutError) as exc:
                reason = f"could not connect ({exc})"  # nothing was sent
            except HTTPClientError as exc:
                found = reconcile(hook, plan, started, policy)
                if found:
                    found.attempts, found.throttles = attempts, throttles
                    return found
                reason = f"the response was lost ({exc}) and no copy took effect"
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                message = exc.response.get("Error", {}).get("Message", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                throttled = code in THROTTLING_CODES or status == 429
                _after_send(policy, throttled)
                if throttled:
                    throttles += 1
                    if throttles > policy.max_throttle_retries:
                        raise CopySubmissionError(
                            code, f"still throttled after {throttles - 1} retries: {message}"
                        ) from exc
                    delay = policy.backoff(min(throttles, 6), policy.throttle_backoff_base_seconds)
                    log.info("CopyImageSet throttled; retrying in %.1fs (%d)", delay, throttles)
                    policy.sleep(delay)
                    attempts -= 1  # throttling is not a failed attempt: the quota decides the pace
                    continue
                if code == "ServiceQuotaExceededException" and is_frames_quota(message):
                    raise CopySubmissionError(code, message) from exc
                if code == "ServiceQuotaExceededException":
                    throttles += 1
                    limit_waits += 1
                    if limit_waits > policy.max_copies_limit_waits:
                        raise CopySubmissionError(
                            code, f"still over the copies in progress after {limit_waits - 1} waits: {message}"
                        ) from exc
                    attempts -= 1  # the copy did not take effect and was not wrong: it waits for room
                    if policy.copies_limit_reached is not None:
                        policy.copies_limit_reached(message)
                    else:
                        delay = policy.backoff(min(limit_waits, 6))
                        log.info("CopyImageSet over the copies in progress; retrying in %.1fs (%d)", delay, limit_waits)
                        policy.sleep(delay)
                    continue
                if code == "ConflictException":
                    conflicts += 1
                    plan, reason = _after_conflict(hook, plan, message, conflicts, policy, replan)
                elif status >= 500:
                    found = reconcile(hook, plan, started, policy)
                    if found:
                        found.attempts, found.throttles = attempts, throttles
                        return found
                    reason = f"{code} ({message}) and no copy took effect"
                else:
                    raise CopySubmissionError(code, message) from exc
            if attempts >= policy.max_attempts:
                raise CopySubmissionError("CopyNotAccepted", f"gave up after {attempts} attempts; the last: {reason}")
            delay = policy.backoff(attempts)
            log.warning(
                "CopyImageSet not accepted: %s; retrying in %.1fs (attempt %d of %d)",
                reason,
                delay,
                attempts,
                policy.max_attempts,
            )
            policy.sleep(delay)
    except CopySubmissionError as exc:
        exc.throttles = throttles  # sends throttled before it failed: resent, not failed attempts
        raise


def _after_send(policy: SubmissionPolicy, throttled: bool) -> None:
    if policy.after_send is not None:
        policy.after_send(throttled)


def _accepted(plan: CopyPlan, response: dict[str, Any], started: float, attempts: int, throttles: int) -> SubmittedCopy:
    destination = response["destinationImageSetProperties"]
    return SubmittedCopy(
        plan=plan,
        destination_image_set_id=destination["imageSetId"],
        destination_version_id=destination["latestVersionId"],
        submitted_at=started,
        source_image_set_arn=response["sourceImageSetProperties"].get("imageSetArn"),
        destination_image_set_arn=destination.get("imageSetArn"),
        attempts=attempts,
        throttles=throttles,
    )


def _after_conflict(
    hook: HealthImagingHook,
    plan: CopyPlan,
    message: str,
    conflicts: int,
    policy: SubmissionPolicy,
    replan: Callable[[CopyPlan], CopyPlan],
) -> tuple[CopyPlan, str]:
    """Explain a Conflict from the image sets' current state; returns the plan to try next and why."""
    source = hook.get_image_set(plan.datastore_id, plan.source_image_set_id)
    moved = []
    if source["versionId"] != plan.source_version_id:
        moved.append(
            (
                "source",
                plan.source_image_set_id,
                plan.source_version_id,
                source["versionId"],
                plan.source_version_pinned,
            )
        )
    locked = source["imageSetState"] == states.LOCKED
    if plan.destination_image_set_id:
        destination = hook.get_image_set(plan.datastore_id, plan.destination_image_set_id)
        locked = locked or destination["imageSetState"] == states.LOCKED
        if destination["versionId"] != plan.destination_version_id:
            moved.append(
                (
                    "destination",
                    plan.destination_image_set_id,
                    plan.destination_version_id,
                    destination["versionId"],
                    plan.destination_version_pinned,
                )
            )
    pinned = [m for m in moved if m[4]]
    if pinned:
        role, image_set, given, latest, _ = pinned[0]
        raise CopySubmissionError(
            "ConflictException",
            f"the pinned {role} version {given} of image set {image_set} is no longer the latest (now {latest}); "
            "pin the new version or leave the version unset to copy the latest",
        )
    if moved:
        if conflicts > policy.max_version_conflicts:
            raise CopySubmissionError(
                "ConflictException", f"the image sets kept changing ({conflicts} conflicts): {message}"
            )
        return replan(plan), "the latest version moved; re-resolved it"
    if locked:
        return plan, "an image set is locked by other work"
    if conflicts > policy.max_version_conflicts:
        raise CopySubmissionError("ConflictException", message)
    return plan, f"conflict ({message})"


def refresh_versions(hook: HealthImagingHook, plan: CopyPlan) -> CopyPlan:
    """The plan with its unpinned versions set to the latest ones."""
    changes: dict[str, Any] = {}
    if not plan.source_version_pinned:
        changes["source_version_id"] = hook.get_latest_version_id(plan.datastore_id, plan.source_image_set_id)
    if plan.destination_image_set_id and not plan.destination_version_pinned:
        changes["destination_version_id"] = hook.get_latest_version_id(plan.datastore_id, plan.destination_image_set_id)
    return replace(plan, **changes)


def reconcile(
    hook: HealthImagingHook, plan: CopyPlan, since: float, policy: SubmissionPolicy | None = None
) -> SubmittedCopy | None:
    """After an ambiguous failure: the copy that took effect for ``plan`` since ``since``, or None.

    Into a destination, the copy created exactly version ``destination_version_id + 1`` (the
    version is an optimistic-concurrency token). To a new image set, it is an image set of the
    first copied series created since ``since`` (other than the source); while the source is still
    LOCKED a copy of it is in flight, so the search waits for the source to unlock.
    """
    policy = policy or SubmissionPolicy()
    for attempt in range(policy.reconcile_attempts):
        if attempt:
            policy.sleep(policy.reconcile_delay_seconds)
        found = (
            _find_destination_version(hook, plan)
            if plan.destination_image_set_id
            else _find_new_copy(hook, plan, since)
        )
        if found is not None:
            image_set_id, version_id, arn = found
            log.warning(
                "CopyImageSet had taken effect despite the error: destination %s version %s", image_set_id, version_id
            )
            return SubmittedCopy(
                plan=plan,
                destination_image_set_id=image_set_id,
                destination_version_id=version_id,
                submitted_at=since,
                destination_image_set_arn=arn,
                reconciled=True,
            )
        if hook.get_image_set(plan.datastore_id, plan.source_image_set_id)["imageSetState"] != states.LOCKED:
            if plan.destination_image_set_id or attempt:
                return None
    return None


def _find_destination_version(hook: HealthImagingHook, plan: CopyPlan) -> tuple[str, str, str | None] | None:
    expected = str(int(plan.destination_version_id) + 1)
    for version in hook.list_image_set_versions(plan.datastore_id, plan.destination_image_set_id):
        status = version.get("ImageSetWorkflowStatus")
        if version["versionId"] == expected and status in states.COPY_PENDING_STATUSES | {
            states.COPIED,
            states.COPY_FAILED,
        }:
            return plan.destination_image_set_id, expected, None
    return None


def series_image_sets(
    hook: HealthImagingHook, datastore_id: str, series_uid: str, created_since: float | None = None
) -> list[dict[str, Any]]:
    """SearchImageSets summaries of the image sets holding a series (optionally created since a time)."""
    filters: list[dict[str, Any]] = [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series_uid}]}]
    if created_since is not None:
        filters.append(
            {
                "operator": "BETWEEN",
                "values": [{"createdAt": created_since}, {"createdAt": time.time() + CLOCK_SKEW_SECONDS}],
            }
        )
    paginator = hook.conn.get_paginator("search_image_sets")
    return [
        summary
        for page in paginator.paginate(datastoreId=datastore_id, searchCriteria={"filters": filters})
        for summary in page["imageSetsMetadataSummaries"]
    ]


def snapshot_series(hook: HealthImagingHook, plan: CopyPlan) -> CopyPlan:
    """The plan with the image sets its series already has, taken before a copy to a new image set."""
    if plan.destination_image_set_id or plan.first_series_uid is None or plan.preexisting_image_set_ids is not None:
        return plan
    existing = series_image_sets(hook, plan.datastore_id, plan.first_series_uid)
    return replace(plan, preexisting_image_set_ids=sorted(s["imageSetId"] for s in existing))


def _find_new_copy(hook: HealthImagingHook, plan: CopyPlan, since: float) -> tuple[str, str, str | None] | None:
    if plan.first_series_uid is None:
        return None
    if plan.preexisting_image_set_ids is not None:
        known = set(plan.preexisting_image_set_ids) | {plan.source_image_set_id}
        summaries = series_image_sets(hook, plan.datastore_id, plan.first_series_uid)
    else:  # no snapshot: fall back on creation time, which depends on the clocks agreeing
        known = {plan.source_image_set_id}
        summaries = series_image_sets(hook, plan.datastore_id, plan.first_series_uid, since - CLOCK_SKEW_SECONDS)
    candidates = sorted((s for s in summaries if s["imageSetId"] not in known), key=lambda s: s["createdAt"])
    for summary in candidates:
        image_set = hook.get_image_set(plan.datastore_id, summary["imageSetId"], "1")
        if image_set.get("imageSetWorkflowStatus") in states.COPY_PENDING_STATUSES | {
            states.COPIED,
            states.COPY_FAILED,
        }:
            return summary["imageSetId"], "1", image_set.get("imageSetArn")
    return None
