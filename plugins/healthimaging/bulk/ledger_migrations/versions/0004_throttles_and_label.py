"""Throttled CopyImageSet sends per row (``throttles``, 0 on the rows already there) and an index on ``label``
for the dashboard's lineage look-up by label.

Each piece is created only if missing, like 0002's. The column's server default is what gives the rows
already in the ledger their 0 (and lets a NOT NULL column be added to a table with rows).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LEDGER = "healthimaging_copy_ledger"
LABEL_INDEX = "ix_healthimaging_ledger_label"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "throttles" not in {c["name"] for c in inspector.get_columns(LEDGER)}:
        with op.batch_alter_table(LEDGER) as batch:
            batch.add_column(sa.Column("throttles", sa.Integer, nullable=False, server_default=sa.text("0")))
    if LABEL_INDEX not in {i["name"] for i in inspector.get_indexes(LEDGER)}:
        op.create_index(LABEL_INDEX, LEDGER, ["label"])


def downgrade() -> None:
    op.drop_index(LABEL_INDEX, LEDGER)
    with op.batch_alter_table(LEDGER) as batch:
        batch.drop_column("throttles")
