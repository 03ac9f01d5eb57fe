"""Shared test setup.

- The emulator fixtures (healthimaging_emulator, healthimaging_client).
- An isolated Airflow configuration for the session (tests/airflow_env.py). It is applied here, at
  conftest import time, because Airflow reads its configuration once, when ``airflow`` is first
  imported, and test modules import it at collection time. Airflow itself is not imported here.
  Fixtures: airflow_home, airflow_db, dag_bundle, aws_connection, emulator_connection.
"""

import pytest

pytest.register_assert_rewrite(
    "tests.airflow_env", "tests.airflow_stack", "tests.bulk_helpers", "tests.healthimaging_helpers"
)

from tests import airflow_env  # noqa: E402

airflow_env.configure()

pytest_plugins = ["healthimaging_emulator.pytest_plugin", "tests.airflow_env", "tests.bulk_helpers"]


def pytest_configure(config):
    # Idempotent; covers plugins that might load this conftest in another order.
    airflow_env.configure()


def pytest_unconfigure(config):
    airflow_env.cleanup()


@pytest.fixture(autouse=True)
def report_root(tmp_path, monkeypatch):
    """Reports may only be written under ``[healthimaging] report_folder``: each test's own tmp_path."""
    monkeypatch.setenv("AIRFLOW__HEALTHIMAGING__REPORT_FOLDER", str(tmp_path))
    return tmp_path
