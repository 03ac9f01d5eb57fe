"""When to look at a copy in flight again: soon after it completes, within GetImageSet's quota.

A copy holds one of the data store's copies in progress (100 by default) until the engine notices that it
completed, so every second between completion and the poll that sees it is a second of that limit lost:
with long copies, where that limit binds, a fixed 5 s poll costs a few percent of the makespan. And a
copy's length is not known in advance (seconds for a small series, many minutes for a large one), but the
copies of one manifest are alike enough that the ones already done predict the rest.

:class:`CopyDurations` keeps the durations observed lately and polls a copy at the moments they suggest
(their quantiles, measured from the copy's acceptance), then, past the longest one seen, at a share of
the time it has run. Before any copy has completed it polls at a growing interval. :class:`PollBudget`
spreads the polls of every engine of the deployment within a share of GetImageSet's quota (25/s by
default, per account and region: "AWS HealthImaging endpoints and quotas",
https://docs.aws.amazon.com/general/latest/gr/healthimaging.html).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

#: The quantiles of the observed durations at which a copy is polled.
POLL_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
#: Polled this long after the predicted end: the service's clock and ours, and its own scheduling.
POLL_MARGIN_SECONDS = 0.05
#: The shortest wait between two polls of one copy.
MIN_POLL_SECONDS = 0.25
#: Past the longest copy seen (or before any), polls come after this share of the time the copy has run.
OVERDUE_SHARE = 0.1
#: The share of GetImageSet's quota the polls of the deployment use; the rest is for planning and verifying.
POLL_QUOTA_SHARE = 0.5


class CopyDurations:
    """The durations of the last ``window`` copies this engine saw complete, and the poll times they give."""

    def __init__(self, max_interval: float, window: int = 64) -> None:
        self.max_interval = max_interval
        self._recent: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []

    def observe(self, seconds: float) -> None:
        if seconds < 0:
            return
        if len(self._recent) == self._recent.maxlen:
            self._sorted.remove(self._recent[0])
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)

    def __len__(self) -> int:
        return len(self._sorted)

    def next_poll(self, running: float) -> float:
        """Seconds from now to the next poll of a copy accepted ``running`` seconds ago."""
        if self._sorted:
            last = len(self._sorted) - 1
            for q in POLL_QUANTILES:
                moment = self._sorted[round(q * last)] + POLL_MARGIN_SECONDS
                if moment - running >= MIN_POLL_SECONDS / 2:
                    return max(moment - running, MIN_POLL_SECONDS / 2)
        return min(max(OVERDUE_SHARE * running, MIN_POLL_SECONDS), self.max_interval)


def copy_seconds(image_set: dict[str, Any], accepted_at: float, noticed_at: float) -> float:
    """How long a completed copy took: the service's own createdAt → updatedAt of the destination version
    when that is plausible (it is one clock, so no skew), else the time from its acceptance to now, an upper
    bound. (A version's createdAt could be the image set's, far earlier, for a copy into an existing set.)"""
    bound = max(noticed_at - accepted_at, 0.0)
    created, updated = image_set.get("createdAt"), image_set.get("updatedAt")
    if isinstance(created, datetime) and isinstance(updated, datetime):
        service = (updated - created).total_seconds()
        if 0 <= service <= bound:
            return service
    return bound


class PollBudget:
    """A token bucket in memory for one engine's GetImageSet polls: its share of :data:`POLL_QUOTA_SHARE`
    of the quota, split evenly between the engines holding a lease (set with :meth:`share`)."""

    def __init__(self, quota_per_second: float, clock: Callable[[], float]) -> None:
        self.quota = quota_per_second
        self.clock = clock
        self.rate = quota_per_second * POLL_QUOTA_SHARE
        self.tokens = 1.0
        self.stamp = clock()

    def share(self, engines: int) -> None:
        """Split the budget between ``engines`` (at least this one)."""
        self.rate = self.quota * POLL_QUOTA_SHARE / max(engines, 1)

    def take(self) -> float:
        """0.0 and a poll spent, or the seconds until one may be made."""
        now = self.clock()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
