"""Airflow's API server app in-process, with users and their JWTs, for the dashboard's tests.

- :class:`OutsiderAuthManager`: Airflow's SimpleAuthManager, but the user ``outsider`` (role viewer) may
  read no DAG whose id starts with ``healthimaging_`` (SimpleAuthManager grants per role, never per DAG).
- The ``airflow_api`` fixture (module scope): ``airflow.api_fastapi.app.create_app()`` with the plugins
  of ``plugins/`` mounted (the dashboard at ``/healthimaging``) under a ``fastapi.testclient.TestClient``,
  and tokens from the auth manager: ``api.token("admin")``, ``"viewer"``, ``"outsider"``, ``"nobody"``
  (a user without a role, who may read nothing), ``api.headers(name)``.

The API server of a browser test (``airflow api-server`` in a subprocess) can use the same users:
:data:`USERS` is the value of ``[core] simple_auth_manager_users``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

USERS = "admin:admin,viewer:viewer,outsider:viewer"
PROTECTED_PREFIX = "healthimaging_"


class OutsiderAuthManager(SimpleAuthManager):
    """SimpleAuthManager, with one user (``outsider``) who may not read the HealthImaging DAGs."""

    @staticmethod
    def _hidden(user: Any, dag_id: str | None) -> bool:
        return getattr(user, "username", None) == "outsider" and bool(dag_id) and dag_id.startswith(PROTECTED_PREFIX)

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if self._hidden(user, getattr(details, "id", None)):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)

    def filter_authorized_dag_ids(self, *, dag_ids, user, method="GET", team_name=None) -> set[str]:
        allowed = super().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method=method, team_name=team_name)
        return {dag_id for dag_id in allowed if not self._hidden(user, dag_id)}


@dataclass
class AirflowApi:
    client: Any
    app: Any

    def token(self, username: str) -> str:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        roles = {"admin": "admin", "viewer": "viewer", "outsider": "viewer", "nobody": None}
        return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role=roles[username]))

    def headers(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}"}


ENVIRONMENT = {
    "AIRFLOW__CORE__AUTH_MANAGER": f"{__name__}.OutsiderAuthManager",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS,
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
}


@pytest.fixture(scope="module")
def airflow_api(airflow_db) -> Iterator[AirflowApi]:
    """Airflow's API server app in-process with the dashboard mounted, and the auth manager's tokens."""
    from fastapi.testclient import TestClient

    saved = {name: os.environ.get(name) for name in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    try:
        from airflow.api_fastapi.app import create_app

        app = create_app()
        yield AirflowApi(TestClient(app, follow_redirects=False), app)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
