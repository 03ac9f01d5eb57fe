"""A scheduled run releases a manifest it could not copy: ``released_at`` and ``failure`` on
``healthimaging_manifests``. A released manifest is taken again once its content changed.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("healthimaging_manifests")}
    with op.batch_alter_table("healthimaging_manifests") as batch:
        if "released_at" not in present:
            batch.add_column(sa.Column("released_at", sa.Float))
        if "failure" not in present:
            batch.add_column(sa.Column("failure", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("healthimaging_manifests") as batch:
        batch.drop_column("failure")
        batch.drop_column("released_at")
