"""botocore's ``medical-imaging`` service model: the contract every request and response follows."""

from __future__ import annotations

import functools

import botocore.session
from botocore.model import OperationModel, ServiceModel

SERVICE_NAME = "medical-imaging"


@functools.cache
def service_model() -> ServiceModel:
    """The service model of the installed botocore (loaded once)."""
    return botocore.session.get_session().get_service_model(SERVICE_NAME)


def operation_model(name: str) -> OperationModel:
    return service_model().operation_model(name)


def error_status(code: str) -> int:
    """HTTP status of an error code as the model declares it (e.g. ServiceQuotaExceededException -> 402)."""
    shape = service_model().shape_for(code)
    return int(shape.metadata["error"]["httpStatusCode"])
