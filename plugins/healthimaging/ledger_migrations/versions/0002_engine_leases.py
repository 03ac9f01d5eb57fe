"""Engine leases (who holds rows in flight, until when) and the ledger's ``sent_at``.

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
    op.add_column("healthimaging_copy_ledger", sa.Column("sent_at", sa.Float))
    op.create_index("ix_healthimaging_ledger_claim", "healthimaging_copy_ledger", ["claim", "status"])
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
