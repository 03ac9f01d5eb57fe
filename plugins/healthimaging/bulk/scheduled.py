"""The steps of a scheduled run that handle several manifests, each isolated from the others.

One manifest that cannot be read, validated or registered is reported for itself (an ``error``
entry) and released in the ledger, and the run goes on with the others; the released manifest is
taken again by a later run once its content changed. Only trouble reaching the ledger itself fails
the task (and is retried): it is no manifest's fault and would hit every manifest alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import exc as sa_exc

from healthimaging.bulk import storage
from healthimaging.bulk.ledger import Ledger
from healthimaging.bulk.manifest import storable_text
from healthimaging.bulk.manifest_reader import MAX_MANIFEST_BYTES, ManifestError
from healthimaging.bulk.run import BulkCopyRunError, prepare

log = logging.getLogger(__name__)

#: Errors of the ledger's database connection: the task fails and Airflow retries it.
LEDGER_UNREACHABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def failure_entry(uri: str, error: BaseException | str) -> dict[str, str]:
    """What the run reports for a manifest it could not copy (URI and message safe to store and log)."""
    if isinstance(error, (BulkCopyRunError, ManifestError, FileNotFoundError)):
        message = str(error).removeprefix(f"manifest {uri}: ")  # the entry names the manifest already
    else:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"manifest_uri": storable_text(uri), "error": storable_text(message)[:2000]}


def isolated(uri: str, step: Callable[[], Any]) -> tuple[Any, dict[str, str] | None]:
    """(result, None), or (None, the failure entry) when the step raised anything but a ledger outage."""
    try:
        return step(), None
    except LEDGER_UNREACHABLE:
        raise
    except Exception as error:  # noqa: BLE001 - any error in one manifest is that manifest's, reported below
        log.error("manifest %s not copied: %s", storable_text(uri), storable_text(str(error)))
        return None, failure_entry(uri, error)


def take_manifests(
    ledger: Ledger, candidates: Iterable[str], *, dag_id: str, run_id: str, aws_conn_id: str | None
) -> list[dict[str, str]]:
    """The candidates this run takes (``{"manifest_uri"}``) and those it could not read (``{.., "error"}``);
    manifests another run took, or released and unchanged since, are left out."""
    entries = []
    for uri in candidates:

        def take(uri: str = uri) -> bool:
            digest = hashlib.sha256(storage.read_bytes(uri, aws_conn_id, max_bytes=MAX_MANIFEST_BYTES)).hexdigest()
            return ledger.take_manifest(uri, digest, dag_id, run_id)

        taken, failure = isolated(uri, take)
        if failure is not None:
            entries.append(failure)
        elif taken:
            entries.append({"manifest_uri": uri})
    return entries


def prepare_manifests(
    ledger: Ledger, manifests: Iterable[dict[str, str]], *, dag_id: str, run_id: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Prepare each taken manifest (see :func:`~healthimaging.bulk.run.prepare`); a manifest that fails is
    released and reported, the others go on."""
    prepared = []
    for entry in manifests:
        if "error" in entry:
            prepared.append({**entry, "batches": []})
            continue
        uri = entry["manifest_uri"]
        result, failure = isolated(
            uri, lambda uri=uri: prepare(ledger, dag_id=dag_id, run_id=run_id, params=params, manifest_uri=uri)
        )
        if failure is not None:
            ledger.release_manifest(uri, run_id, failure["error"])
            prepared.append({**failure, "batches": []})
        else:
            prepared.append(result)
    return prepared
