"""One CopyImageSet rate limit shared by every worker and every DAG run of a deployment.

The quota is per account and region, so a limiter in one process is not enough: the bucket lives
in a table of the ledger database (PostgreSQL in a deployment), and a token is taken with a single
atomic UPDATE, so concurrent workers never both spend the last token. On PostgreSQL the refill is
computed with the database's clock, so workers' clocks need not agree.

The rate adapts (additive increase, multiplicative decrease, as TCP's congestion control): the configured rate
is the bucket's ``ceiling``. When an engine sees sustained throttling (:class:`ThrottleWatch`) it lowers the
shared rate in proportion to the share of sends throttled, at most once per :data:`DECREASE_COOLDOWN_SECONDS`
across the deployment; while nobody lowers it, every :data:`INCREASE_PERIOD_SECONDS` the rate climbs back by
:data:`INCREASE_SHARE` of the ceiling, in the same UPDATE that takes a token. A ``copies_per_second`` set
above the account's quota so settles near the quota, for every worker at once, instead of being throttled for
the whole run. A bucket whose configured rate or burst changes starts again from the new ceiling; one
configured as before keeps the rate found so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from healthimaging.bulk.ledger import BUCKET_CEILING, buckets, db_now
from healthimaging.bulk.settings import DEFAULT_BURST, DEFAULT_COPIES_PER_SECOND

#: Sustained throttling lowers the shared rate by half the share of sends throttled, by a tenth at least
#: and by half at most (a rate twice the quota, half its sends throttled, comes down by a quarter at once)...
MIN_DECREASE = 0.1
MAX_DECREASE = 0.5
#: ...at most once in this many seconds (deployment-wide), so that the sends of one burst of throttling,
#: seen by several engines, lower it once and the lower rate has time to show.
DECREASE_COOLDOWN_SECONDS = 1.0
#: Without a decrease for this long, the rate climbs by INCREASE_SHARE of the ceiling (0.5% every 5 s: the
#: rate found stays within a few percent of the quota, probing above it about once a minute).
INCREASE_PERIOD_SECONDS = 5.0
INCREASE_SHARE = 0.005
#: The rate never goes below the AWS default quota (or the ceiling, if that is lower).
RATE_FLOOR = DEFAULT_COPIES_PER_SECOND
#: The bucket holds up to ``burst`` plus this share of a token: a token taken a little late (a wake-up, a
#: database answer) leaves the next one due as if it had been on time, so that such lateness does not add
#: up over a run. Calls of one process never come closer than an interval anyway (the engine's SendSpacing).
BURST_SLACK = 0.1


class SharedTokenBucket:
    """A token bucket in a database row: at most ``rate`` tokens a second (the ceiling; lowered while the
    service throttles, see the module docstring), at most ``burst`` stored."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        rate: float = DEFAULT_COPIES_PER_SECOND,
        burst: float = DEFAULT_BURST,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.engine = engine
        self.name = name
        self.rate = float(rate)
        self.burst = float(burst)
        self.sleep = sleep
        self.last_rate = self.rate  # the shared rate when this object last took a token
        self._ensure_row()

    def _now(self):
        return db_now(self.engine)

    def _ensure_row(self) -> None:
        with self.engine.begin() as db:
            row = db.execute(sa.select(buckets.c.ceiling, buckets.c.burst).where(buckets.c.name == self.name)).first()
            if row is None:
                try:
                    now = db.execute(sa.select(self._now())).scalar_one()
                    db.execute(
                        buckets.insert().values(
                            name=self.name,
                            tokens=self.burst,
                            stamp=now,
                            rate=self.rate,
                            ceiling=self.rate,
                            burst=self.burst,
                        )
                    )
                except sa.exc.IntegrityError:  # another worker created it first
                    pass
            elif (row.ceiling, row.burst) != (self.rate, self.burst):
                # The configured limit changed: every user of the bucket follows the latest setting.
                db.execute(
                    buckets.update()
                    .where(buckets.c.name == self.name)
                    .values(rate=self.rate, ceiling=self.rate, burst=self.burst, decreased_at=None, increased_at=None)
                )

    def try_acquire(self) -> float:
        """Take a token if one is there: returns 0.0, else the seconds until one will be."""
        now = self._now()
        elapsed = sa.case((now > buckets.c.stamp, now - buckets.c.stamp), else_=0.0)
        refilled = buckets.c.tokens + elapsed * buckets.c.rate
        capacity = buckets.c.burst + BURST_SLACK
        available = sa.case((refilled > capacity, capacity), else_=refilled)
        ceiling = BUCKET_CEILING
        last_moved = sa.func.coalesce(
            sa.case(
                (buckets.c.increased_at > buckets.c.decreased_at, buckets.c.increased_at), else_=buckets.c.decreased_at
            ),
            buckets.c.increased_at,
            buckets.c.decreased_at,
        )
        climb = sa.and_(buckets.c.rate < ceiling, last_moved.is_not(None), now - last_moved >= INCREASE_PERIOD_SECONDS)
        climbed = buckets.c.rate + ceiling * INCREASE_SHARE
        with self.engine.begin() as db:
            taken = db.execute(
                buckets.update()
                .where(buckets.c.name == self.name, available >= 1.0)
                .values(
                    tokens=available - 1.0,
                    stamp=sa.case((now > buckets.c.stamp, now), else_=buckets.c.stamp),
                    rate=sa.case((climb, sa.case((climbed > ceiling, ceiling), else_=climbed)), else_=buckets.c.rate),
                    increased_at=sa.case((climb, now), else_=buckets.c.increased_at),
                )
                .returning(buckets.c.rate)
            ).first()
            if taken is not None:
                self.last_rate = taken.rate
                return 0.0
            row = db.execute(
                sa.select(available.label("available"), buckets.c.rate).where(buckets.c.name == self.name)
            ).one()
        # A millisecond over the exact time: a wake-up at the exact time can find 0.9999999 of a token.
        return max((1.0 - row.available) / row.rate, 0.0) + 0.001

    def slow_down(self, throttled_share: float = 0.0) -> float | None:
        """Lower the shared rate by half ``throttled_share`` (the share of recent sends throttled, see
        :data:`MIN_DECREASE`), never under :data:`RATE_FLOOR`, unless it was lowered less than
        :data:`DECREASE_COOLDOWN_SECONDS` ago; returns the new rate, or None if unchanged."""
        now = self._now()
        floor = min(RATE_FLOOR, self.rate)
        lowered = buckets.c.rate * (1.0 - min(max(throttled_share / 2, MIN_DECREASE), MAX_DECREASE))
        with self.engine.begin() as db:
            row = db.execute(
                buckets.update()
                .where(
                    buckets.c.name == self.name,
                    buckets.c.rate > floor,
                    sa.or_(buckets.c.decreased_at.is_(None), now - buckets.c.decreased_at >= DECREASE_COOLDOWN_SECONDS),
                )
                .values(rate=sa.case((lowered < floor, floor), else_=lowered), decreased_at=now)
                .returning(buckets.c.rate)
            ).first()
        return None if row is None else row.rate

    def acquire(self, timeout: float | None = None) -> float:
        """Wait for a token; returns the seconds waited. Raises TimeoutError after ``timeout`` seconds."""
        started = time.monotonic()
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return time.monotonic() - started
            if timeout is not None and time.monotonic() - started + wait > timeout:
                raise TimeoutError(f"no CopyImageSet token from {self.name!r} within {timeout:.0f}s")
            self.sleep(min(wait, 5.0))


class ThrottleWatch:
    """Tells sustained throttling from the odd throttled send: true when at least ``threshold`` of the last
    ``window`` sends of one engine were throttled. A send that arrives a hair early at a bucket paced to
    the quota is throttled now and then (about 1 in 1,000 here) and must not lower the rate; a rate set
    above the quota throttles a large share of sends and is caught within a few of them."""

    def __init__(self, window: int = 20, threshold: int = 3) -> None:
        self.window = window
        self.threshold = threshold
        self._outcomes: list[bool] = []  # True: throttled

    def sent(self, throttled: bool) -> float | None:
        """Record one send; when throttling is sustained, the share of the sends seen that were throttled (the
        window then starts afresh), else None."""
        self._outcomes.append(throttled)
        del self._outcomes[: -self.window]
        # a whole window first: three throttles clustered in a few sends are jitter as often as not
        if len(self._outcomes) == self.window and sum(self._outcomes) >= self.threshold:
            share = sum(self._outcomes) / len(self._outcomes)
            self._outcomes.clear()
            return share
        return None
