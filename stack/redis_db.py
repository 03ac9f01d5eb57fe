"""A Redis database of the machine's server for one stack's Celery broker: claimed (1-15; 0 is left to others),
marked with the claiming pid so that a killed stack's database is recognised and flushed, flushed on release."""

from __future__ import annotations

import os

OWNER_KEY = "healthimaging-stack:owner"


class RedisDatabase:
    """One claimed database number on ``host:port`` (:meth:`claim`, then :meth:`release`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379) -> None:
        self.host, self.port = host, port
        self.number: int | None = None

    def _client(self, db: int):
        import redis

        return redis.Redis(host=self.host, port=self.port, db=db, socket_timeout=5)

    def claim(self) -> int:
        """A database nobody uses, marked as this process's; RuntimeError if all are taken."""
        import psutil

        for db in range(1, 16):
            client = self._client(db)
            try:
                owner = client.get(OWNER_KEY)
                if owner is not None and owner.decode().isdigit() and not psutil.pid_exists(int(owner)):
                    client.flushdb()  # left by a stack that was killed
                if client.set(OWNER_KEY, str(os.getpid()), nx=True):
                    if client.dbsize() == 1:
                        self.number = db
                        return db
                    client.delete(OWNER_KEY)  # someone else's data: leave it alone
            finally:
                client.close()
        raise RuntimeError(f"no free Redis database on {self.host}:{self.port}")

    def release(self) -> None:
        """Flush the claimed database (the broker's queues and the mark). Safe to call twice."""
        if self.number is None:
            return
        client = self._client(self.number)
        try:
            client.flushdb()
        finally:
            client.close()
        self.number = None
