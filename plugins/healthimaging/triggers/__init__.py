"""Deferrable triggers: an image set's status, and a bulk-copy batch run in the triggerer.

The names are re-exported here: ``from healthimaging.triggers import ...`` is the public path
(DAGs in the field use it); the code lives in :mod:`healthimaging.triggers.medical_imaging`.
"""

from healthimaging.triggers.medical_imaging import (  # noqa: F401 - the public path
    HealthImagingBulkCopyTrigger,
    HealthImagingImageSetTrigger,
)

__all__ = [
    "HealthImagingImageSetTrigger",
    "HealthImagingBulkCopyTrigger",
]
