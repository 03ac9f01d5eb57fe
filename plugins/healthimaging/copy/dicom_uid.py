"""DICOM UIDs as a copy names them: the service model's rule and the DICOM standard's, read in one place.

botocore's model gives ``DICOMSeriesInstanceUID`` (and the study's) the pattern ``[0-9.]+`` and at most
512 characters. DICOM PS3.5 section 9.1 is stricter: a UID is components of digits separated by periods,
at most 64 characters
(https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_9.1). A value must pass both.
"""

from __future__ import annotations

import re
from typing import Any

from healthimaging.copy.service_model import max_length, pattern

#: The model's shape for a UID; SOP Instance UIDs in copiableAttributes follow the same rule.
SERVICE_SHAPE = "DICOMSeriesInstanceUID"
#: The DICOM standard's limit (PS3.5 9.1), within the service model's.
DICOM_MAX_LENGTH = 64
MAX_LENGTH = min(DICOM_MAX_LENGTH, max_length(SERVICE_SHAPE) or DICOM_MAX_LENGTH)
#: Components of digits separated by single periods (PS3.5 9.1).
_COMPONENTS = r"[0-9]+(?:\.[0-9]+)*"
_SERVICE = re.compile(pattern(SERVICE_SHAPE))
_STANDARD = re.compile(_COMPONENTS)

#: What a valid UID is, in words, for error messages.
DESCRIPTION = f"digits and dots, at most {MAX_LENGTH} characters"


def is_uid(value: Any) -> bool:
    """True when ``value`` is a string the service accepts and the DICOM standard allows as a UID."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_LENGTH
        and _SERVICE.fullmatch(value) is not None
        and _STANDARD.fullmatch(value) is not None
    )


def json_schema() -> dict[str, Any]:
    """The same rule as a JSON Schema string (both patterns, anchored; the lookahead is the service's)."""
    return {"type": "string", "pattern": f"^(?=(?:{pattern(SERVICE_SHAPE)})$){_COMPONENTS}$", "maxLength": MAX_LENGTH}
