"""The bulk-copy settings are one source: both DAGs' trigger forms, a run's settings and the engine's."""

from __future__ import annotations

from dataclasses import fields

import pytest

from healthimaging.bulk.settings import (
    DEFAULT_COPIES_PER_SECOND,
    BulkCopySettings,
    BulkRunOptions,
    trigger_form,
)
from tests.bulk_helpers import BULK_DAG_ID, SCHEDULED_DAG_ID, load_dag


def param_fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if "param" in f.metadata}


@pytest.mark.parametrize(
    "dag_id, own, missing",
    [
        (BULK_DAG_ID, {"manifest"}, set()),
        (
            SCHEDULED_DAG_ID,
            {"manifest_location", "search_datastore_id", "search_filter", "manual_search_window_hours"},
            {"dry_run"},
        ),
    ],
)
def test_each_dag_form_is_the_settings_plus_its_own_params(airflow_db, dag_id, own, missing):
    dag = load_dag(dag_id)
    settings = param_fields(BulkCopySettings) | param_fields(BulkRunOptions)
    assert set(dag.params) == (settings - missing) | own
    for name in settings - missing:
        assert dag.params.get_param(name).schema["title"] == trigger_form()[name].schema["title"]


def test_the_params_of_a_run_are_read_back_typed():
    form = {name: param.value for name, param in trigger_form().items()}
    settings = BulkCopySettings.from_params(
        {**form, "copies_per_second": "2", "max_copies_in_flight": 7.0, "region_name": ""}
    )
    assert (settings.copies_per_second, settings.max_copies_in_flight, settings.region_name) == (2.0, 7, None)
    assert BulkCopySettings.from_params(form) == BulkCopySettings(lease_seconds=settings.lease_seconds)
    options = BulkRunOptions.from_params({**form, "default_datastore_id": "", "batch_size": "40"})
    assert options.default_datastore_id is None and options.batch_size == 40
    assert trigger_form()["copies_per_second"].value == DEFAULT_COPIES_PER_SECOND


def test_settings_a_trigger_deferred_before_the_rename_carries_still_load():
    old = {**BulkCopySettings().to_dict(), "max_in_flight": 3, "poll_interval": 0.5, "progress_interval": 9.0}
    for new in ("max_copies_in_flight", "poll_interval_seconds", "progress_interval_seconds"):
        del old[new]
    settings = BulkCopySettings.from_dict(old)
    assert (settings.max_copies_in_flight, settings.poll_interval_seconds, settings.progress_interval_seconds) == (
        3,
        0.5,
        9.0,
    )
    assert BulkCopySettings.from_dict(settings.to_dict()) == settings


def test_a_form_default_can_be_replaced_and_a_setting_left_out():
    form = trigger_form(defaults={"copies_per_second": 5.0}, exclude=("dry_run",))
    assert form["copies_per_second"].value == 5.0 and "dry_run" not in form


def test_a_copy_request_is_one_frozen_value_from_any_of_its_sources():
    from healthimaging.bulk.manifest import COLUMNS, validate_manifest
    from healthimaging.copy.request import COPY_ARGUMENTS, CopyRequest
    from healthimaging.operators import HealthImagingCopyImageSetOperator

    request = CopyRequest.from_mapping(
        {
            "datastore_id": "d" * 32,
            "source_image_set_id": "a" * 32,
            "label": "ignored",
            "series_instance_uids": ["1.2", "1.3"],
            "source_version_id": "",
            "copiable_attributes": {},
        }
    )
    assert request.series_instance_uids == ("1.2", "1.3") and request.source_version_id is None
    assert request.copiable_attributes is None and hash(request)
    with pytest.raises(AttributeError):
        request.force = True  # frozen
    assert CopyRequest.from_mapping(request.to_dict()) == request
    # One list: the manifest's columns and the operator's template fields derive from it.
    assert COLUMNS[:-1] == COPY_ARGUMENTS and COLUMNS[-1] == "label"
    assert set(COPY_ARGUMENTS) <= set(HealthImagingCopyImageSetOperator.template_fields)
    (row,) = validate_manifest(
        b'{"source_image_set_id": "%s", "series_instance_uids": "1.2;1.3"}\n' % (b"a" * 32),
        "m.jsonl",
        default_datastore_id="d" * 32,
    ).rows
    assert row.request == request


def test_the_batch_operator_takes_the_aws_connection_as_arguments_and_deferrable_from_the_config(monkeypatch):
    from types import SimpleNamespace

    from healthimaging.operators import HealthImagingBulkCopyBatchOperator

    settings = BulkCopySettings(aws_conn_id="in_settings", region_name="us-west-2").to_dict()
    context = {"dag": SimpleNamespace(dag_id="d"), "run_id": "r"}
    given = HealthImagingBulkCopyBatchOperator(
        task_id="b",
        batch=1,
        manifest_sha256="s",
        settings=settings,
        aws_conn_id="argument",
        region_name="eu-west-1",
        deferrable=True,
    )
    trigger = given._trigger(context)
    assert (trigger.settings["aws_conn_id"], trigger.settings["region_name"]) == ("argument", "eu-west-1")
    assert settings["aws_conn_id"] == "in_settings"  # the operator's settings are not changed
    unset = HealthImagingBulkCopyBatchOperator(
        task_id="c", batch=1, manifest_sha256="s", settings=settings, region_name=""
    )
    assert (unset._trigger(context).settings["aws_conn_id"], unset._trigger(context).settings["region_name"]) == (
        "in_settings",
        "us-west-2",
    )
    assert {"aws_conn_id", "region_name"} <= set(HealthImagingBulkCopyBatchOperator.template_fields)
    from airflow.providers.common.compat.sdk import conf

    assert unset.deferrable is conf.getboolean("operators", "default_deferrable", fallback=False)


def test_the_ledger_connection_is_read_under_its_name_and_its_earlier_one(monkeypatch, tmp_path):
    from healthimaging.bulk.ledger import CONNECTION_ID, LEGACY_CONNECTION_ID, connection_from_environment, resolve_url

    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONNECTION_ID.upper()}", raising=False)
    monkeypatch.setenv(f"AIRFLOW_CONN_{LEGACY_CONNECTION_ID.upper()}", f"sqlite:///{old}")
    assert str(resolve_url()) == f"sqlite:///{old}"
    assert connection_from_environment() == (LEGACY_CONNECTION_ID, f"sqlite:///{old}")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONNECTION_ID.upper()}", f"sqlite:///{new}")
    assert str(resolve_url()) == f"sqlite:///{new}"
    assert connection_from_environment() == (CONNECTION_ID, f"sqlite:///{new}")
    # Another connection id never falls back to the ledger's earlier name.
    assert str(resolve_url("some_other_ledger")).endswith("healthimaging_ledger.sqlite3")
