"""Registers the HealthImaging operator extra links with Airflow (operators and hooks need no registration)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from healthimaging.links import HealthImagingImageSetLink


class HealthImagingPlugin(AirflowPlugin):
    """The AWS HealthImaging console link on copy tasks."""

    name = "healthimaging"
    operator_extra_links = [HealthImagingImageSetLink()]
