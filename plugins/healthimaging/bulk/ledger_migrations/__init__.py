"""Alembic migrations of the ledger's tables (the copy ledger, manifests taken, the rate limit, engine leases).

Run by :func:`healthimaging.bulk.ledger.upgrade` (on a ledger's first use in a process, and by the stack's init
step). The version is kept in ``healthimaging_ledger_version``, not Alembic's default ``alembic_version``,
so that a ledger in Airflow's own metadata database cannot clash with Airflow's migrations.
"""
