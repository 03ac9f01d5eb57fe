"""The settings of a bulk copy, in one place: the engine's :class:`BulkCopySettings` and a run's
:class:`BulkRunOptions`. Both DAGs' trigger-form Params are built from these fields (a Param's name is
its field's name), and a run's params are read back into them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from healthimaging.bulk.ledger import LEASE_SECONDS
from healthimaging.copy.service_model import anchored

#: CopyImageSet's default quota: 0.25 requests per second (900 an hour), burst 1 (Service Quotas,
#: "AWS HealthImaging endpoints and quotas", https://docs.aws.amazon.com/general/latest/gr/healthimaging.html).
DEFAULT_COPIES_PER_SECOND = 0.25
DEFAULT_BURST = 1.0
#: The service's limit of copies in progress per data store (same page; adjustable on request).
SERVICE_MAX_COPIES_IN_FLIGHT = 100
#: GetImageSet's default quota, requests per second (same page); the engine's polls use a share of it.
DEFAULT_GET_IMAGE_SET_PER_SECOND = 25.0
#: Field names of settings from before they were named like the Params (a trigger deferred before the
#: rename carries them in its kwargs).
RENAMED = {
    "max_in_flight": "max_copies_in_flight",
    "poll_interval": "poll_interval_seconds",
    "progress_interval": "progress_interval_seconds",
}


def setting(default: Any, title: str, description: str | None = None, **schema: Any) -> Any:
    """A field that is also a trigger-form Param: its title, description and JSON Schema constraints."""
    return field(default=default, metadata={"param": {"title": title, "description": description, **schema}})


@dataclass
class BulkCopySettings:
    """How the engine copies; JSON-serializable (it travels in the trigger's kwargs)."""

    copies_per_second: float = setting(
        DEFAULT_COPIES_PER_SECOND,
        "CopyImageSet rate limit (per second)",
        "Shared by every worker and run. AWS's default quota is 0.25/s (900 an hour).",
        type="number",
        exclusiveMinimum=0,
        maximum=100,
    )
    burst: float = setting(DEFAULT_BURST, "Rate limit burst", type="number", minimum=1, maximum=100)
    adapt_rate: bool = setting(
        True,
        "Find the rate",
        "When most sends are throttled, lower the shared rate (and climb back slowly): a rate set above your "
        "quota settles near it. Off: the configured rate, throttled or not.",
        type="boolean",
    )
    max_copies_in_flight: int = setting(
        SERVICE_MAX_COPIES_IN_FLIGHT,
        "Max copies in flight",
        "Per data store, across the deployment: the service's limit of copies in progress (100 unless AWS "
        "raised it for your account).",
        type="integer",
        minimum=1,
        maximum=100_000,
    )
    get_image_set_per_second: float = setting(
        DEFAULT_GET_IMAGE_SET_PER_SECOND,
        "GetImageSet quota (per second)",
        "Your account's; half of it is shared by the polls of every engine, the rest is left for other reads.",
        type="number",
        exclusiveMinimum=0,
        maximum=100_000,
    )
    skip_already_copied: bool = setting(
        True,
        "Skip rows already copied",
        "Rows an earlier run copied (same source, version and target) are skipped.",
        type="boolean",
    )
    verify_copies: bool = setting(
        True,
        "Verify copies",
        "Check that each destination holds exactly the SOP instances meant to be copied.",
        type="boolean",
    )
    aws_conn_id: str = setting("aws_default", "AWS connection id", type="string", minLength=1)
    region_name: str | None = setting(None, "AWS region", "Empty: the connection's region.", type="string")
    poll_interval_seconds: float = setting(
        5.0,
        "Longest poll interval (seconds)",
        "Copies are polled when the ones done so far say they end; never less often than this.",
        type="number",
        minimum=0.1,
        maximum=300,
    )
    progress_interval_seconds: float = setting(
        30.0, "Progress log interval (seconds)", type="number", minimum=1, maximum=3600
    )
    rate_limit_name: str = "CopyImageSet"
    max_submit_attempts: int = 8
    #: ``[healthimaging] lease_seconds`` (``AIRFLOW__HEALTHIMAGING__LEASE_SECONDS``), not a Param.
    lease_seconds: float = LEASE_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkCopySettings:
        """Settings from :meth:`to_dict`, also under the field names used before the rename."""
        return cls(**{RENAMED.get(key, key): value for key, value in data.items()})

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BulkCopySettings:
        """The engine's settings from a run's params; the lease length from ``[healthimaging] lease_seconds``."""
        from airflow.sdk.configuration import conf

        return cls(
            **values_from(cls, params),
            lease_seconds=conf.getfloat("healthimaging", "lease_seconds", fallback=LEASE_SECONDS),
        )


@dataclass
class BulkRunOptions:
    """What a run does with its manifest, besides how the engine copies."""

    default_datastore_id: str | None = setting(
        None,
        "Default data store id",
        "Used for rows whose datastore_id is empty.",
        type="string",
        pattern=anchored("DatastoreId", empty_allowed=True),
    )
    dry_run: bool = setting(
        False, "Dry run", "Check every row against the data store and write the plan; copy nothing.", type="boolean"
    )
    strict: bool = setting(
        False, "Strict", "Fail the run before copying if any manifest row is invalid.", type="boolean"
    )
    tolerated_failure_percent: float = setting(
        0.0,
        "Tolerated failure percent",
        "The run fails if a larger share of attempted copies fails.",
        type="number",
        minimum=0,
        maximum=100,
    )
    batch_size: int = setting(
        250,
        "Rows per batch",
        "Each batch is one task instance (raised automatically to keep batches under 500).",
        type="integer",
        minimum=1,
        maximum=100_000,
    )
    report_folder: str | None = setting(
        None,
        "Report folder",
        "A folder inside the report root ([healthimaging] report_folder, default "
        "$AIRFLOW_HOME/healthimaging_reports), relative or absolute under it; empty: the root.",
        type="string",
    )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> BulkRunOptions:
        return cls(**values_from(cls, params))


def values_from(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The Param fields of ``cls`` read from ``params``, typed; a missing or empty optional value is None."""
    values = {}
    for spec in fields(cls):
        if "param" not in spec.metadata or spec.name not in params:
            continue
        value = params[spec.name]
        kind = spec.metadata["param"]["type"]
        if value in (None, "") and kind == "string":
            values[spec.name] = spec.default
        else:
            values[spec.name] = {"number": float, "integer": int, "boolean": bool, "string": str}[kind](value)
    return values


def trigger_form(*, defaults: dict[str, Any] | None = None, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The trigger-form Params of every setting and run option (``defaults`` replace a field's default)."""
    from airflow.sdk import Param

    defaults = defaults or {}
    params = {}
    for cls in (BulkRunOptions, BulkCopySettings):
        for spec in fields(cls):
            if "param" not in spec.metadata or spec.name in exclude:
                continue
            default = defaults.get(spec.name, spec.default)
            schema = {k: v for k, v in spec.metadata["param"].items() if v is not None}
            params[spec.name] = Param("" if default is None else default, **schema)
    return params
