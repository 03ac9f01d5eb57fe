"""The shared rate limit adapts: ``ceiling`` (the configured rate, which the adapted ``rate`` never exceeds),
``decreased_at`` and ``increased_at`` (when the rate last moved down and up) on ``healthimaging_rate_limit``.

A bucket already there keeps its rate as its ceiling. Each column is added only if missing, like 0002's.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BUCKETS = "healthimaging_rate_limit"


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(BUCKETS)}
    with op.batch_alter_table(BUCKETS) as batch:
        if "ceiling" not in columns:
            batch.add_column(sa.Column("ceiling", sa.Float, nullable=True))
        for name in ("decreased_at", "increased_at"):
            if name not in columns:
                batch.add_column(sa.Column(name, sa.Float, nullable=True))
    op.execute(sa.text(f"UPDATE {BUCKETS} SET ceiling = rate WHERE ceiling IS NULL"))


def downgrade() -> None:
    with op.batch_alter_table(BUCKETS) as batch:
        batch.drop_column("increased_at")
        batch.drop_column("decreased_at")
        batch.drop_column("ceiling")
