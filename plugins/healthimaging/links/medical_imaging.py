"""Operator extra links to the AWS HealthImaging console."""

from __future__ import annotations

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink


class HealthImagingImageSetLink(BaseAwsLink):
    """Link to an image set in the AWS HealthImaging console."""

    name = "HealthImaging Image Set"
    key = "healthimaging_image_set"
    format_str = (
        BASE_AWS_CONSOLE_LINK
        + "/medical-imaging/home?region={region_name}#/data-stores/{datastore_id}/image-sets/{image_set_id}"
    )
