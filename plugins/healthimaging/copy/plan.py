"""What one CopyImageSet will do, resolved before it is sent: versions, subset, expected contents."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from healthimaging.copy import copiable_attributes as ca
from healthimaging.copy.request import REPLACED_BY_COPY_IMAGE_SET_INFORMATION, CopyRequest
from healthimaging.hooks.medical_imaging import HealthImagingHook, series_instances

#: The service's limit of image frames per CopyImageSet (a quota, adjustable on request).
MAX_FRAMES_PER_COPY = 1000


def uid_digest(uids: Iterable[str]) -> str:
    """A short fingerprint of a set of UIDs: the plan carries it instead of the UIDs themselves."""
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


@dataclass
class CopyPlan:
    """A resolved copy: everything needed to send it, reconcile it and verify it.

    ``*_pinned`` says the caller gave the version: a pinned version that moved is an error, an
    unpinned one is re-resolved. ``expected_*`` describe the destination version's SOP instances
    after a successful copy (count and digest, never the UIDs, so the plan stays small).
    """

    datastore_id: str
    source_image_set_id: str
    source_version_id: str
    source_version_pinned: bool
    destination_image_set_id: str | None = None
    destination_version_id: str | None = None
    destination_version_pinned: bool = False
    copiable_attributes: str | None = None
    force: bool = False
    promote_to_primary: bool = False
    first_series_uid: str | None = None
    expected_instance_count: int | None = None
    expected_instance_digest: str | None = None
    frame_count: int | None = None
    #: For a new image set: the image sets of ``first_series_uid`` that existed before the copy was
    #: sent, so that reconciling after an ambiguous failure needs no clock.
    preexisting_image_set_ids: list[str] | None = None

    @property
    def copy_kind(self) -> str:
        """new, merge, subset (into a new image set) or promote."""
        if self.promote_to_primary:
            return "promote"
        if self.destination_image_set_id:
            return "merge"
        return "subset" if self.copiable_attributes else "new"

    def request(self) -> dict[str, Any]:
        """The keyword arguments of boto3's ``copy_image_set``."""
        source: dict[str, Any] = {"latestVersionId": self.source_version_id}
        if self.copiable_attributes is not None:
            source["DICOMCopies"] = {"copiableAttributes": self.copiable_attributes}
        information: dict[str, Any] = {"sourceImageSet": source}
        if self.destination_image_set_id:
            information["destinationImageSet"] = {
                "imageSetId": self.destination_image_set_id,
                "latestVersionId": self.destination_version_id,
            }
        kwargs: dict[str, Any] = {
            "datastoreId": self.datastore_id,
            "sourceImageSetId": self.source_image_set_id,
            "copyImageSetInformation": information,
        }
        if self.force:
            kwargs["force"] = True
        if self.promote_to_primary:
            kwargs["promoteToPrimary"] = True
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CopyPlan:
        return cls(**data)


