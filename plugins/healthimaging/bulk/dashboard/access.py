"""Who may use the dashboard: Airflow does not authenticate a plugin's FastAPI app, so every route does.

:func:`reader` is the dependency of every route (pages, API, static files): a user authenticated the way
Airflow's own API does it (``get_user``: an ``Authorization: Bearer`` JWT, else the ``_token`` cookie the
UI sets) who may read DAG runs (``requires_access_dag("GET", DagAccessEntity.RUN)``; for a route with a
``dag_id`` in its path, the runs of that DAG). No credential: 401, or for a browser asking for a page
(``Accept: text/html``) a redirect to Airflow's login with ``next`` back to the page; an invalid token:
403 (Airflow's answers). The rows shown are those of :func:`readable_dag_ids`, the DAGs the auth manager
lets the user read.
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials


class LoginRequired(Exception):
    """A browser without a session asked for a page: the app answers with a redirect to ``login_url``."""

    def __init__(self, login_url: str) -> None:
        super().__init__(login_url)
        self.login_url = login_url


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def login_url(request: Request) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return get_auth_manager().get_url_login(next_url=back)


async def authenticated(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> BaseUser:
    """The user of the request (Airflow's ``get_user``): 401 without a credential, 403 with an invalid one."""
    return await get_user(request, None, bearer)


async def page_visitor(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
) -> BaseUser:
    """As :func:`authenticated`, but a browser without a session is sent to Airflow's login page."""
    try:
        return await get_user(request, None, bearer)
    except HTTPException as exc:
        if exc.status_code == status.HTTP_401_UNAUTHORIZED and wants_html(request):
            raise LoginRequired(login_url(request)) from None
        raise


def may_read_runs(request: Request, user: BaseUser) -> BaseUser:
    """403 unless the user may read DAG runs (of the path's ``dag_id``, when the route has one)."""
    requires_access_dag("GET", DagAccessEntity.RUN)(request, user)
    return user


def reader(request: Request, user: Annotated[BaseUser, Depends(authenticated)]) -> BaseUser:
    """The dependency of the API routes: an authenticated user who may read DAG runs."""
    return may_read_runs(request, user)


def page_reader(request: Request, user: Annotated[BaseUser, Depends(page_visitor)]) -> BaseUser:
    """The dependency of the pages and static files: :func:`reader`, with the login redirect."""
    return may_read_runs(request, user)


Reader = Annotated[BaseUser, Depends(reader)]


def readable_dag_ids(user: BaseUser) -> set[str]:
    """The DAGs whose rows the user may see."""
    from airflow.api_fastapi.app import get_auth_manager

    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))
