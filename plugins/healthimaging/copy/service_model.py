"""Facts read from botocore's HealthImaging service model (the contract), not restated here."""

from __future__ import annotations

import functools

import botocore.session
from botocore.model import ServiceModel


@functools.cache
def service_model() -> ServiceModel:
    """The ``medical-imaging`` service model botocore ships (a local file: no client, no network)."""
    return botocore.session.get_session().get_service_model("medical-imaging")


def pattern(shape: str) -> str:
    """The regular expression a string shape must match, e.g. ``[0-9a-z]{32}`` for ``ImageSetId``."""
    return service_model().shape_for(shape).metadata["pattern"]


def anchored(shape: str, *, empty_allowed: bool = False) -> str:
    """A JSON Schema ``pattern`` (anchored; with ``empty_allowed``, also the empty string) for a trigger form."""
    return ("^$|" if empty_allowed else "") + f"^(?:{pattern(shape)})$"


def max_length(shape: str) -> int | None:
    """The longest string a shape allows (botocore's ``max``), e.g. 512 for ``DICOMSeriesInstanceUID``."""
    return service_model().shape_for(shape).metadata.get("max")
