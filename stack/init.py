"""``python -m stack.init``: the ``airflow-init`` step of the stack, in Docker and as processes.

1. the Fernet key: ``AIRFLOW_FERNET_KEY`` if given, else one generated once, in the file that
   ``AIRFLOW__CORE__FERNET_KEY_CMD`` (``cat <file>``) reads for every Airflow component; first, because
   nothing can read Airflow's configuration before that file exists;
2. ``airflow db migrate`` on the metadata database (``[database] sql_alchemy_conn``);
3. the copy ledger: the database of the ``healthimaging_ledger`` connection is created on its
   PostgreSQL server if missing, with the ledger's and the shared rate limit's tables;
4. the login: with the simple auth manager, ``_AIRFLOW_WWW_USER_USERNAME`` gets the password
   ``_AIRFLOW_WWW_USER_PASSWORD`` if given, else keeps the one it has, else gets a generated one, in
   ``[core] simple_auth_manager_passwords_file`` (other users keep theirs). The password is never
   printed: the log says which file holds it and how to read it.

Credential files are written owner-only (mode 0600) and atomically (a 0600 temporary file renamed over
the old one), which also fixes the mode of a file left readable by others.

Idempotent: run it again after an upgrade; generated secrets are kept. Configuration comes from the
environment only (the compose file's ``x-airflow-common`` environment).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from base64 import urlsafe_b64encode
from collections.abc import Mapping
from pathlib import Path

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PRIVATE_MODE = 0o600
FERNET_KEY_CMD = "AIRFLOW__CORE__FERNET_KEY_CMD"
FERNET_KEY_VAR = "AIRFLOW__CORE__FERNET_KEY"
#: The image's AIRFLOW_HOME (stack.compose.IMAGE_HOME; not imported, so that this module loads nothing).
IMAGE_HOME = "/opt/airflow"


class InitError(SystemExit):
    """A configuration airflow-init refuses, with what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(f"[airflow-init] {message}")


def log(message: str) -> None:
    print(f"[airflow-init] {message}", flush=True)


# ------------------------------------------------------------------------------------ private files


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only, atomically: ``path`` is either
    the old file or the complete new one, and never readable by others, not even while it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(descriptor, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, PRIVATE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make_private(path: Path) -> None:
    """Give an existing credential file mode 0600, saying so if it was readable by others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != PRIVATE_MODE:
        path.chmod(PRIVATE_MODE)
        log(f"{path} was mode {mode:04o}; now {PRIVATE_MODE:04o} (owner only)")


def read_command(path: Path) -> str:
    """How a user reads ``path``: in the compose stack, through the api-server's container."""
    if path.as_posix().startswith(IMAGE_HOME + "/"):
        on_host = "." + path.as_posix()[len(IMAGE_HOME) :]
        return f"docker compose exec airflow-apiserver cat {path} (on the host: cat {on_host})"
    return f"cat {shlex.quote(str(path))}"


# ----------------------------------------------------------------------------------------- Fernet key


def generate_fernet_key() -> str:
    """A Fernet key (what ``cryptography.fernet.Fernet.generate_key`` returns), from the standard library."""
    return urlsafe_b64encode(os.urandom(32)).decode()


def check_fernet_key(key: str, source: str) -> None:
    """Raise :class:`InitError` unless ``key`` is a Fernet key or a comma-separated list of them (rotation)."""
    from cryptography.fernet import Fernet

    for part in key.split(","):
        try:
            Fernet(part.strip().encode())
        except (ValueError, TypeError) as exc:
            raise InitError(
                f"{source} is not a valid Fernet key ({exc}): 32 url-safe base64-encoded bytes, e.g. "
                "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
            ) from None


def fernet_key_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """The file ``AIRFLOW__CORE__FERNET_KEY_CMD`` reads (it must be ``cat <file>``); None when it is not set."""
    command = env.get(FERNET_KEY_CMD)
    if not command:
        return None
    words = shlex.split(command)
    if len(words) != 2 or words[0] != "cat":
        raise InitError(f"{FERNET_KEY_CMD} must be 'cat <file>' (the file airflow-init writes), got {command!r}")
    return Path(words[1])


def write_fernet_key(env: Mapping[str, str] = os.environ) -> None:
    """Put the Fernet key in the key file: ``AIRFLOW_FERNET_KEY`` if given, else the file's own, else a new one."""
    if FERNET_KEY_VAR in env:
        if not env[FERNET_KEY_VAR]:
            raise InitError(
                f"{FERNET_KEY_VAR} is set but empty: Airflow would ignore {FERNET_KEY_CMD} and store "
                "connection passwords unencrypted. Remove it (set AIRFLOW_FERNET_KEY in .env instead)."
            )
        log(f"{FERNET_KEY_VAR} is set: Airflow uses it, no key file is written")
        return
    path = fernet_key_file(env)
    if path is None:
        log(f"neither {FERNET_KEY_VAR} nor {FERNET_KEY_CMD} is set: connection passwords will be stored unencrypted")
        return
    given = env.get("AIRFLOW_FERNET_KEY", "").strip()
    current = path.read_text().strip() if path.exists() else ""
    if given:
        check_fernet_key(given, "AIRFLOW_FERNET_KEY")
        if current and current != given:
            log(
                f"the key in {path} is replaced by AIRFLOW_FERNET_KEY: what the old key encrypted cannot be read "
                "unless AIRFLOW_FERNET_KEY lists it after the new one (new,old), see `airflow rotate-fernet-key`"
            )
        if current != given:
            write_private_file(path, given)
        else:
            make_private(path)
        log(f"Fernet key from AIRFLOW_FERNET_KEY, in {path}")
    elif current:
        check_fernet_key(current, str(path))
        make_private(path)
        log(f"Fernet key kept in {path}")
    else:
        write_private_file(path, generate_fernet_key())
        log(
            f"Fernet key generated in {path} (mode 0600; back it up: without it, stored connection passwords "
            "cannot be read)"
        )


# ----------------------------------------------------------------------------------- database, ledger


def airflow_executable() -> list[str]:
    script = Path(sys.executable).with_name("airflow")
    return [str(script)] if script.exists() else ["airflow"]


def migrate(timeout: float = 600) -> None:
    started = time.monotonic()
    subprocess.run([*airflow_executable(), "db", "migrate"], check=True, timeout=timeout)
    log(f"metadata database migrated in {time.monotonic() - started:.1f}s")


def ledger_url():
    """The ledger's SQLAlchemy URL, from the ``healthimaging_ledger`` connection (None if it is not defined)."""
    from airflow.models.connection import Connection

    _add_plugins_to_path()
    from healthimaging.bulk.ledger import connection_from_environment, url_from_connection

    found = connection_from_environment()
    if found is None:
        return None
    conn_id, value = found
    conn = (
        Connection.from_json(value, conn_id=conn_id)
        if value.lstrip().startswith("{")
        else Connection(conn_id=conn_id, uri=value)
    )
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
                exists = db.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
                ).first()
                if not exists:
                    db.execute(sa.text(f'CREATE DATABASE "{url.database}"'))
                    log(f"created the ledger database {url.database!r}")
                else:
                    log(f"the ledger database {url.database!r} exists")
        finally:
            server.dispose()
    from healthimaging.bulk.ledger import current_revision, engine_for

    engine = engine_for(url)
    log(f"ledger schema at revision {current_revision(engine)} in {engine.url.render_as_string(hide_password=True)}")
    engine.dispose()


