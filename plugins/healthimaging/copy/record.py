"""One copy as it travels: through ``task_state_store``, the trigger event, XCom and lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any

from healthimaging.copy.plan import CopyPlan


@dataclass(frozen=True)
class CopyRecord:
    """
    A copy's ids, versions and what became of it: planned, accepted by the service, then complete.

    Its dict (:meth:`to_dict`) is what the copy operator stores in ``task_state_store`` (so that a
    retry resumes the copy), carries through its trigger and returns as XCom, and what its lineage
    is built from. Ids and versions only: never patient data.
    """

    datastore_id: str
    source_image_set_id: str
    source_version_id: str | None
    #: None for a copy to a new image set until the service names it.
    destination_image_set_id: str | None = None
    destination_version_id: str | None = None
    copy_kind: str = "new"
    subset: bool = False
    force: bool = False
    promote_to_primary: bool = False
    #: A merge's destination version before the copy (the version the copy was sent against).
    previous_destination_version_id: str | None = None
    expected_instance_count: int | None = None
    expected_instance_digest: str | None = None
    # Once the service accepted the copy.
    submitted_at: float | None = None
    attempts: int | None = None
    throttles: int | None = None
    reconciled: bool | None = None
    source_image_set_arn: str | None = None
    destination_image_set_arn: str | None = None
    # Once the copy ended (or, without waiting, the status when the task returned).
    workflow_status: str | None = None
    forced: bool | None = None
    is_primary: bool | None = None
    completed_at: float | None = None
    verified: bool | None = None

    @classmethod
    def planned(cls, plan: CopyPlan) -> CopyRecord:
        """The copy a plan is about to send."""
        return cls(
            datastore_id=plan.datastore_id,
            source_image_set_id=plan.source_image_set_id,
            source_version_id=plan.source_version_id,
            destination_image_set_id=plan.destination_image_set_id,
            copy_kind=plan.copy_kind,
            subset=plan.copiable_attributes is not None,
            force=plan.force,
            promote_to_primary=plan.promote_to_primary,
            previous_destination_version_id=plan.destination_version_id,
            expected_instance_count=plan.expected_instance_count,
            expected_instance_digest=plan.expected_instance_digest,
        )

    @classmethod
    def accepted(cls, submitted: Any) -> CopyRecord:
        """The copy the service accepted (a :class:`~healthimaging.copy.submission.SubmittedCopy`)."""
        # Every field of SubmittedCopy but its plan is a field of the record under the same name.
        accepted = {f.name: getattr(submitted, f.name) for f in fields(submitted) if f.name != "plan"}
        return replace(cls.planned(submitted.plan), **accepted)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CopyRecord:
        """A record from its dict; keys it does not know (the derived ones) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def with_status(self, image_set: dict[str, Any]) -> CopyRecord:
        """The record with the destination version's status, as GetImageSet returned it."""
        return replace(self, workflow_status=image_set.get("imageSetWorkflowStatus"))

    def completed(self, image_set: dict[str, Any], *, verified: bool, completed_at: float) -> CopyRecord:
        """The record of a copy that ended COPIED, from the destination version's GetImageSet."""
        return replace(
            self.with_status(image_set),
            forced=bool((image_set.get("overrides") or {}).get("forced")),
            is_primary=bool(image_set.get("isPrimary")),
            destination_image_set_arn=image_set.get("imageSetArn") or self.destination_image_set_arn,
            completed_at=completed_at,
            verified=verified,
        )

    @property
    def destination(self) -> str:
        """The destination as messages name it."""
        return f"image set {self.destination_image_set_id} version {self.destination_version_id}"

    def to_dict(self) -> dict[str, Any]:
        """JSON for the state store, the trigger event and XCom, with the copy's duration once it is complete."""
        data = asdict(self)
        if self.submitted_at is not None:
            data["submitted_at_iso"] = datetime.fromtimestamp(self.submitted_at, timezone.utc).isoformat()
            if self.completed_at is not None:
                data["duration_seconds"] = round(self.completed_at - self.submitted_at, 3)
        return data
