"""Hook for AWS HealthImaging (``medical-imaging``)."""

from __future__ import annotations

import gzip
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

#: botocore settings for calls that must never be repeated by the SDK (CopyImageSet has no idempotency token).
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}
#: The no-retry client's timeouts at most (a connection's shorter ones are kept): a CopyImageSet call ends
#: (answered or failed) within 40 s, well inside a bulk-copy engine's lease
#: (healthimaging.bulk.ledger.LEASE_SECONDS), so a copy its owner sent has reached the service before anyone
#: may take the row over and reconcile it.
NO_RETRY_CONNECT_TIMEOUT_SECONDS = 10
NO_RETRY_READ_TIMEOUT_SECONDS = 30


class HealthImagingHook(AwsBaseHook):
    """
    Interact with AWS HealthImaging.

    Provide thin wrapper around :external+boto3:py:class:`boto3.client("medical-imaging") <MedicalImaging.Client>`.

    When the connection sets an endpoint URL (extra ``endpoint_url``, or ``service_config`` for
    ``medical-imaging``), botocore's ``runtime-`` host prefix of the data-plane operations is switched
    off, so a local emulator or a VPC endpoint works without further configuration.

    Additional arguments (such as ``aws_conn_id``) may be specified and
    are passed down to the underlying AwsBaseHook.

    .. seealso::
        - :class:`airflow.providers.amazon.aws.hooks.base_aws.AwsBaseHook`
        - https://docs.aws.amazon.com/healthimaging/latest/APIReference/Welcome.html
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["client_type"] = "medical-imaging"
        super().__init__(*args, **kwargs)

    @cached_property
    def waiter_path(self) -> os.PathLike[str] | None:
        return Path(__file__).parent / "waiters" / "medical-imaging.json"

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint URL the connection configures for this service, if any."""
        return self.conn_config.get_service_endpoint_url(service_name=self.service_name)

    @property
    def config(self) -> Config:
        config = super().config
        if self.endpoint_url and config.inject_host_prefix is not False:
            # The data-plane operations carry hostPrefix "runtime-": with an endpoint URL botocore
            # would call http://runtime-<host>/..., which does not resolve.
            config = config.merge(Config(inject_host_prefix=False))
        return config

    @cached_property
    def no_retry_conn(self):
        """A client whose calls botocore never repeats: for CopyImageSet, which is not idempotent."""
        config = self.config
        return self.get_client_type(
            region_name=self.region_name,
            config=config.merge(
                Config(
                    retries=NO_RETRIES,
                    connect_timeout=min(config.connect_timeout, NO_RETRY_CONNECT_TIMEOUT_SECONDS),
                    read_timeout=min(config.read_timeout, NO_RETRY_READ_TIMEOUT_SECONDS),
                )
            ),
        )

    def get_image_set(self, datastore_id: str, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        """GetImageSet for the latest version, or for ``version_id``."""
        kwargs = {"versionId": str(version_id)} if version_id is not None else {}
        return self.conn.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)

    def get_latest_version_id(self, datastore_id: str, image_set_id: str) -> str:
        """The latest version id of an image set."""
        return self.get_image_set(datastore_id, image_set_id)["versionId"]

    def get_image_set_metadata(
        self, datastore_id: str, image_set_id: str, version_id: str | None = None
    ) -> dict[str, Any]:
        """The decoded metadata document (GetImageSetMetadata returns gzip JSON that botocore leaves compressed)."""
        kwargs = {"versionId": str(version_id)} if version_id is not None else {}
        response = self.conn.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)
        body = response["imageSetMetadataBlob"].read()
        if response.get("contentEncoding", "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return json.loads(body)

    def get_sop_instance_uids(self, datastore_id: str, image_set_id: str, version_id: str | None = None) -> set[str]:
        """The SOP Instance UIDs held by a version of an image set."""
        return sop_instance_uids(self.get_image_set_metadata(datastore_id, image_set_id, version_id))

    def list_image_set_versions(self, datastore_id: str, image_set_id: str) -> list[dict[str, Any]]:
        """Every version of an image set (all pages)."""
        paginator = self.conn.get_paginator("list_image_set_versions")
        return [
            item
            for page in paginator.paginate(datastoreId=datastore_id, imageSetId=image_set_id)
            for item in page["imageSetPropertiesList"]
        ]


def sop_instance_uids(document: dict[str, Any]) -> set[str]:
    """The SOP Instance UIDs of a metadata document."""
    return {
        uid for series in document.get("Study", {}).get("Series", {}).values() for uid in series.get("Instances", {})
    }


def series_instances(document: dict[str, Any]) -> dict[str, set[str]]:
    """Series Instance UID → its SOP Instance UIDs, of a metadata document."""
    return {
        series_uid: set(series.get("Instances", {}))
        for series_uid, series in document.get("Study", {}).get("Series", {}).items()
    }
