"""Engine leases (who holds rows in flight, until when) and the ledger's ``sent_at``.

Each piece is created only if missing: a ledger that development builds between 0.1.0 and this revision
created from the tables' declarations (before migrations existed) may already have some of them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "sent_at" not in {c["name"] for c in inspector.get_columns("healthimaging_copy_ledger")}:
        op.add_column("healthimaging_copy_ledger", sa.Column("sent_at", sa.Float))
    if "ix_healthimaging_ledger_claim" not in {i["name"] for i in inspector.get_indexes("healthimaging_copy_ledger")}:
        op.create_index("ix_healthimaging_ledger_claim", "healthimaging_copy_ledger", ["claim", "status"])
    if "healthimaging_engine_leases" in inspector.get_table_names():
        if "ix_healthimaging_leases_expires" not in {
            i["name"] for i in inspector.get_indexes("healthimaging_engine_leases")
        }:
            op.create_index("ix_healthimaging_leases_expires", "healthimaging_engine_leases", ["expires_at"])
        return
    op.create_table(
        "healthimaging_engine_leases",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("batch", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("renewed_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_healthimaging_leases_expires", "healthimaging_engine_leases", ["expires_at"])


def downgrade() -> None:
    op.drop_table("healthimaging_engine_leases")
    op.drop_index("ix_healthimaging_ledger_claim", "healthimaging_copy_ledger")
    with op.batch_alter_table("healthimaging_copy_ledger") as batch:
        batch.drop_column("sent_at")
