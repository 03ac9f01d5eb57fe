"""Operators: copy one image set, and copy one batch of a bulk-copy manifest.

The names are re-exported here: ``from healthimaging.operators import ...`` is the public path
(DAGs in the field use it); the code lives in :mod:`healthimaging.operators.medical_imaging`.
"""

from healthimaging.operators.medical_imaging import (  # noqa: F401 - the public path
    COPY_STATE_KEY,
    HealthImagingBulkCopyBatchOperator,
    HealthImagingCopyImageSetOperator,
)

__all__ = [
    "COPY_STATE_KEY",
    "HealthImagingCopyImageSetOperator",
    "HealthImagingBulkCopyBatchOperator",
]
