"""OpenLineage for HealthImaging copies: datasets named after the image sets, no patient data.

Naming follows the AWS Glue precedent (see shared/reference/airflow-notes.md): namespace
``arn:aws:medical-imaging:{region}:{account}``, name ``datastore/{datastoreId}/imageset/{imageSetId}``.
Only ids, versions and copy parameters travel; never DICOM attributes.
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.facet_v2 import RunFacet


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
    return Dataset(namespace=namespace(image_set_arn), name=f"datastore/{datastore_id}/imageset/{image_set_id}", facets=facets)


def copy_lineage(copy: dict[str, Any], *, error: str | None = None):
    """OperatorLineage for a copy described by the operator's result (or its plan, when it failed)."""
    from airflow.providers.common.compat.openlineage.facet import ErrorMessageRunFacet
    from airflow.providers.openlineage.extractors import OperatorLineage

    arn = copy.get("source_image_set_arn") or copy.get("destination_image_set_arn")
    if not arn:
        return OperatorLineage()
    inputs = [dataset(arn, copy["datastore_id"], copy["source_image_set_id"], copy.get("source_version_id"))]
    outputs = []
    if copy.get("destination_image_set_id"):
        outputs.append(dataset(arn, copy["datastore_id"], copy["destination_image_set_id"], copy.get("destination_version_id")))
    run_facets: dict[str, Any] = {
        "healthImagingCopy": HealthImagingCopyRunFacet(
            datastoreId=copy["datastore_id"],
            sourceImageSetId=copy["source_image_set_id"],
            sourceVersionId=str(copy.get("source_version_id")),
            destinationImageSetId=copy.get("destination_image_set_id"),
            destinationVersionId=copy.get("destination_version_id"),
            copyKind=copy.get("copy_kind"),
            force=bool(copy.get("force")),
            promoteToPrimary=bool(copy.get("promote_to_primary")),
            subset=bool(copy.get("subset")),
            workflowStatus=copy.get("workflow_status"),
        )
    }
    if error:
        run_facets["errorMessage"] = ErrorMessageRunFacet(message=error, programmingLanguage="python")
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)


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
        outputs.append(dataset(arn, row["datastore_id"], row["destination_image_set_id"], row.get("destination_version_id")))
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={"healthImagingBulkCopy": HealthImagingBulkCopyRunFacet(
        succeeded=counts.get(SUCCEEDED, 0), failed=counts.get(FAILED, 0))})


@attr.define
class HealthImagingBulkCopyRunFacet(RunFacet):
    """Counts of one bulk-copy batch."""

    succeeded: int = 0
    failed: int = 0
