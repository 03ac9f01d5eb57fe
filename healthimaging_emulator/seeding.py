"""Seed data: ``sample`` (pydicom's bundled test files in a data store named ``demo``) and
``synthetic:N`` (N image sets with unique, consistent DICOM UIDs in a data store named ``synthetic``)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from itertools import islice

from healthimaging_emulator import dicom_metadata
from healthimaging_emulator.backend import HealthImagingBackend

log = logging.getLogger(__name__)

SAMPLE_DATASTORE = "demo"
SYNTHETIC_DATASTORE = "synthetic"
SYNTHETIC_BATCH = 5000
#: One synthetic image set in this many is non-primary, so that isPrimary filters have something to find.
SYNTHETIC_NON_PRIMARY_EVERY = 10


@dataclass
class SeedResult:
    datastore_id: str
    datastore_name: str
    image_sets: int
    created: bool
    seconds: float


def parse_seed(spec: str) -> tuple[str, int]:
    """``sample`` → ("sample", 0); ``synthetic:N`` → ("synthetic", N); ValueError otherwise."""
    if spec == "sample":
        return "sample", 0
    if spec.startswith("synthetic:"):
        count = spec.split(":", 1)[1]
        if count.isdigit() and int(count) > 0:
            return "synthetic", int(count)
    raise ValueError(f"--seed {spec!r}: expected 'sample' or 'synthetic:N' with N a whole number > 0")


def _existing(backend: HealthImagingBackend, name: str) -> tuple[str, int] | None:
    with backend.store.reading() as db:
        row = db.execute("SELECT datastore_id FROM datastores WHERE name = ? AND status = 'ACTIVE'", (name,)).fetchone()
        if row is None:
            return None
        (count,) = db.execute("SELECT COUNT(*) FROM image_sets WHERE datastore_id = ?", (row[0],)).fetchone()
    return row[0], count


def seed(backend: HealthImagingBackend, spec: str) -> SeedResult:
    """Apply one seed; a data store of the same name that already exists is kept as it is."""
    kind, count = parse_seed(spec)
    name = SAMPLE_DATASTORE if kind == "sample" else SYNTHETIC_DATASTORE
    started = time.monotonic()
    existing = _existing(backend, name)
    if existing is not None:
        return SeedResult(existing[0], name, existing[1], False, time.monotonic() - started)
    datastore_id = backend.create_datastore_now(name)
    if kind == "sample":
        documents, rejected = dicom_metadata.documents_from_files(dicom_metadata.pydicom_sample_files())
        created = len(backend.import_documents(datastore_id, documents))
        log.info("sample seed: %d image sets, %d files skipped", created, len(rejected))
    else:
        created = 0
        documents = dicom_metadata.synthetic_documents(count, seed=0)
        while batch := list(islice(documents, SYNTHETIC_BATCH)):
            offset = created
            backend.insert_image_sets(
                datastore_id,
                (d.document for d in batch),
                is_primary=lambda i, offset=offset: (
                    (offset + i) % SYNTHETIC_NON_PRIMARY_EVERY != SYNTHETIC_NON_PRIMARY_EVERY - 1
                ),
                level=1,
                id_for=lambda i, offset=offset: hashlib.md5(f"synthetic:{offset + i}".encode()).hexdigest(),
            )
            created += len(batch)
    return SeedResult(datastore_id, name, created, True, time.monotonic() - started)
