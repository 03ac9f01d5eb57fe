"""The steps of a bulk-copy run, as plain functions the DAGs' tasks call: prepare, dry-run plan, finish."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from healthimaging.bulk import report, storage
from healthimaging.bulk.engine import PACE_MARGIN, register_manifest, state_line
from healthimaging.bulk.ledger import FAILED, PENDING, PLANNED, REJECTED, SKIPPED, Ledger
from healthimaging.bulk.manifest import ManifestError, validate_manifest
from healthimaging.bulk.manifest_reader import MAX_MANIFEST_BYTES
from healthimaging.bulk.settings import BulkCopySettings, BulkRunOptions, values_from
from healthimaging.copy import states
from healthimaging.copy.consistency import disagreements
from healthimaging.copy.copiable_attributes import CopyRequestError, selection_of
from healthimaging.copy.plan import resolve_plan
from healthimaging.copy.request import CopyRequest
from healthimaging.hooks.medical_imaging import HealthImagingHook, series_instances

log = logging.getLogger(__name__)

#: Batches per run at most: far below ``[core] max_map_length`` (1024), so 100,000 rows need no setting.
MAX_BATCHES = 500


class BulkCopyRunError(Exception):
    """The run cannot go on (bad manifest, strict mode, too many failures); the message says why."""


def prepare(
    ledger: Ledger, *, dag_id: str, run_id: str, params: dict[str, Any], manifest_uri: str | None = None
) -> dict[str, Any]:
    """Read and validate a manifest (``params["manifest"]`` unless given) and record every row in the
    ledger; returns what the next tasks need. Copies a dead run left in flight are resumed (see
    :func:`~healthimaging.bulk.engine.register_manifest`)."""
    uri = manifest_uri or params["manifest"]
    options, settings = BulkRunOptions.from_params(params), BulkCopySettings.from_params(params)
    report_folder(params, dag_id, run_id, uri)  # a report folder outside the root fails the run before any copy
    try:
        data = storage.read_bytes(uri, params.get("aws_conn_id"), max_bytes=MAX_MANIFEST_BYTES)
        validated = validate_manifest(data, uri, default_datastore_id=options.default_datastore_id)
    except ManifestError as exc:
        raise BulkCopyRunError(f"manifest {uri}: {exc}") from exc
    for _, _, errors in validated.rejected[:50]:
        for error in errors:
            log.warning("manifest %s: %s", uri, error)
    if len(validated.rejected) > 50:
        log.warning("manifest %s: %d more rejected rows; see rejected.csv", uri, len(validated.rejected) - 50)
    batch_size = max(options.batch_size, math.ceil(len(validated.rows) / MAX_BATCHES) or 1)
    registered = register_manifest(
        ledger,
        dag_id=dag_id,
        run_id=run_id,
        manifest_uri=uri,
        validated=validated,
        batch_size=batch_size,
        skip_copied=settings.skip_already_copied,
    )
    log.info(
        "manifest %s: %d rows: %d to copy in %d batches of up to %d, %d rejected, %d already copied",
        uri,
        registered.total_rows,
        registered.pending,
        len(registered.batches),
        batch_size,
        registered.rejected,
        registered.skipped,
    )
    prepared = {
        "manifest_uri": uri,
        "manifest_sha256": validated.sha256,
        "total_rows": validated.total_rows,
        "dry_run": options.dry_run,
        "batches": [] if options.dry_run else registered.batches,
        "settings": settings.to_dict(),
        "rejected": registered.rejected,
    }
    if options.strict and registered.rejected:
        # Nothing is copied; the valid rows are recorded as skipped so that every row is accounted for.
        ledger.skip_pending(
            dag_id,
            run_id,
            validated.sha256,
            error_code="StrictMode",
            message=f"not copied: strict mode and {registered.rejected} manifest rows are invalid",
        )
        raise BulkCopyRunError(
            f"strict mode: {registered.rejected} of {registered.total_rows} manifest rows are invalid "
            f"(first: {validated.errors[0]}); nothing was copied. Fix them or run without strict."
        )
    return prepared


def plan(ledger: Ledger, *, dag_id: str, run_id: str, prepared: dict[str, Any]) -> dict[str, int]:
    """The dry run: check every pending row against the data store and mark it planned (or failed, with why)."""
    settings = BulkCopySettings.from_dict(prepared["settings"])
    hook = HealthImagingHook(aws_conn_id=settings.aws_conn_id, region_name=settings.region_name)
    rows = [r for r in ledger.run_rows(dag_id, run_id, prepared["manifest_sha256"]) if r["status"] == PENDING]
    outcome = {"planned": 0, "failed": 0}
    for row in rows:
        status, code, message, kind = _plan_row(hook, json.loads(row["request_json"]))
        ledger.update(
            dag_id,
            run_id,
            prepared["manifest_sha256"],
            row["row_number"],
            status=status,
            error_code=code,
            message=message,
            copy_kind=kind,
        )
        log.info(state_line("copy_state", row, status=status, error_code=code))
        outcome["planned" if status == PLANNED else "failed"] += 1
    return outcome


def _plan_row(hook: HealthImagingHook, request: dict[str, Any]) -> tuple[str, str | None, str, str | None]:
    """(status, error code, message, copy kind) for one row of a dry run."""
    try:
        copy = resolve_plan(hook, CopyRequest.from_mapping(request))
        source = hook.get_image_set(copy.datastore_id, copy.source_image_set_id, copy.source_version_id)
        problems = []
        if source["imageSetState"] != states.ACTIVE:
            problems.append(f"the source is {source['imageSetState']}")
        if copy.source_version_pinned:
            latest = hook.get_latest_version_id(copy.datastore_id, copy.source_image_set_id)
            if latest != copy.source_version_id:
                problems.append(f"source version {copy.source_version_id} is not the latest ({latest})")
        notes = []
        if copy.destination_image_set_id:
            destination = hook.get_image_set(copy.datastore_id, copy.destination_image_set_id)
            if destination["imageSetState"] != states.ACTIVE:
                problems.append(f"the destination is {destination['imageSetState']}")
            if copy.destination_version_pinned and destination["versionId"] != copy.destination_version_id:
                problems.append(
                    f"destination version {copy.destination_version_id} is not the latest ({destination['versionId']})"
                )
            source_doc = hook.get_image_set_metadata(
                copy.datastore_id, copy.source_image_set_id, copy.source_version_id
            )
            destination_doc = hook.get_image_set_metadata(
                copy.datastore_id, copy.destination_image_set_id, copy.destination_version_id
            )
            series = (
                sorted(selection_of(json.loads(copy.copiable_attributes)))
                if copy.copiable_attributes
                else sorted(series_instances(source_doc))
            )
            differing = disagreements(source_doc, destination_doc, series)
            if differing and not copy.force:
                return (
                    FAILED,
                    "ForceRequired",
                    f"metadata disagree at {'; '.join(differing)}: the copy would end COPY_FAILED without force",
                    copy.copy_kind,
                )
            if differing:
                notes.append(f"force overrides {'; '.join(differing)}")
        if problems:
            return FAILED, "NotCopyable", "; ".join(problems), copy.copy_kind
        frames = f", {copy.frame_count} frames" if copy.frame_count is not None else ""
        return (
            PLANNED,
            None,
            f"would copy ({copy.copy_kind}{frames})" + (f"; {'; '.join(notes)}" if notes else ""),
            copy.copy_kind,
        )
    except CopyRequestError as exc:
        return FAILED, "InvalidCopyRequest", str(exc), None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        return FAILED, error.get("Code", "ClientError"), error.get("Message", str(exc)), None
    except BotoCoreError as exc:
        return FAILED, type(exc).__name__, str(exc), None


def safe_name(name: str, limit: int = 120) -> str:
    """A name that is one harmless path segment: letters, digits and ``-_.+`` only, never ``.``/``..``
    or hidden, at most ``limit`` characters (a longer name keeps a digest of the rest)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.+") else "_" for c in name)
    if not safe or safe.startswith("."):
        safe = "_" + safe
    if len(safe) > limit:
        safe = safe[: limit - 17] + "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return safe


