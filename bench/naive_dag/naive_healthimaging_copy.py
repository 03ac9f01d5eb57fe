"""The bulk copy a user writes without this project: one mapped task per row, one mapped poke sensor per copy.

Baseline of ``bench/baselines.py`` (``naive_dag``); not deployed with the project (it lives outside
``dags/``: the benchmark copies it into a temporary dags folder beside the project's DAGs).

Trigger with ``{"datastore_id": "...", "source_ids": ["...", ...]}``. ``source_ids`` reads the list from the
run's conf, ``copy`` (mapped, one task instance per row) sends CopyImageSet through a boto3 client built
from the Amazon provider's ``aws_default`` connection with botocore's standard retries (so a lost response
is resent by the SDK), and ``wait_for_copy`` (mapped, poke mode) reads the destination every 5 s until it
is COPIED. What a user usually adds is there too: task retries (3, 10 s apart), so a throttled or refused
copy is tried again. The one concession to the emulator is ``inject_host_prefix=False``: with an endpoint
URL botocore would send the ``runtime-`` operations to ``runtime-127.0.0.1``.

It stops at ``[core] max_map_length`` (1024 by default): ``source_ids`` cannot push a longer list to map over.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import PokeReturnValue, dag, get_current_context, task

AWS_CONN_ID = "aws_default"


def medical_imaging_client():
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    hook = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="medical-imaging")
    config = hook.config.merge(Config(inject_host_prefix=False, retries={"mode": "standard"}))
    return hook.get_client_type(region_name=hook.region_name, config=config)


@dag(
    dag_id="naive_healthimaging_copy",
    schedule=None,
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=10)},
    tags=["healthimaging", "benchmark-baseline"],
)
def naive_healthimaging_copy():
    @task
    def source_ids() -> list[dict]:
        conf = get_current_context()["dag_run"].conf or {}
        return [{"datastore_id": conf["datastore_id"], "source_id": source} for source in conf["source_ids"]]

    @task
    def copy(row: dict) -> dict:
        client = medical_imaging_client()
        version = client.get_image_set(datastoreId=row["datastore_id"], imageSetId=row["source_id"])["versionId"]
        answer = client.copy_image_set(
            datastoreId=row["datastore_id"],
            sourceImageSetId=row["source_id"],
            copyImageSetInformation={"sourceImageSet": {"latestVersionId": version}},
        )
        return {**row, "destination_id": answer["destinationImageSetProperties"]["imageSetId"]}

    @task.sensor(poke_interval=5, mode="poke", timeout=3600)
    def wait_for_copy(copied: dict) -> PokeReturnValue:
        client = medical_imaging_client()
        status = client.get_image_set(datastoreId=copied["datastore_id"], imageSetId=copied["destination_id"])[
            "imageSetWorkflowStatus"
        ]
        if status == "COPY_FAILED":
            raise RuntimeError(f"copy of {copied['source_id']} to {copied['destination_id']} failed")
        return PokeReturnValue(is_done=status == "COPIED", xcom_value=copied["destination_id"])

    wait_for_copy.expand(copied=copy.expand(row=source_ids()))


naive_healthimaging_copy()
