"""Completion reports in the style of S3 Batch Operations: ``report.json`` plus one CSV per outcome.

Cells of the CSVs that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
tab or carriage return: a label or id such as ``=HYPERLINK(...)``) get a leading apostrophe, as the
OWASP "CSV Injection" page advises; ``report.json`` keeps every value exact.

``report.json`` holds counts (every manifest row is accounted for: succeeded + failed + rejected +
skipped (+ planned, in a dry run) = rows), throughput, latency percentiles and the error breakdown.
The CSVs list ids, versions, codes and messages; never patient data.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from healthimaging.bulk.ledger import FAILED, PLANNED, REJECTED, SKIPPED, SUCCEEDED

CSV_COLUMNS = (
    "row_number",
    "label",
    "datastore_id",
    "source_image_set_id",
    "source_version_id",
    "destination_image_set_id",
    "destination_version_id",
    "copy_kind",
    "force",
    "promote_to_primary",
    "status",
    "error_code",
    "message",
    "attempts",
    "submitted_at",
    "completed_at",
    "verified",
)
#: The CSV file of each status.
OUTCOME_FILES = {
    SUCCEEDED: "succeeded.csv",
    FAILED: "failed.csv",
    REJECTED: "rejected.csv",
    SKIPPED: "skipped.csv",
    PLANNED: "plan.csv",
}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation, or None without values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return (
        statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]
        if q < 100
        else max(values)
    )


def failure_percent(counts: Mapping[str, int]) -> float:
    """The failure share a run is judged by: failed over attempted (succeeded, failed, and planned: a dry run
    attempts a plan for each row), in percent, to three decimals."""
    attempted = counts.get(SUCCEEDED, 0) + counts.get(FAILED, 0) + counts.get(PLANNED, 0)
    return round(100.0 * counts.get(FAILED, 0) / attempted, 3) if attempted else 0.0


def summarize(
    rows: list[dict[str, Any]],
    *,
    dag_id: str,
    run_id: str,
    manifest_uri: str,
    manifest_sha256: str,
    total_rows: int,
    dry_run: bool = False,
    tolerated_failure_percent: float = 0.0,
) -> dict[str, Any]:
    """The content of report.json."""
    counts = Counter(row["status"] for row in rows)
    latencies = sorted(
        row["completed_at"] - row["submitted_at"]
        for row in rows
        if row["status"] == SUCCEEDED and row.get("completed_at") and row.get("submitted_at")
    )
    submitted = [row["submitted_at"] for row in rows if row.get("submitted_at")]
    completed = [
        row["completed_at"] for row in rows if row.get("completed_at") and row["status"] in (SUCCEEDED, FAILED)
    ]
    span = (max(completed) - min(submitted)) if submitted and completed else None
    accounted = sum(counts[s] for s in (SUCCEEDED, FAILED, REJECTED, SKIPPED, PLANNED))
    return {
        "dagId": dag_id,
        "runId": run_id,
        "manifest": {"uri": manifest_uri, "sha256": manifest_sha256, "rows": total_rows},
        "dryRun": dry_run,
        "counts": {
            "succeeded": counts[SUCCEEDED],
            "failed": counts[FAILED],
            "rejected": counts[REJECTED],
            "skipped": counts[SKIPPED],
            "planned": counts[PLANNED],
            "unfinished": len(rows) - accounted,
            "accountedFor": accounted,
        },
        "allRowsAccountedFor": accounted == total_rows,
        "failurePercent": failure_percent(counts),
        "toleratedFailurePercent": tolerated_failure_percent,
        "throughput": {
            "copiesPerSecond": round(counts[SUCCEEDED] / span, 4) if span else None,
            "copiesPerHour": round(3600 * counts[SUCCEEDED] / span, 1) if span else None,
            "wallSeconds": round(span, 3) if span else None,
        },
        "latencySeconds": {
            "p50": _round(percentile(latencies, 50)),
            "p90": _round(percentile(latencies, 90)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies) if latencies else None),
        },
        "errors": dict(Counter(row["error_code"] or "Unknown" for row in rows if row["status"] in (FAILED, REJECTED))),
        # CopyImageSet sends refused (throttled, or over the copies in progress) and sent again
        "refusedSends": sum(row.get("throttles") or 0 for row in rows),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


#: What starts a formula in Excel, LibreOffice and Google Sheets (OWASP, "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a leading apostrophe before anything that starts a formula."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    out = io.StringIO()
    # RFC 4180's CRLF: with "\n" alone the writer would leave a carriage return inside a value unquoted,
    # and every reader would split the row there.
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: spreadsheet_safe(row.get(column)) for column in CSV_COLUMNS})
    return out.getvalue()


def report_files(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """File name → content of a run's report."""
    files = {"report.json": json.dumps(summary, indent=2, sort_keys=True)}
    statuses = (PLANNED, FAILED, REJECTED, SKIPPED) if summary.get("dryRun") else (SUCCEEDED, FAILED, REJECTED, SKIPPED)
    for status in statuses:
        files[OUTCOME_FILES[status]] = to_csv(row for row in rows if row["status"] == status)
    return files


def write_local(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder
