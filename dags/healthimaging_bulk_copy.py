"""
### Bulk copy of HealthImaging image sets from a manifest

Trigger it by hand with a manifest (CSV or JSON Lines; a local path the workers can read, or an
`s3://` URI). Every row is validated first; invalid rows are rejected into the report and the rest
go on (or, in strict mode, the run fails before copying). Rows are copied in batches that run in the
triggerer: submission obeys one CopyImageSet rate limit shared by the whole deployment, at most
*max copies in flight* per data store, and never two copies of one source at once. Every row's
state is in the ledger (connection `healthimaging_lineage`), so a retry or a re-run resumes
without copying anything twice, and rows an earlier run copied are skipped.

At the end a report (`report.json`, `succeeded.csv`, `failed.csv`, `rejected.csv`, `skipped.csv`)
is written under the report folder (and next to an S3 manifest), each data store gets an Asset
event, and the run fails if more copies failed than tolerated.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetAlias, Param, dag, get_current_context, task

from healthimaging.operators import HealthImagingBulkCopyBatchOperator

LEDGER_CONN_ID = "healthimaging_lineage"
DATASTORE_ASSETS = AssetAlias("healthimaging-datastores")
ID_PATTERN = "^[0-9a-z]{32}$"
PREPARE_RETRY_DELAY = timedelta(seconds=15)

PARAMS = {
    "manifest": Param(
        type="string", minLength=1, title="Manifest",
        description="CSV or JSON Lines: a local path the workers can read, or s3://bucket/key. Columns: datastore_id, "
                    "source_image_set_id (required), source_version_id, destination_image_set_id, destination_version_id, "
                    "series_instance_uids, sop_instance_uids, copiable_attributes, copy_image_set_information, force, "
                    "promote_to_primary, label.",
    ),
    "default_datastore_id": Param(
        "", type="string", pattern=f"^$|{ID_PATTERN}", title="Default data store id",
        description="Used for rows whose datastore_id is empty.",
    ),
    "dry_run": Param(False, type="boolean", title="Dry run",
                     description="Check every row against the data store and write the plan; copy nothing."),
    "strict": Param(False, type="boolean", title="Strict",
                    description="Fail the run before copying if any manifest row is invalid."),
    "tolerated_failure_percent": Param(0.0, type="number", minimum=0, maximum=100, title="Tolerated failure percent",
                                       description="The run fails if a larger share of attempted copies fails."),
    "max_copies_in_flight": Param(20, type="integer", minimum=1, maximum=100, title="Max copies in flight",
                                  description="Per data store, across the deployment (the service allows 100)."),
    "copies_per_second": Param(0.25, type="number", exclusiveMinimum=0, maximum=100, title="CopyImageSet rate limit (per second)",
                               description="Shared by every worker and run. AWS's default quota is 0.25/s (900 an hour)."),
    "burst": Param(1, type="number", minimum=1, maximum=100, title="Rate limit burst"),
    "batch_size": Param(250, type="integer", minimum=1, maximum=100000, title="Rows per batch",
                        description="Each batch is one task instance (raised automatically to keep batches under 500)."),
    "skip_already_copied": Param(True, type="boolean", title="Skip rows already copied",
                                 description="Rows an earlier run copied (same source, version and target) are skipped."),
    "verify_copies": Param(True, type="boolean", title="Verify copies",
                           description="Check that each destination holds exactly the SOP instances meant to be copied."),
    "aws_conn_id": Param("aws_default", type="string", minLength=1, title="AWS connection id"),
    "region_name": Param("", type="string", title="AWS region", description="Empty: the connection's region."),
    "poll_interval_seconds": Param(5, type="number", minimum=0.1, maximum=300, title="Poll interval (seconds)"),
    "progress_interval_seconds": Param(30, type="number", minimum=1, maximum=3600, title="Progress log interval (seconds)"),
    "report_folder": Param("", type="string", title="Report folder",
                           description="A folder inside the report root ([healthimaging] report_folder, default "
                                       "$AIRFLOW_HOME/healthimaging_reports), relative or absolute under it; empty: the root."),
}


@dag(
    dag_id="healthimaging_bulk_copy",
    schedule=None,
    catchup=False,
    params=PARAMS,
    tags=["healthimaging", "bulk-copy"],
    doc_md=__doc__,
    max_active_tasks=16,
)
def healthimaging_bulk_copy():
    # Registering is idempotent for a run, so a worker lost while preparing is simply tried again soon.
    @task(retries=3, retry_delay=PREPARE_RETRY_DELAY)
    def prepare_manifest() -> dict:
        """Validate the manifest and record every row in the ledger."""
        from airflow.sdk.exceptions import AirflowFailException

        from healthimaging.bulk.run import BulkCopyRunError, prepare
        from healthimaging.bulk.ledger import Ledger

        context = get_current_context()
        try:
            return prepare(Ledger.from_airflow(LEDGER_CONN_ID), dag_id=context["dag"].dag_id, run_id=context["run_id"],
                           params=dict(context["params"]))
        except (BulkCopyRunError, FileNotFoundError) as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def batch_numbers(prepared: dict) -> list[int]:
        return prepared["batches"]

    @task
    def dry_run_plan(prepared: dict) -> dict:
        """In a dry run, check every row against the data store; otherwise nothing."""
        from healthimaging.bulk.run import plan
        from healthimaging.bulk.ledger import Ledger

        if not prepared["dry_run"]:
            return {}
        context = get_current_context()
        return plan(Ledger.from_airflow(LEDGER_CONN_ID), dag_id=context["dag"].dag_id, run_id=context["run_id"], prepared=prepared)

    @task(trigger_rule="all_done", outlets=[DATASTORE_ASSETS])
    def finish_run(*, outlet_events=None) -> dict:
        """Write the report, emit an Asset event per data store, and fail the run past the tolerated failures."""
        from airflow.sdk.exceptions import AirflowFailException

        from healthimaging.bulk.run import datastore_summaries, finish, verdict
        from healthimaging.bulk.ledger import Ledger

        context = get_current_context()
        dag_id, run_id, params = context["dag"].dag_id, context["run_id"], dict(context["params"])
        prepared = context["ti"].xcom_pull(task_ids="prepare_manifest")  # None when preparing failed
        ledger = Ledger.from_airflow(LEDGER_CONN_ID)
        summary = finish(ledger, dag_id=dag_id, run_id=run_id, params=params, prepared=prepared)
        for datastore_id, counts in datastore_summaries(ledger, dag_id, run_id).items():
            outlet_events[DATASTORE_ASSETS].add(
                Asset(name=f"healthimaging-datastore-{datastore_id}", uri=f"healthimaging://datastore/{datastore_id}"),
                extra={"run_id": run_id, "manifest": summary["manifest"]["uri"], "dry_run": summary["dryRun"], "counts": counts},
            )
        if prepared is None:
            raise AirflowFailException(f"the manifest was not prepared; report in {summary['reportFolder']}")
        reason = verdict(summary)
        if reason:
            raise AirflowFailException(reason)
        return summary

    prepared = prepare_manifest()
    copies = HealthImagingBulkCopyBatchOperator.partial(
        task_id="copy_batch",
        manifest_sha256=prepared["manifest_sha256"],
        settings=prepared["settings"],
        ledger_conn_id=LEDGER_CONN_ID,
        retries=3,
        max_active_tis_per_dagrun=8,
    ).expand(batch=batch_numbers(prepared))
    planned = dry_run_plan(prepared)
    [copies, planned] >> finish_run()


healthimaging_bulk_copy()
