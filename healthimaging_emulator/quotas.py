"""AWS HealthImaging's default quotas, in one place.

From the developer guide's quotas pages: throttling limits
(https://docs.aws.amazon.com/healthimaging/latest/devguide/throttling-limits.html) and endpoints and
quotas (https://docs.aws.amazon.com/healthimaging/latest/devguide/endpoints-quotas.html).

Rates are requests per second per account and region, as token buckets ``(rate, burst)``.
Operations not listed are not throttled by the emulator.
"""

from __future__ import annotations

AWS_DEFAULT_RATES: dict[str, tuple[float, float]] = {
    "CopyImageSet": (0.25, 1),
    "UpdateImageSetMetadata": (0.25, 1),
    "DeleteImageSet": (0.25, 1),
    "GetImageSet": (25, 50),
    "ListImageSetVersions": (25, 50),
    "SearchImageSets": (25, 50),
    "GetImageSetMetadata": (50, 100),
    "GetImageFrame": (1000, 2000),
    "StartDICOMImportJob": (1, 2),
    "GetDatastore": (10, 20),
}

#: Multiplier applied to every AWS default rate and burst by the ``fast`` profile (for tests).
FAST_PROFILE_FACTOR = 1000.0

#: Rate-limit profiles: ``aws`` (the defaults above), ``fast`` (raised for tests), ``off`` (no limits).
RATE_PROFILES = ("aws", "fast", "off")

#: Image frames one CopyImageSet may copy.
MAX_FRAMES_PER_COPY = 1000

#: CopyImageSet requests in flight at once per data store.
MAX_CONCURRENT_COPIES_PER_DATASTORE = 100


def profile_rates(profile: str) -> dict[str, tuple[float, float]]:
    """The token-bucket table of a named profile."""
    if profile == "aws":
        return dict(AWS_DEFAULT_RATES)
    if profile == "fast":
        return {
            op: (rate * FAST_PROFILE_FACTOR, burst * FAST_PROFILE_FACTOR)
            for op, (rate, burst) in AWS_DEFAULT_RATES.items()
        }
    if profile == "off":
        return {}
    raise ValueError(f"unknown rate profile {profile!r}; expected one of {', '.join(RATE_PROFILES)}")
