"""The AWS CLI's three ``copy-image-set`` examples as Airflow tasks.

Trigger it with the data store and image sets to use (the form validates the ids). The three tasks
run one after the other, because a copy locks its source and destination:

1. copy an image set to a new image set;
2. copy it into a destination image set (a merge);
3. copy a subset (one SOP instance) into the destination, with ``force``.
"""

from __future__ import annotations

from airflow.sdk import Param, chain, dag

from healthimaging.copy import dicom_uid
from healthimaging.copy.service_model import anchored
from healthimaging.operators import HealthImagingCopyImageSetOperator

IMAGE_SET_ID = {"type": "string", "pattern": anchored("ImageSetId")}  # botocore's model: [0-9a-z]{32}
UID = dicom_uid.json_schema()  # botocore's model and DICOM PS3.5 9.1


@dag(
    dag_id="example_healthimaging_copy",
    schedule=None,
    catchup=False,
    tags=["healthimaging", "example"],
    params={
        "datastore_id": Param(
            title="Data store id", description="The data store holding both image sets.", **IMAGE_SET_ID
        ),
        "source_image_set_id": Param(title="Source image set id", **IMAGE_SET_ID),
        "destination_image_set_id": Param(
            title="Destination image set id", description="For examples 2 and 3.", **IMAGE_SET_ID
        ),
        "series_instance_uid": Param(
            title="Series Instance UID", description="Series of the instance example 3 copies.", **UID
        ),
        "sop_instance_uid": Param(title="SOP Instance UID", description="The instance example 3 copies.", **UID),
        "aws_conn_id": Param("aws_default", type="string", title="AWS connection id"),
    },
)
def example_healthimaging_copy():
    common = {
        "datastore_id": "{{ params.datastore_id }}",
        "source_image_set_id": "{{ params.source_image_set_id }}",
        "aws_conn_id": "{{ params.aws_conn_id }}",
        "deferrable": True,
        "waiter_delay": 5,
    }
    copy_to_new = HealthImagingCopyImageSetOperator(task_id="copy_to_new_image_set", **common)
    copy_into_destination = HealthImagingCopyImageSetOperator(
        task_id="copy_into_destination", destination_image_set_id="{{ params.destination_image_set_id }}", **common
    )
    forced_subset_copy = HealthImagingCopyImageSetOperator(
        task_id="forced_subset_copy",
        destination_image_set_id="{{ params.destination_image_set_id }}",
        # A JSON string as the CLI takes it: Jinja renders strings, not dict keys.
        copiable_attributes=(
            '{"SchemaVersion":"1.1","Study":{"Series":{"{{ params.series_instance_uid }}":'
            '{"Instances":{"{{ params.sop_instance_uid }}":{}}}}}}'
        ),
        force=True,
        **common,
    )
    chain(copy_to_new, copy_into_destination, forced_subset_copy)


example_healthimaging_copy()
