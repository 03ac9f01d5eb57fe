"""``python -m stack.init``: the ``airflow-init`` step of the stack, in Docker and as processes.

1. ``airflow db migrate`` on the metadata database (``[database] sql_alchemy_conn``);
2. the copy ledger: the database of the ``healthimaging_lineage`` connection is created on its
   PostgreSQL server if missing, with the ledger's and the shared rate limit's tables;
3. the login: with the simple auth manager, ``_AIRFLOW_WWW_USER_USERNAME`` gets the password
   ``_AIRFLOW_WWW_USER_PASSWORD`` in ``[core] simple_auth_manager_passwords_file`` (other users
   keep theirs).

Idempotent: run it again after an upgrade. Configuration comes from the environment only (the
compose file's ``x-airflow-common`` environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

LEDGER_CONN_ID = "healthimaging_lineage"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


def log(message: str) -> None:
    print(f"[airflow-init] {message}", flush=True)


def airflow_executable() -> list[str]:
    script = Path(sys.executable).with_name("airflow")
    return [str(script)] if script.exists() else ["airflow"]


def migrate(timeout: float = 600) -> None:
    started = time.monotonic()
    subprocess.run([*airflow_executable(), "db", "migrate"], check=True, timeout=timeout)
    log(f"metadata database migrated in {time.monotonic() - started:.1f}s")


def ledger_url():
    """The ledger's SQLAlchemy URL, from the ``healthimaging_lineage`` connection (None if it is not defined)."""
    from airflow.models.connection import Connection

    value = os.environ.get(f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}")
    if not value:
        return None
    conn = Connection.from_json(value, conn_id=LEDGER_CONN_ID) if value.lstrip().startswith("{") else \
        Connection(conn_id=LEDGER_CONN_ID, uri=value)
    _add_plugins_to_path()
    from healthimaging.ledger import url_from_connection

    return url_from_connection(conn)


def _add_plugins_to_path() -> None:
    from airflow.configuration import conf

    plugins = conf.get("core", "plugins_folder")
    if plugins and plugins not in sys.path:
        sys.path.append(plugins)


def create_ledger(url) -> None:
    """Create the ledger's database (PostgreSQL) if missing, then migrate its tables to the latest revision."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(url)
    if url.get_backend_name() == "postgresql" and url.database:
        server = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with server.connect() as db:
                exists = db.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                    {"name": url.database}).first()
                if not exists:
                    db.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
                    log(f"created the ledger database {url.database!r}")
                else:
                    log(f"the ledger database {url.database!r} exists")
        finally:
            server.dispose()
    from healthimaging.ledger import current_revision, engine_for

    engine = engine_for(url)
    log(f"ledger schema at revision {current_revision(engine)} in {engine.url.render_as_string(hide_password=True)}")
    engine.dispose()


def write_login() -> None:
    """Give ``_AIRFLOW_WWW_USER_USERNAME`` its password in the simple auth manager's passwords file."""
    from airflow.configuration import conf

    if conf.get("core", "auth_manager") != SIMPLE_AUTH_MANAGER:
        log("not the simple auth manager: create users with that auth manager's own tools")
        return
    username = os.environ.get("_AIRFLOW_WWW_USER_USERNAME", "airflow")
    password = os.environ.get("_AIRFLOW_WWW_USER_PASSWORD", "airflow")
    users = [u.split(":")[0] for u in conf.getlist("core", "simple_auth_manager_users")]
    if username not in users:
        raise SystemExit(f"[airflow-init] {username!r} is not in [core] simple_auth_manager_users ({users})")
    path = Path(conf.get("core", "simple_auth_manager_passwords_file", fallback="") or
                Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "simple_auth_manager_passwords.json.generated")
    path.parent.mkdir(parents=True, exist_ok=True)
    passwords = json.loads(path.read_text() or "{}") if path.exists() else {}
    passwords[username] = password
    path.write_text(json.dumps(passwords) + "\n")
    log(f"login {username!r} written to {path}")


def main() -> int:
    migrate()
    url = ledger_url()
    if url is None:
        log(f"no {LEDGER_CONN_ID} connection: the ledger falls back to SQLite under AIRFLOW_HOME")
    else:
        create_ledger(url)
    write_login()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