def resolve_plan(hook: HealthImagingHook, request: CopyRequest) -> CopyPlan:
    """Resolve a copy request against the data store (latest versions, subset, expected contents).

    ``copy_image_set_information`` (the AWS CLI's JSON) replaces the version, destination and
    copiableAttributes arguments. The source (and destination) metadata are read to build a subset
    from UIDs, check the frame quota and compute the expected contents.
    Raises :class:`~healthimaging.copy.copiable_attributes.CopyRequestError` naming the bad argument.
    """
    datastore_id, source_image_set_id = request.datastore_id, request.source_image_set_id
    source_version_id, copiable_attributes = request.source_version_id, request.copiable_attributes
    destination_image_set_id, destination_version_id = request.destination_image_set_id, request.destination_version_id
    series_instance_uids, sop_instance_uids = request.series_instance_uids, request.sop_instance_uids
    if request.copy_image_set_information is not None:
        clash = request.given(REPLACED_BY_COPY_IMAGE_SET_INFORMATION)
        if clash:
            raise ca.CopyRequestError(
                f"copy_image_set_information already says what to copy; do not also pass {', '.join(clash)}"
            )
        information = ca.parse_copy_image_set_information(request.copy_image_set_information)
        source_version_id = information["sourceImageSet"]["latestVersionId"]
        copiable_attributes = (information["sourceImageSet"].get("DICOMCopies") or {}).get("copiableAttributes")
        destination = information.get("destinationImageSet") or {}
        destination_image_set_id = destination.get("imageSetId")
        destination_version_id = destination.get("latestVersionId")
    if copiable_attributes and (series_instance_uids or sop_instance_uids):
        raise ca.CopyRequestError("pass either copiable_attributes or series_instance_uids/sop_instance_uids, not both")
    if destination_version_id and not destination_image_set_id:
        raise ca.CopyRequestError("destination_version_id needs destination_image_set_id")
    if destination_image_set_id == source_image_set_id:
        raise ca.CopyRequestError("destination_image_set_id must differ from source_image_set_id")

    plan = CopyPlan(
        datastore_id=datastore_id,
        source_image_set_id=source_image_set_id,
        source_version_id=str(source_version_id)
        if source_version_id
        else hook.get_latest_version_id(datastore_id, source_image_set_id),
        source_version_pinned=bool(source_version_id),
        destination_image_set_id=destination_image_set_id or None,
        destination_version_pinned=bool(destination_version_id),
        force=request.force,
        promote_to_primary=request.promote_to_primary,
    )
    if destination_image_set_id:
        plan.destination_version_id = (
            str(destination_version_id)
            if destination_version_id
            else hook.get_latest_version_id(datastore_id, destination_image_set_id)
        )
    document = None
    if copiable_attributes:
        document = ca.parse_copiable_attributes(copiable_attributes)
    source_doc = hook.get_image_set_metadata(datastore_id, source_image_set_id, plan.source_version_id)
    source = series_instances(source_doc)
    if series_instance_uids or sop_instance_uids:
        document = ca.build(
            ca.select_from_source(
                source,
                series_instance_uids=series_instance_uids,
                sop_instance_uids=sop_instance_uids,
                source_name=f"image set {source_image_set_id} version {plan.source_version_id}",
            )
        )
    selection = ca.selection_of(document) if document else source
    plan.copiable_attributes = ca.to_json(document) if document else None
    plan.first_series_uid = sorted(selection)[0] if selection else None
    copied = {uid for uids in selection.values() for uid in uids}
    plan.frame_count = _frames(source_doc, selection)
    if plan.frame_count > MAX_FRAMES_PER_COPY:
        raise ca.CopyRequestError(
            f"the copy holds {plan.frame_count:,} image frames; CopyImageSet copies at most {MAX_FRAMES_PER_COPY:,} "
            "per call. Copy the image set in subsets (series_instance_uids or sop_instance_uids)."
        )
    if plan.destination_image_set_id:
        copied |= hook.get_sop_instance_uids(datastore_id, plan.destination_image_set_id, plan.destination_version_id)
    plan.expected_instance_count = len(copied)
    plan.expected_instance_digest = uid_digest(copied)
    return plan


def expected_contents(hook: HealthImagingHook, plan: CopyPlan, destination_version_id: str) -> tuple[int, str]:
    """(count, digest) of the SOP instances that version ``destination_version_id`` of the destination must hold.

    A merge's expected contents are computed from the version the copy produced: the destination version
    it started from (one before, since the version is an optimistic-concurrency token) plus what it copied
    from the source version sent. The plan's own figures were computed from the destination as it was when
    the row was planned, which another merge into the same destination may have changed since. A copy to a
    new image set holds what it copied, as planned.
    """
    if not plan.destination_image_set_id and plan.expected_instance_digest:
        return plan.expected_instance_count or 0, plan.expected_instance_digest
    source_doc = hook.get_image_set_metadata(plan.datastore_id, plan.source_image_set_id, plan.source_version_id)
    selection = (
        ca.selection_of(ca.parse_copiable_attributes(plan.copiable_attributes))
        if plan.copiable_attributes
        else series_instances(source_doc)
    )
    held = {uid for uids in selection.values() for uid in uids}
    if plan.destination_image_set_id:
        started_from = str(int(destination_version_id) - 1)
        held |= hook.get_sop_instance_uids(plan.datastore_id, plan.destination_image_set_id, started_from)
    return len(held), uid_digest(held)


def _frames(document: Mapping[str, Any], selection: Mapping[str, set[str]]) -> int:
    series = document.get("Study", {}).get("Series", {})
    return sum(
        len(series.get(series_uid, {}).get("Instances", {}).get(sop, {}).get("ImageFrames", []))
        for series_uid, sops in selection.items()
        for sop in sops
    )
