"""Sensors: wait for an image set to settle.

The names are re-exported here: ``from healthimaging.sensors import ...`` is the public path
(DAGs in the field use it); the code lives in :mod:`healthimaging.sensors.medical_imaging`.
"""

from healthimaging.sensors.medical_imaging import (  # noqa: F401 - the public path
    HealthImagingImageSetSensor,
)

__all__ = [
    "HealthImagingImageSetSensor",
]
