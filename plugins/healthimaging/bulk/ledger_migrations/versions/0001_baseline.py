"""The ledger of release 0.1.0: copy ledger, manifests taken by the scheduled DAG, the shared rate limit.

A database that release created (before migrations existed) already has these tables: they are kept,
with any column that release added later created here (it only ever added nullable columns).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LEDGER = "healthimaging_copy_ledger"


def _ledger_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("manifest_uri", sa.Text, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("row_number", sa.Integer, nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("datastore_id", sa.String(32)),
        sa.Column("source_image_set_id", sa.String(32)),
        sa.Column("source_version_id", sa.String(20)),
        sa.Column("destination_image_set_id", sa.String(32)),
        sa.Column("destination_version_id", sa.String(20)),
        sa.Column("destination_image_set_arn", sa.Text),
        sa.Column("copy_kind", sa.String(16)),
        sa.Column("force", sa.Boolean, nullable=False),
        sa.Column("promote_to_primary", sa.Boolean, nullable=False),
        sa.Column("copy_key", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(128)),
        sa.Column("message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("submitted_at", sa.Float),
        sa.Column("completed_at", sa.Float),
        sa.Column("verified", sa.Boolean),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("batch", sa.Integer),
        sa.Column("request_json", sa.Text),
        sa.Column("plan_json", sa.Text),
        sa.Column("claim", sa.String(64)),
        sa.Column("claimed_at", sa.Float),
        sa.Column("next_poll_at", sa.Float),
    ]


LEDGER_INDEXES = {
    "ix_healthimaging_ledger_run_status": ("dag_id", "run_id", "status"),
    "ix_healthimaging_ledger_source": ("datastore_id", "source_image_set_id"),
    "ix_healthimaging_ledger_destination": ("datastore_id", "destination_image_set_id"),
    "ix_healthimaging_ledger_copy_key": ("copy_key", "status"),
    "ix_healthimaging_ledger_status_completed": ("status", "completed_at"),
    "ix_healthimaging_ledger_run_batch": ("dag_id", "run_id", "batch", "status"),
    "ix_healthimaging_ledger_in_flight": ("status", "datastore_id"),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if LEDGER not in tables:
        op.create_table(
            LEDGER,
            *_ledger_columns(),
            sa.UniqueConstraint(
                "dag_id", "run_id", "manifest_sha256", "row_number", name="uq_healthimaging_ledger_run_row"
            ),
        )
        for name, columns in LEDGER_INDEXES.items():
            op.create_index(name, LEDGER, list(columns))
    else:
        present = {column["name"] for column in inspector.get_columns(LEDGER)}
        for column in _ledger_columns():
            if column.name not in present:
                column.nullable = True
                op.add_column(LEDGER, column)
        indexes = {index["name"] for index in inspector.get_indexes(LEDGER)}
        for name, columns in LEDGER_INDEXES.items():
            if name not in indexes:
                op.create_index(name, LEDGER, list(columns))
    if "healthimaging_manifests" not in tables:
        op.create_table(
            "healthimaging_manifests",
            sa.Column("manifest_uri", sa.Text, primary_key=True),
            sa.Column("manifest_sha256", sa.String(64), nullable=False),
            sa.Column("dag_id", sa.String(250), nullable=False),
            sa.Column("run_id", sa.String(250), nullable=False),
            sa.Column("taken_at", sa.Float, nullable=False),
        )
    if "healthimaging_rate_limit" not in tables:
        op.create_table(
            "healthimaging_rate_limit",
            sa.Column("name", sa.String(200), primary_key=True),
            sa.Column("tokens", sa.Float, nullable=False),
            sa.Column("stamp", sa.Float, nullable=False),
            sa.Column("rate", sa.Float, nullable=False),
            sa.Column("burst", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("healthimaging_rate_limit")
    op.drop_table("healthimaging_manifests")
    op.drop_table(LEDGER)
