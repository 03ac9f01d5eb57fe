"""The HealthImaging state machine: one method per operation, no HTTP.

Methods take the operation's input members (names as in the service model) and return its output
members. Asynchronous work (copies, metadata updates, deletes, imports, data store creation) is a
row in the ``jobs`` table with a due time; ``run_due_jobs`` completes it. Behaviours that AWS does not
document are marked [I] and listed in README.md.

One module per resource, each a mixin over ``core.BackendCore`` (the shared state and helpers):
``datastores``, ``image_set_reads`` (get, metadata, frame, versions, search), ``copies``,
``image_set_writes`` (update, delete), ``imports``, ``tags``. ``service.HealthImagingBackend`` composes
them, dispatches ``call`` and runs the due jobs.
"""

from healthimaging_emulator.backend.copies import INJECTED_COPY_FAILURE
from healthimaging_emulator.backend.core import DEFAULT_PAGE_SIZE, compress, decompress, new_id
from healthimaging_emulator.backend.image_set_reads import STORAGE_TIER
from healthimaging_emulator.backend.image_set_writes import apply_dicom_updates
from healthimaging_emulator.backend.service import HealthImagingBackend
from healthimaging_emulator.exceptions import HealthImagingError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "INJECTED_COPY_FAILURE",
    "STORAGE_TIER",
    "HealthImagingBackend",
    "HealthImagingError",
    "apply_dicom_updates",
    "compress",
    "decompress",
    "new_id",
]
