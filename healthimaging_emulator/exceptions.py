"""The service's error codes, one class each; status codes come from the service model."""

from __future__ import annotations

from healthimaging_emulator.service_model import error_status


class HealthImagingError(Exception):
    """An AWS error response: ``code`` goes to ``x-amzn-ErrorType``, ``message`` to the body."""

    code: str = "InternalServerException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def status(self) -> int:
        return error_status(self.code)


class ThrottlingException(HealthImagingError):
    code = "ThrottlingException"


class ConflictException(HealthImagingError):
    code = "ConflictException"


class AccessDeniedException(HealthImagingError):
    code = "AccessDeniedException"


class ValidationException(HealthImagingError):
    code = "ValidationException"


class InternalServerException(HealthImagingError):
    code = "InternalServerException"


class ResourceNotFoundException(HealthImagingError):
    code = "ResourceNotFoundException"


class ServiceQuotaExceededException(HealthImagingError):
    code = "ServiceQuotaExceededException"


class NotAcceptableException(HealthImagingError):
    code = "NotAcceptableException"


class BadRequestException(HealthImagingError):
    code = "BadRequestException"


class UnknownOperationException(HealthImagingError):
    """No operation matches the method and path (not in the model; AWS answers 404 with this code)."""

    code = "UnknownOperationException"

    @property
    def status(self) -> int:
        return 404


class UnauthorizedException(HealthImagingError):
    """The admin API was called without the right ``Authorization: Bearer`` token (emulator only)."""

    code = "UnauthorizedException"

    @property
    def status(self) -> int:
        return 401


class UnsupportedMediaTypeException(HealthImagingError):
    """A request sent with a content type other than JSON (emulator only, not in the service model)."""

    code = "UnsupportedMediaTypeException"

    @property
    def status(self) -> int:
        return 415