def report_root() -> Path:
    """The folder every report is written under: ``[healthimaging] report_folder``
    (``AIRFLOW__HEALTHIMAGING__REPORT_FOLDER``), default ``$AIRFLOW_HOME/healthimaging_reports``."""
    from airflow.sdk.configuration import conf

    configured = conf.get("healthimaging", "report_folder", fallback="") or os.path.join(
        os.environ.get("AIRFLOW_HOME", "."), "healthimaging_reports"
    )
    return Path(configured).expanduser().resolve()


def report_folder(params: dict[str, Any], dag_id: str, run_id: str, manifest_uri: str | None = None) -> Path:
    """``<report root>/<report_folder param>/<dag_id>/<run_id>`` (plus the manifest's name when a run
    handles several), every part sanitised; the ``report_folder`` param may name a folder inside the
    root (relative, or absolute under it), never one outside it."""
    root = report_root()
    chosen = BulkRunOptions.from_params(params).report_folder or ""
    base = (root / Path(chosen).expanduser()).resolve()
    if not base.is_relative_to(root):
        raise BulkCopyRunError(
            f"report_folder {chosen!r} is outside the report folder {root}: give a folder inside it "
            "(or a name relative to it), or set [healthimaging] report_folder "
            "(AIRFLOW__HEALTHIMAGING__REPORT_FOLDER) to move the root"
        )
    folder = base / safe_name(dag_id) / safe_name(run_id)
    if manifest_uri:
        folder = folder / safe_name(PurePosixPath(manifest_uri).name)
    if not folder.resolve().is_relative_to(root):  # a symbolic link inside the root pointing out of it
        raise BulkCopyRunError(f"the report folder {folder} leads outside {root} (a symbolic link?); remove the link")
    return folder


