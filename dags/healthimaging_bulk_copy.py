"""
### Bulk copy of HealthImaging image sets from a manifest

Trigger it by hand with a manifest (CSV or JSON Lines; a local path the workers can read, or an
`s3://` URI). Every row is validated first; invalid rows are rejected into the report and the rest
go on (or, in strict mode, the run fails before copying). Rows are copied in batches that run in the
triggerer: submission obeys one CopyImageSet rate limit shared by the whole deployment, at most
*max copies in flight* per data store, and never two copies of one source at once. Every row's
state is in the ledger (connection `healthimaging_ledger`), so a retry or a re-run resumes
without copying anything twice, and rows an earlier run copied are skipped.

At the end a report (`report.json`, `succeeded.csv`, `failed.csv`, `rejected.csv`, `skipped.csv`)
is written under the report folder (and next to an S3 manifest), each data store gets an Asset
event, and the run fails if more copies failed than tolerated.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, AssetAlias, Param, dag, get_current_context, task

from healthimaging.bulk.ledger import CONNECTION_ID as LEDGER_CONN_ID
from healthimaging.bulk.manifest import COLUMNS
from healthimaging.bulk.settings import trigger_form
from healthimaging.operators import HealthImagingBulkCopyBatchOperator

DATASTORE_ASSETS = AssetAlias("healthimaging-datastores")
PREPARE_RETRY_DELAY = timedelta(seconds=15)

# Every setting's Param comes from healthimaging.bulk.settings (its name is the setting's name);
# only the manifest is this DAG's own.
PARAMS = {
    "manifest": Param(
        type="string",
        minLength=1,
        title="Manifest",
        description="CSV or JSON Lines: a local path the workers can read, or s3://bucket/key. Columns: "
        + ", ".join(COLUMNS)
        + " (source_image_set_id is required).",
    ),
    **trigger_form(),
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

        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.run import BulkCopyRunError, prepare

        context = get_current_context()
        try:
            return prepare(
                Ledger.from_airflow(LEDGER_CONN_ID),
                dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
                params=dict(context["params"]),
            )
        except (BulkCopyRunError, FileNotFoundError) as exc:
            raise AirflowFailException(str(exc)) from exc

    # Airflow maps only over a task's return value ("cannot map over XCom with custom key"), so the
    # batch numbers of prepare_manifest's dict are one small task's return value.
    @task
    def batch_numbers(prepared: dict) -> list[int]:
        return prepared["batches"]

    @task
    def dry_run_plan(prepared: dict) -> dict:
        """In a dry run, check every row against the data store; otherwise nothing."""
        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.run import plan

        if not prepared["dry_run"]:
            return {}
        context = get_current_context()
        return plan(
            Ledger.from_airflow(LEDGER_CONN_ID),
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            prepared=prepared,
        )

    @task(trigger_rule="all_done", outlets=[DATASTORE_ASSETS])
    def finish_run(*, outlet_events=None) -> dict:
        """Write the report, emit an Asset event per data store, and fail the run past the tolerated failures."""
        from airflow.sdk.exceptions import AirflowFailException

        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.run import datastore_summaries, finish, verdict

        context = get_current_context()
        dag_id, run_id, params = context["dag"].dag_id, context["run_id"], dict(context["params"])
        prepared = context["ti"].xcom_pull(task_ids="prepare_manifest")  # None when preparing failed
        ledger = Ledger.from_airflow(LEDGER_CONN_ID)
        summary = finish(ledger, dag_id=dag_id, run_id=run_id, params=params, prepared=prepared)
        for datastore_id, counts in datastore_summaries(ledger, dag_id, run_id).items():
            outlet_events[DATASTORE_ASSETS].add(
                Asset(name=f"healthimaging-datastore-{datastore_id}", uri=f"healthimaging://datastore/{datastore_id}"),
                extra={
                    "run_id": run_id,
                    "manifest": summary["manifest"]["uri"],
                    "dry_run": summary["dryRun"],
                    "counts": counts,
                },
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
        aws_conn_id="{{ params.aws_conn_id }}",
        region_name="{{ params.region_name }}",
        ledger_conn_id=LEDGER_CONN_ID,
        deferrable=True,  # the batches run in the triggerer, whatever [operators] default_deferrable says
        retries=3,
        max_active_tis_per_dagrun=8,
    ).expand(batch=batch_numbers(prepared))
    planned = dry_run_plan(prepared)
    [copies, planned] >> finish_run()


healthimaging_bulk_copy()
