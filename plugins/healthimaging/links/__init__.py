"""Operator extra links: the HealthImaging console page of an image set.

The names are re-exported here: ``from healthimaging.links import ...`` is the public path
(DAGs in the field use it); the code lives in :mod:`healthimaging.links.medical_imaging`.
"""

from healthimaging.links.medical_imaging import (  # noqa: F401 - the public path
    HealthImagingImageSetLink,
)

__all__ = [
    "HealthImagingImageSetLink",
]
