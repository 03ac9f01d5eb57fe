"""
### Scheduled bulk copies of HealthImaging image sets

Each interval this DAG takes the manifests that are new in a folder or S3 prefix (each manifest is
taken by exactly one run, tracked in the ledger), and can build one more manifest from
SearchImageSets over the data interval (for example every non-primary image set updated in the
interval, copied and promoted to primary). Every manifest is then copied like in
`healthimaging_bulk_copy`: validated, batched, rate-limited, exactly once, with a report each.
Manifests are isolated: one that cannot be read, validated or registered is reported (the run then
fails, naming it) while the others are copied; it is taken again once its content changes.

Configure it with environment variables (the defaults of its params):
`HEALTHIMAGING_SCHEDULE` (default `@hourly`), `HEALTHIMAGING_MANIFEST_LOCATION` (folder or `s3://` prefix),
`HEALTHIMAGING_SEARCH_DATASTORE_ID` and `HEALTHIMAGING_SEARCH_FILTER` (`non_primary_updated` or `updated`),
`HEALTHIMAGING_COPIES_PER_SECOND` (default 0.25), `HEALTHIMAGING_AWS_CONN_ID` (default `aws_default`).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

from healthimaging.bulk.ledger import CONNECTION_ID as LEDGER_CONN_ID
from healthimaging.bulk.settings import DEFAULT_COPIES_PER_SECOND, trigger_form
from healthimaging.copy.service_model import anchored
from healthimaging.operators import HealthImagingBulkCopyBatchOperator

log = logging.getLogger(__name__)

# Reading the environment is cheap and local: no work at import time beyond it. The copy settings'
# Params come from healthimaging.bulk.settings; a dry run has no place in a schedule.
PARAMS = {
    "manifest_location": Param(
        os.environ.get("HEALTHIMAGING_MANIFEST_LOCATION", ""),
        type="string",
        title="Manifest folder or S3 prefix",
        description="New .csv/.jsonl manifests here are copied once each. Empty: none.",
    ),
    "search_datastore_id": Param(
        os.environ.get("HEALTHIMAGING_SEARCH_DATASTORE_ID", ""),
        type="string",
        pattern=anchored("DatastoreId", empty_allowed=True),
        title="Data store to search",
        description="Build a manifest from SearchImageSets over the data interval. Empty: off.",
    ),
    "search_filter": Param(
        os.environ.get("HEALTHIMAGING_SEARCH_FILTER", "non_primary_updated"),
        type="string",
        enum=["non_primary_updated", "updated"],
        title="Search filter",
    ),
    "manual_search_window_hours": Param(
        1,
        type="number",
        exclusiveMinimum=0,
        title="Search window of a manual run (hours)",
        description="A manual run has no data interval; it searches this many hours back.",
    ),
    **trigger_form(
        defaults={
            "copies_per_second": float(os.environ.get("HEALTHIMAGING_COPIES_PER_SECOND", DEFAULT_COPIES_PER_SECOND)),
            "aws_conn_id": os.environ.get("HEALTHIMAGING_AWS_CONN_ID", "aws_default"),
        },
        exclude=("dry_run",),
    ),
}


@dag(
    dag_id="healthimaging_scheduled_copy",
    schedule=os.environ.get("HEALTHIMAGING_SCHEDULE", "@hourly"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    tags=["healthimaging", "bulk-copy", "scheduled"],
    doc_md=__doc__,
)
def healthimaging_scheduled_copy():
    @task
    def take_new_manifests() -> list[dict]:
        """The manifests this run copies: new files in the location, plus one built from the search.
        A manifest that cannot be read (or a search that fails) is reported, not fatal to the others."""
        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.manifest_sources import list_manifests, search_rows, write_generated
        from healthimaging.bulk.scheduled import isolated, take_manifests
        from healthimaging.hooks import HealthImagingHook

        context = get_current_context()
        params, dag_id, run_id = context["params"], context["dag"].dag_id, context["run_id"]
        ledger = Ledger.from_airflow(LEDGER_CONN_ID)
        location = params["manifest_location"]
        candidates = list_manifests(location, params["aws_conn_id"]) if location else []
        failures = []
        if params["search_datastore_id"]:
            start, end = context["data_interval_start"], context["data_interval_end"]
            if start == end:  # a manual run has an empty interval: search the window before it
                start = end - pendulum.duration(hours=params["manual_search_window_hours"])

            def search() -> str | None:
                hook = HealthImagingHook(aws_conn_id=params["aws_conn_id"], region_name=params["region_name"] or None)
                rows = search_rows(hook, params["search_datastore_id"], params["search_filter"], start, end)
                log.info("search %s over [%s, %s): %d image sets", params["search_filter"], start, end, len(rows))
                if not rows:
                    return None
                if not location:
                    raise ValueError("search_datastore_id needs manifest_location to write the generated manifest to")
                name = f"{params['search_filter']}-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.jsonl"
                return write_generated(location, name, rows, params["aws_conn_id"])

            generated, failure = isolated(f"search:{params['search_filter']}", search)
            if generated:
                candidates.append(generated)
            if failure:
                failures.append(failure)
        entries = failures + take_manifests(
            ledger, candidates, dag_id=dag_id, run_id=run_id, aws_conn_id=params["aws_conn_id"]
        )
        log.info(
            "%d new manifests of %d found, %d could not be read",
            sum("error" not in e for e in entries),
            len(candidates),
            sum("error" in e for e in entries),
        )
        return entries

    @task(retries=3, retry_delay=timedelta(seconds=15))  # idempotent for a run: a lost worker is tried again soon
    def prepare_manifests(manifests: list[dict]) -> list[dict]:
        """Validate each manifest and record its rows in the ledger; a manifest that fails is reported and
        released (taken again once it changed), the others are copied."""
        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.scheduled import prepare_manifests as prepare_each

        context = get_current_context()
        return prepare_each(
            Ledger.from_airflow(LEDGER_CONN_ID),
            manifests,
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            params=dict(context["params"]),
        )

    @task
    def batches_of(prepared: list[dict]) -> list[dict]:
        return [
            {"batch": batch, "manifest_sha256": p["manifest_sha256"], "settings": p["settings"]}
            for p in prepared
            if "error" not in p
            for batch in p["batches"]
        ]

    @task(
        trigger_rule="all_done",
        outlets=[Asset(name="healthimaging-scheduled-copies", uri="healthimaging://scheduled-copies")],
    )
    def finish_run(*, outlet_events=None) -> list[dict]:
        """One report per manifest; the run fails if any manifest failed past its tolerance or was unusable."""
        from airflow.sdk.exceptions import AirflowFailException

        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.run import finish, verdict

        context = get_current_context()
        dag_id, run_id, params = context["dag"].dag_id, context["run_id"], dict(context["params"])
        prepared = context["ti"].xcom_pull(task_ids="prepare_manifests")
        if prepared is None:
            raise AirflowFailException("the manifests were not prepared; see the task prepare_manifests")
        ledger = Ledger.from_airflow(LEDGER_CONN_ID)
        summaries, problems = [], []
        for item in prepared:
            if "error" in item:
                problems.append(f"{item['manifest_uri']}: {item['error']}")
                continue
            summary = finish(
                ledger, dag_id=dag_id, run_id=run_id, params=params, prepared=item, per_manifest_folder=True
            )
            summaries.append(summary)
            reason = verdict(summary)
            if reason:
                problems.append(f"{item['manifest_uri']}: {reason}")
        outlet_events[Asset(name="healthimaging-scheduled-copies", uri="healthimaging://scheduled-copies")].extra = {
            "run_id": run_id,
            "manifests": len(prepared),
            "counts": [s["counts"] for s in summaries],
        }
        if problems:
            raise AirflowFailException("; ".join(problems))
        return summaries

    prepared = prepare_manifests(take_new_manifests())
    copies = HealthImagingBulkCopyBatchOperator.partial(
        task_id="copy_batch",
        aws_conn_id="{{ params.aws_conn_id }}",
        region_name="{{ params.region_name }}",
        ledger_conn_id=LEDGER_CONN_ID,
        deferrable=True,
        retries=3,
        max_active_tis_per_dagrun=8,
    ).expand_kwargs(batches_of(prepared))
    copies >> finish_run()


healthimaging_scheduled_copy()
