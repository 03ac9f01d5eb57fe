"""The ledger's tables as release 0.1.0 created them (before Alembic), frozen here for the upgrade test.

Copied from plugins/healthimaging/ledger.py and rate_limit.py of that release; do not change.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

copies = sa.Table(
    "healthimaging_copy_ledger",
    metadata,
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
    sa.Column("force", sa.Boolean, nullable=False, default=False),
    sa.Column("promote_to_primary", sa.Boolean, nullable=False, default=False),
    sa.Column("copy_key", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(128)),
    sa.Column("message", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("verified", sa.Boolean),
    sa.Column("updated_at", sa.Float, nullable=False),
    # execution state of the bulk-copy engine
    sa.Column("batch", sa.Integer),
    sa.Column("request_json", sa.Text),  # the validated manifest row
    sa.Column("plan_json", sa.Text),  # the resolved CopyPlan, stored before the copy is sent
    sa.Column("claim", sa.String(64)),  # which engine instance holds the row
    sa.Column("claimed_at", sa.Float),
    sa.Column("next_poll_at", sa.Float),
    sa.UniqueConstraint("dag_id", "run_id", "manifest_sha256", "row_number", name="uq_healthimaging_ledger_run_row"),
    sa.Index("ix_healthimaging_ledger_run_status", "dag_id", "run_id", "status"),
    sa.Index("ix_healthimaging_ledger_source", "datastore_id", "source_image_set_id"),
    sa.Index("ix_healthimaging_ledger_destination", "datastore_id", "destination_image_set_id"),
    sa.Index("ix_healthimaging_ledger_copy_key", "copy_key", "status"),
    sa.Index("ix_healthimaging_ledger_status_completed", "status", "completed_at"),
    sa.Index("ix_healthimaging_ledger_run_batch", "dag_id", "run_id", "batch", "status"),
    sa.Index("ix_healthimaging_ledger_in_flight", "status", "datastore_id"),
)

manifests = sa.Table(
    "healthimaging_manifests",
    metadata,
    sa.Column("manifest_uri", sa.Text, primary_key=True),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("taken_at", sa.Float, nullable=False),
)

buckets = sa.Table(
    "healthimaging_rate_limit",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("stamp", sa.Float, nullable=False),
    sa.Column("rate", sa.Float, nullable=False),
    sa.Column("burst", sa.Float, nullable=False),
)
