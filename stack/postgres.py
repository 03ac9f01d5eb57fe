"""Throwaway databases on the machine's PostgreSQL (trust auth), named for the process that creates them so
that the databases of a killed run can be found and dropped later."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable

#: The roles tried, in order: a trust-auth server lets the first one that exists in.
POSTGRES_USERS = ("postgres", "root")


def database_name(prefix: str) -> str:
    """``<prefix><pid>_<random>``: the pid says whose it is (see :meth:`TemporaryDatabases.drop_orphans`)."""
    return f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"


class TemporaryDatabases:
    """Databases whose names start with ``prefix``, created and dropped on ``host:port`` as the first of
    ``users`` that can connect."""

    def __init__(
        self, prefix: str, host: str = "127.0.0.1", port: int = 5432, users: Iterable[str] = POSTGRES_USERS
    ) -> None:
        self.prefix, self.host, self.port, self.users = prefix, host, port, tuple(users)
        self.user: str | None = None
        self.owned: list[str] = []

    def role(self) -> str:
        """The first of ``users`` PostgreSQL lets in; ConnectionError (naming each refusal) if none."""
        import psycopg2

        errors = []
        for user in self.users:
            try:
                psycopg2.connect(
                    host=self.host, port=self.port, user=user, dbname="postgres", connect_timeout=3
                ).close()
            except psycopg2.Error as exc:
                errors.append(f"{user}: {exc}".strip())
                continue
            self.user = user
            return user
        raise ConnectionError(f"no usable PostgreSQL on {self.host}:{self.port}: " + "; ".join(errors))

    def _connect(self):
        import psycopg2

        conn = psycopg2.connect(
            host=self.host, port=self.port, user=self.user or self.role(), dbname="postgres", connect_timeout=5
        )
        conn.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
        return conn

    def create(self, name: str) -> None:
        """Drop the orphans, then create ``name`` (dropped by :meth:`drop_all`)."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                self.drop_orphans(cur)
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        self.owned.append(name)

    def adopt(self, name: str) -> None:
        """Drop ``name`` too in :meth:`drop_all` (a database another process creates, e.g. airflow-init)."""
        self.owned.append(name)

    def drop_orphans(self, cur) -> None:
        """Drop the databases of this prefix whose creating process is gone (killed before it cleaned up)."""
        import psutil

        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (self.prefix + "%",))
        for (name,) in cur.fetchall():
            pid = name[len(self.prefix) :].split("_", 1)[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                with contextlib.suppress(Exception):
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        """Drop every database created or adopted here (their connections are closed first: FORCE)."""
        if not self.owned:
            return
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                for name in self.owned:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()
        self.owned = []
