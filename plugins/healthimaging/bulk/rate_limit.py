"""One CopyImageSet rate limit shared by every worker and every DAG run of a deployment.

The quota is per account and region, so a limiter in one process is not enough: the bucket lives
in a table of the ledger database (PostgreSQL in a deployment), and a token is taken with a single
atomic UPDATE, so concurrent workers never both spend the last token. On PostgreSQL the refill is
computed with the database's clock, so workers' clocks need not agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from healthimaging.bulk.ledger import buckets, db_now
from healthimaging.bulk.settings import DEFAULT_BURST, DEFAULT_COPIES_PER_SECOND


class SharedTokenBucket:
    """A token bucket in a database row: ``rate`` tokens a second, at most ``burst`` stored."""

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
        self.taken_stamp: float | None = None  # the bucket's stamp when this object last took a token
        self._ensure_row()

    def _now(self):
        return db_now(self.engine)

    def _ensure_row(self) -> None:
        with self.engine.begin() as db:
            row = db.execute(sa.select(buckets.c.rate, buckets.c.burst).where(buckets.c.name == self.name)).first()
            if row is None:
                try:
                    now = db.execute(sa.select(self._now())).scalar_one()
                    db.execute(
                        buckets.insert().values(
                            name=self.name, tokens=self.burst, stamp=now, rate=self.rate, burst=self.burst
                        )
                    )
                except sa.exc.IntegrityError:  # another worker created it first
                    pass
            elif (row.rate, row.burst) != (self.rate, self.burst):
                # The configured limit changed: every user of the bucket follows the latest setting.
                db.execute(buckets.update().where(buckets.c.name == self.name).values(rate=self.rate, burst=self.burst))

    def try_acquire(self) -> float:
        """Take a token if one is there: returns 0.0, else the seconds until one will be."""
        now = self._now()
        elapsed = sa.case((now > buckets.c.stamp, now - buckets.c.stamp), else_=0.0)
        refilled = buckets.c.tokens + elapsed * buckets.c.rate
        available = sa.case((refilled > buckets.c.burst, buckets.c.burst), else_=refilled)
        with self.engine.begin() as db:
            taken = db.execute(
                buckets.update()
                .where(buckets.c.name == self.name, available >= 1.0)
                .values(tokens=available - 1.0, stamp=sa.case((now > buckets.c.stamp, now), else_=buckets.c.stamp))
                .returning(buckets.c.stamp)
            ).first()
            if taken is not None:
                self.taken_stamp = taken.stamp
                return 0.0
            ahead = sa.case((buckets.c.stamp > now, buckets.c.stamp - now), else_=0.0)  # pushed back: see push_back
            row = db.execute(
                sa.select(available.label("available"), ahead.label("ahead"), buckets.c.rate).where(
                    buckets.c.name == self.name
                )
            ).one()
        # A millisecond over the exact time: a wake-up at the exact time can find 0.9999999 of a token.
        return row.ahead + max((1.0 - row.available) / row.rate, 0.0) + 0.001

    def push_back(self, seconds: float) -> None:
        """Start the refill after the token this object took last ``seconds`` later.

        For a call that went out that long after its token was stamped (thread scheduling, the GIL,
        building the request): the service counts from the call's arrival, so the next token must too,
        or the next call can arrive less than one interval after this one and be throttled. Does nothing
        once another token has been taken since (the stamp moved on).
        """
        stamp, self.taken_stamp = self.taken_stamp, None
        if stamp is None or seconds <= 0:
            return
        with self.engine.begin() as db:
            db.execute(
                buckets.update()
                .where(buckets.c.name == self.name, buckets.c.stamp == stamp)
                .values(stamp=buckets.c.stamp + seconds)
            )

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