# ---------------------------------------------------------------------------------------------- login


def passwords_file() -> Path:
    """The simple auth manager's passwords file (``[core] simple_auth_manager_passwords_file``)."""
    from airflow.configuration import conf

    configured = conf.get("core", "simple_auth_manager_passwords_file", fallback="")
    if configured:
        return Path(configured)
    return (
        Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "simple_auth_manager_passwords.json.generated"
    )


def read_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        passwords = json.loads(path.read_text() or "{}")
    except ValueError as exc:
        raise InitError(f"{path} is not the simple auth manager's JSON ({exc}): fix or delete it") from None
    if not isinstance(passwords, dict):
        raise InitError(f"{path} must hold a JSON object {{user: password}}: fix or delete it")
    return passwords


def choose_password(username: str, passwords: Mapping[str, str], given: str) -> tuple[str, str]:
    """``(password, how it was chosen)``: the given one, else the user's current one, else a new one."""
    if given:
        return given, "set from _AIRFLOW_WWW_USER_PASSWORD"
    if passwords.get(username):
        return passwords[username], "kept"
    return secrets.token_urlsafe(24), "generated"


def write_login() -> None:
    """Give ``_AIRFLOW_WWW_USER_USERNAME`` its password in the simple auth manager's passwords file."""
    from airflow.configuration import conf

    if conf.get("core", "auth_manager") != SIMPLE_AUTH_MANAGER:
        log("not the simple auth manager: create users with that auth manager's own tools")
        return
    username = os.environ.get("_AIRFLOW_WWW_USER_USERNAME") or "airflow"
    users = [u.split(":")[0] for u in conf.getlist("core", "simple_auth_manager_users")]
    if username not in users:
        raise InitError(f"{username!r} is not in [core] simple_auth_manager_users ({users})")
    path = passwords_file()
    passwords = read_passwords(path)
    password, how = choose_password(username, passwords, os.environ.get("_AIRFLOW_WWW_USER_PASSWORD", ""))
    passwords[username] = password
    # Rewritten even when unchanged: the new file is 0600 whatever the old one was.
    write_private_file(path, json.dumps(passwords) + "\n")
    log(f"login {username!r}: password {how}, in {path} (mode 0600). Read it with: {read_command(path)}")


def main() -> int:
    write_fernet_key()
    migrate()
    url = ledger_url()
    if url is None:
        log("no healthimaging_ledger connection: the ledger falls back to SQLite under AIRFLOW_HOME")
    else:
        create_ledger(url)
    write_login()
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
