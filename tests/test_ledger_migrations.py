"""The ledger's schema through Alembic: a new ledger, a ledger release 0.1.0 created (rows kept), first use by
several processes at once; on SQLite and PostgreSQL. The migrations and the tables the code uses agree."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from healthimaging.bulk import ledger as ledger_module
from healthimaging.bulk.ledger import (
    VERSION_TABLE,
    Ledger,
    current_revision,
    head_revision,
    leases,
    metadata,
    upgrade,
)
from tests import ledger_release_0_1_0 as release

POSTGRES_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/"


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request, tmp_path) -> Iterator[str]:
    """The URL of an empty database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        return
    name = f"hi_migration_{uuid.uuid4().hex[:12]}"
    server = sa.create_engine(f"{POSTGRES_SERVER}postgres", isolation_level="AUTOCOMMIT")
    try:
        with server.connect() as db:
            db.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - the CI machine has it
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    try:
        yield f"{POSTGRES_SERVER}{name}"
    finally:
        ledger_module._engines.pop(f"{POSTGRES_SERVER}{name}", None)
        with server.connect() as db:
            db.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            db.execute(sa.text(f'DROP DATABASE "{name}"'))
        server.dispose()


def schema_differences(engine: sa.Engine) -> list:
    """What Alembic's autogenerate finds between the migrated database and the tables the code declares."""
    with engine.connect() as db:
        context = MigrationContext.configure(db, opts={"version_table": VERSION_TABLE})
        return compare_metadata(context, metadata)


def test_a_new_ledger_is_migrated_to_the_tables_the_code_declares(fresh_url):
    engine = sa.create_engine(fresh_url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision() == "0005"
    assert schema_differences(engine) == []
    upgrade(engine)  # again: nothing to do
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_ledger_created_by_release_0_1_0_is_upgraded_and_keeps_its_rows(fresh_url):
    old = sa.create_engine(fresh_url)
    release.metadata.create_all(old)
    row = {
        "dag_id": "d",
        "run_id": "r",
        "manifest_uri": "m.csv",
        "manifest_sha256": "a" * 64,
        "row_number": 1,
        "source_image_set_id": "b" * 32,
        "status": "submitted",
        "claim": "engine-of-0.1.0",
        "force": False,
        "promote_to_primary": False,
        "attempts": 1,
        "updated_at": 1.0,
        "destination_image_set_id": "c" * 32,
        "destination_version_id": "1",
        "plan_json": "{}",
        "copy_key": "k",
    }
    with old.begin() as db:
        db.execute(release.copies.insert(), [row, {**row, "row_number": 2, "status": "succeeded", "claim": None}])
        db.execute(
            release.manifests.insert().values(
                manifest_uri="m.csv", manifest_sha256="a" * 64, dag_id="d", run_id="r", taken_at=1.0
            )
        )
        db.execute(release.buckets.insert().values(name="CopyImageSet", tokens=1.0, stamp=1.0, rate=0.25, burst=1.0))
    old.dispose()

    ledger = Ledger(ledger_module.engine_for(fresh_url))  # first use: migrates

    assert current_revision(ledger.engine) == head_revision()
    assert schema_differences(ledger.engine) == []
    rows = ledger.run_rows("d", "r")
    assert [
        (r["row_number"], r["status"], r["destination_image_set_id"], r["sent_at"], r["throttles"]) for r in rows
    ] == [
        (1, "submitted", "c" * 32, None, 0),
        (2, "succeeded", "c" * 32, None, 0),
    ]  # throttles: its server default gives the rows already there 0
    assert ledger.take_manifest("m.csv", "a" * 64, "d", "r") and not ledger.take_manifest(
        "m.csv", "a" * 64, "d", "other"
    )
    # The row the 0.1.0 engine held has no lease in the new schema: it is an orphan, taken over and reconciled.
    ledger.acquire_lease("new-engine")
    assert ledger.take_over(rows[0], "new-engine")["claim"] == "new-engine"
    with ledger.engine.connect() as db:
        assert db.execute(sa.select(sa.func.count()).select_from(leases)).scalar_one() == 1


def _first_use(url: str, results) -> None:
    try:
        upgrade(sa.create_engine(url))
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_using_a_new_ledger_at_once_migrate_it_once(fresh_url):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_first_use, args=(fresh_url, results)) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == ["ok"] * 4
    engine = sa.create_engine(fresh_url)
    assert current_revision(engine) == head_revision() and schema_differences(engine) == []
    with engine.connect() as db:
        assert db.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1
    engine.dispose()


def test_the_migrations_can_be_undone_to_the_release_0_1_0_schema(fresh_url):
    engine = sa.create_engine(fresh_url)
    upgrade(engine)
    from alembic import command

    with engine.begin() as db:
        command.downgrade(ledger_module._alembic_config(db), "0001")
    assert current_revision(engine) == "0001"
    assert "healthimaging_engine_leases" not in sa.inspect(engine).get_table_names()
    columns = {c["name"] for c in sa.inspect(engine).get_columns("healthimaging_copy_ledger")}
    assert "sent_at" not in columns and "throttles" not in columns
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("healthimaging_copy_ledger")}
    assert "ix_healthimaging_ledger_label" not in indexes
    missing = {
        d[1].name if hasattr(d[1], "name") else str(d) for d in schema_differences(engine) if isinstance(d, tuple)
    }
    assert "healthimaging_engine_leases" in missing  # the comparison sees what 0002 adds
    upgrade(engine)
    assert schema_differences(engine) == []
    engine.dispose()


def test_a_ledger_with_some_of_the_new_pieces_already_there_is_completed(fresh_url):
    """A ledger that a development build created from the declarations (sent_at and the leases table, no
    version table) is adopted too: the migrations create only what is missing."""
    engine = sa.create_engine(fresh_url)
    release.metadata.create_all(engine)
    with engine.begin() as db:
        db.execute(sa.text("ALTER TABLE healthimaging_copy_ledger ADD COLUMN sent_at FLOAT"))
    leases.create(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision() and schema_differences(engine) == []
    engine.dispose()