def finish(
    ledger: Ledger,
    *,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    prepared: dict[str, Any] | None,
    per_manifest_folder: bool = False,
) -> dict[str, Any]:
    """Write the report of one manifest of a run (locally, and next to an S3 manifest); returns the summary."""
    manifest_uri = (prepared or {}).get("manifest_uri") or params.get("manifest", "")
    options = BulkRunOptions.from_params(params)
    rows = ledger.run_rows(dag_id, run_id, (prepared or {}).get("manifest_sha256"))
    summary = report.summarize(
        rows,
        dag_id=dag_id,
        run_id=run_id,
        manifest_uri=manifest_uri,
        manifest_sha256=(prepared or {}).get("manifest_sha256") or (rows[0]["manifest_sha256"] if rows else ""),
        total_rows=(prepared or {}).get("total_rows", len(rows)),
        dry_run=options.dry_run,
        tolerated_failure_percent=options.tolerated_failure_percent,
    )
    files = report.report_files(rows, summary)
    folder = report.write_local(
        report_folder(params, dag_id, run_id, manifest_uri if per_manifest_folder else None), files
    )
    summary["reportFolder"] = str(folder)
    summary["ledger"] = str(ledger.engine.url.render_as_string(hide_password=True))
    summary["copyRate"] = copy_rate(ledger, params)
    if prepared:
        remote = storage.write_next_to(
            manifest_uri, f"healthimaging-report-{safe_name(run_id)}", files, params.get("aws_conn_id")
        )
        if remote:
            summary["reportS3"] = remote
    (folder / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    counts = summary["counts"]
    rate = summary["copyRate"]
    if rate["foundPerSecond"] is not None and rate["foundPerSecond"] < rate["configuredPerSecond"]:
        log.warning(
            "run %s: CopyImageSet was throttled at the configured %.3f/s; the shared rate found is %.3f/s: set "
            "copies_per_second to your account's quota (Service Quotas) to start there",
            run_id,
            rate["configuredPerSecond"],
            rate["foundPerSecond"],
        )
    log.info(
        "run %s: %d rows: %d succeeded, %d failed, %d rejected, %d skipped, %d planned, %d unfinished; report in %s",
        run_id,
        summary["manifest"]["rows"],
        counts["succeeded"],
        counts["failed"],
        counts["rejected"],
        counts["skipped"],
        counts["planned"],
        counts["unfinished"],
        folder,
    )
    return summary


def copy_rate(ledger: Ledger, params: dict[str, Any]) -> dict[str, Any]:
    """The CopyImageSet rate of the run: configured, and the shared bucket's rate at the end (lowered while the
    service throttled; see healthimaging.bulk.rate_limit), both in copies a second as ``copies_per_second``."""
    settings = BulkCopySettings(**values_from(BulkCopySettings, params))
    state = ledger.bucket_rate(settings.rate_limit_name)
    return {
        "configuredPerSecond": settings.copies_per_second,
        "foundPerSecond": None if state is None else round(min(state[0] / PACE_MARGIN, settings.copies_per_second), 3),
    }


def verdict(summary: dict[str, Any]) -> str | None:
    """Why the run must fail, or None: failures over the tolerated share, or rows left unfinished."""
    counts = summary["counts"]
    if (
        not summary["dryRun"]
        and counts["rejected"]
        and not (counts["succeeded"] + counts["failed"] + counts["skipped"])
    ):
        return (
            f"all {counts['rejected']} manifest rows were rejected; see rejected.csv in {summary.get('reportFolder')}"
        )
    if counts["unfinished"]:
        return f"{counts['unfinished']} rows did not finish; re-run the DAG with the same manifest to resume them"
    if summary["failurePercent"] > summary["toleratedFailurePercent"]:
        return (
            f"{counts['failed']} copies failed ({summary['failurePercent']:.2f}% of attempted), more than the "
            "tolerated "
            f"{summary['toleratedFailurePercent']}%; see failed.csv in {summary.get('reportFolder')}"
        )
    return None


def datastore_summaries(ledger: Ledger, dag_id: str, run_id: str) -> dict[str, dict[str, int]]:
    """Per data store, the run's row counts by status (the extra of its Asset event)."""
    return ledger.datastore_counts(dag_id, run_id)


__all__ = ["BulkCopyRunError", "REJECTED", "SKIPPED", "datastore_summaries", "finish", "plan", "prepare", "verdict"]
