"""OpenLineage for HealthImaging copies: datasets named after the image sets, no patient data.

Naming follows OpenLineage's precedent for AWS Glue (namespace ``arn:aws:glue:{region}:{account id}``,
name ``table/{database}/{table}``; https://openlineage.io/docs/spec/naming/): namespace
``arn:aws:medical-imaging:{region}:{account}``, name ``datastore/{datastoreId}/imageset/{imageSetId}``.
Only ids, versions and copy parameters travel; never DICOM attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attr
from openlineage.client.facet_v2 import RunFacet

if TYPE_CHECKING:
    from healthimaging.copy.record import CopyRecord


@attr.define
class HealthImagingCopyRunFacet(RunFacet):
    """The parameters and outcome of one CopyImageSet (ids and flags only)."""

    datastoreId: str
    sourceImageSetId: str
    sourceVersionId: str
    destinationImageSetId: str | None = None
    destinationVersionId: str | None = None
    copyKind: str | None = None
    force: bool = False
    promoteToPrimary: bool = False
    subset: bool = False
    workflowStatus: str | None = None


def namespace(image_set_arn: str) -> str:
    """``arn:aws:medical-imaging:{region}:{account}`` from an image set or data store ARN."""
    return ":".join(image_set_arn.split(":")[:5])


def dataset(image_set_arn: str, datastore_id: str, image_set_id: str, version_id: str | None):
    """An OpenLineage Dataset for one version of an image set."""
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from openlineage.client.facet_v2 import dataset_version_dataset

    facets: dict[str, Any] = {}
    if version_id is not None:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version_id))
    return Dataset(
        namespace=namespace(image_set_arn), name=f"datastore/{datastore_id}/imageset/{image_set_id}", facets=facets
    )


def copy_lineage(copy: CopyRecord | None):
    """OperatorLineage for one copy: its record once accepted (or its plan, when it failed before).

    No error facet: the OpenLineage listener adds ``errorMessage`` from the task's exception itself.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    arn = copy and (copy.source_image_set_arn or copy.destination_image_set_arn)
    if not arn:
        return OperatorLineage()
    inputs = [dataset(arn, copy.datastore_id, copy.source_image_set_id, copy.source_version_id)]
    outputs = []
    if copy.destination_image_set_id:
        outputs.append(dataset(arn, copy.datastore_id, copy.destination_image_set_id, copy.destination_version_id))
    facet = HealthImagingCopyRunFacet(
        datastoreId=copy.datastore_id,
        sourceImageSetId=copy.source_image_set_id,
        sourceVersionId=str(copy.source_version_id),
        destinationImageSetId=copy.destination_image_set_id,
        destinationVersionId=copy.destination_version_id,
        copyKind=copy.copy_kind,
        force=bool(copy.force),
        promoteToPrimary=bool(copy.promote_to_primary),
        subset=bool(copy.subset),
        workflowStatus=copy.workflow_status,
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={"healthImagingCopy": facet})


def batch_lineage(rows: list[dict[str, Any]], counts: dict[str, int]):
    """OperatorLineage for a bulk-copy batch: each copied source version in, each destination version out."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    from healthimaging.bulk.ledger import FAILED, SUCCEEDED

    inputs, outputs = [], []
    for row in rows:
        arn = row.get("destination_image_set_arn")
        if row.get("status") != SUCCEEDED or not arn:
            continue
        inputs.append(dataset(arn, row["datastore_id"], row["source_image_set_id"], row.get("source_version_id")))
        outputs.append(
            dataset(arn, row["datastore_id"], row["destination_image_set_id"], row.get("destination_version_id"))
        )
    return OperatorLineage(
        inputs=inputs,
        outputs=outputs,
        run_facets={
            "healthImagingBulkCopy": HealthImagingBulkCopyRunFacet(
                succeeded=counts.get(SUCCEEDED, 0), failed=counts.get(FAILED, 0)
            )
        },
    )


@attr.define
class HealthImagingBulkCopyRunFacet(RunFacet):
    """Counts of one bulk-copy batch."""

    succeeded: int = 0
    failed: int = 0
