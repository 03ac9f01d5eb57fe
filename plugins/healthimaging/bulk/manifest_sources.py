"""Where scheduled bulk copies find their work: new manifests in a folder or S3 prefix, and manifests
built from SearchImageSets over a data interval."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from healthimaging.bulk import storage
from healthimaging.hooks.medical_imaging import HealthImagingHook

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
GENERATED_FOLDER = "generated"
#: The filters a scheduled run can build a manifest from.
SEARCH_FILTERS = ("non_primary_updated", "updated")


def list_manifests(location: str, aws_conn_id: str | None = "aws_default") -> list[str]:
    """Manifest URIs in a local folder or under an S3 prefix (not recursing into report folders), sorted."""
    if storage.is_s3(location):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, prefix = location[len("s3://") :].partition("/")
        keys = S3Hook(aws_conn_id=aws_conn_id).list_keys(bucket_name=bucket, prefix=prefix) or []
        return sorted(
            f"s3://{bucket}/{key}"
            for key in keys
            if key.lower().endswith(MANIFEST_SUFFIXES) and "healthimaging-report-" not in key
        )
    folder = Path(location).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"manifest folder {location} does not exist on this worker")
    return sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)


def search_rows(
    hook: HealthImagingHook, datastore_id: str, kind: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Manifest rows for the image sets a search filter selects in ``[start, end)``.

    ``non_primary_updated``: every non-primary image set updated in the interval, copied and promoted
    to primary. ``updated``: every image set updated in the interval, copied to a new image set.
    """
    if kind not in SEARCH_FILTERS:
        raise ValueError(f"unknown search filter {kind!r}; expected one of {', '.join(SEARCH_FILTERS)}")
    filters: list[dict[str, Any]] = [{"operator": "BETWEEN", "values": [{"updatedAt": start}, {"updatedAt": end}]}]
    if kind == "non_primary_updated":
        filters.append({"operator": "EQUAL", "values": [{"isPrimary": False}]})
    rows = []
    paginator = hook.conn.get_paginator("search_image_sets")
    for page in paginator.paginate(datastoreId=datastore_id, searchCriteria={"filters": filters}):
        for summary in page["imageSetsMetadataSummaries"]:
            if summary["updatedAt"] >= end:  # BETWEEN is inclusive; the interval's end belongs to the next one
                continue
            rows.append(
                {
                    "datastore_id": datastore_id,
                    "source_image_set_id": summary["imageSetId"],
                    "source_version_id": str(summary["version"]),
                    "promote_to_primary": kind == "non_primary_updated",
                    "label": f"scheduled:{kind}",
                }
            )
    return rows


def write_generated(
    location: str, name: str, rows: list[dict[str, Any]], aws_conn_id: str | None = "aws_default"
) -> str:
    """Write rows as a JSON Lines manifest under ``<location>/generated/``; returns its URI."""
    body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    if storage.is_s3(location):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, prefix = location[len("s3://") :].partition("/")
        key = f"{prefix.rstrip('/')}/{GENERATED_FOLDER}/{name}".lstrip("/")
        S3Hook(aws_conn_id=aws_conn_id).load_string(body, key=key, bucket_name=bucket, replace=True)
        return f"s3://{bucket}/{key}"
    folder = Path(location).expanduser() / GENERATED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    return str(path)
