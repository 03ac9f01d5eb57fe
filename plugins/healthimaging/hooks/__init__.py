"""The HealthImaging hook (``medical_imaging``) and its custom waiters (``waiters/``).

The names are re-exported here: ``from healthimaging.hooks import ...`` is the public path
(DAGs in the field use it); the code lives in :mod:`healthimaging.hooks.medical_imaging`.
"""

from healthimaging.hooks.medical_imaging import (  # noqa: F401 - the public path
    NO_RETRIES,
    NO_RETRY_CONNECT_TIMEOUT_SECONDS,
    NO_RETRY_READ_TIMEOUT_SECONDS,
    HealthImagingHook,
    series_instances,
    sop_instance_uids,
)

__all__ = [
    "NO_RETRIES",
    "NO_RETRY_CONNECT_TIMEOUT_SECONDS",
    "NO_RETRY_READ_TIMEOUT_SECONDS",
    "HealthImagingHook",
    "sop_instance_uids",
    "series_instances",
]
