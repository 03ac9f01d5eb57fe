"""Registers the HealthImaging plugin with Airflow: the operator extra links and the bulk-copy dashboard.

The dashboard (healthimaging.bulk.dashboard) is a FastAPI app mounted at ``/healthimaging``, a top-level
nav item, a tab on every DAG run's page (Airflow 3.3 cannot limit a ``dag_run`` view to some DAGs: the
tab of a run that is no bulk copy says so) and a widget on the home page. Every Airflow process imports
this module, so the app is imported only when ``fastapi_apps`` is read (by the API server).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from healthimaging.links import HealthImagingImageSetLink

URL_PREFIX = "/healthimaging"
NAME = "HealthImaging copies"


class HealthImagingPlugin(AirflowPlugin):
    """The AWS HealthImaging console link on copy tasks, and the bulk-copy dashboard."""

    name = "healthimaging"
    operator_extra_links = [HealthImagingImageSetLink()]
    external_views = [
        {
            "name": NAME,
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "healthimaging-copies",
            "nav_top_level": True,
        },
        {
            "name": NAME,
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "healthimaging-run",
        },
    ]
    react_apps = [
        {
            "name": "HealthImagingCopiesWidget",
            "bundle_url": f"{URL_PREFIX}/static/widget.js",
            "destination": "dashboard",
            "url_route": "healthimaging-widget",
        }
    ]

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from healthimaging.bulk.dashboard.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": NAME}]
