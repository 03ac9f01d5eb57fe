"""What a user asks to copy: the arguments of one CopyImageSet, as one frozen value.

The copy operator builds a :class:`CopyRequest` from its arguments, a manifest row from its columns
and the dry run from the ledger's stored request; :func:`~healthimaging.copy.plan.resolve_plan` takes
it. :data:`COPY_ARGUMENTS` is the one list the operator's arguments and template fields and the
manifest's columns derive from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

#: The copy arguments, in the order the operator, the manifest columns and a template show them.
COPY_ARGUMENTS: tuple[str, ...] = (
    "datastore_id",
    "source_image_set_id",
    "source_version_id",
    "destination_image_set_id",
    "destination_version_id",
    "series_instance_uids",
    "sop_instance_uids",
    "copiable_attributes",
    "copy_image_set_information",
    "force",
    "promote_to_primary",
)

#: The arguments ``copy_image_set_information`` replaces: given beside it, they are an error.
REPLACED_BY_COPY_IMAGE_SET_INFORMATION: tuple[str, ...] = (
    "source_version_id",
    "destination_image_set_id",
    "destination_version_id",
    "copiable_attributes",
    "series_instance_uids",
    "sop_instance_uids",
)


@dataclass(frozen=True)
class CopyRequest:
    """The user's arguments of one copy, before anything is read from the data store.

    ``copy_image_set_information`` (the AWS CLI's JSON) replaces the version, destination and subset
    arguments; ``copiable_attributes`` or the UID lists name a subset. Empty values are None or ().
    """

    datastore_id: str
    source_image_set_id: str
    source_version_id: str | None = None
    destination_image_set_id: str | None = None
    destination_version_id: str | None = None
    series_instance_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    copiable_attributes: str | Mapping[str, Any] | None = None
    copy_image_set_information: str | Mapping[str, Any] | None = None
    force: bool = False
    promote_to_primary: bool = False

    def __post_init__(self) -> None:
        # Lists from an operator argument or stored JSON become tuples: the value stays frozen and hashable.
        for name in ("series_instance_uids", "sop_instance_uids"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        for name in (
            "source_version_id",
            "destination_image_set_id",
            "destination_version_id",
            "copiable_attributes",
            "copy_image_set_information",
        ):
            if getattr(self, name) in ("", {}):
                object.__setattr__(self, name, None)
        object.__setattr__(self, "force", bool(self.force))
        object.__setattr__(self, "promote_to_primary", bool(self.promote_to_primary))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CopyRequest:
        """The request in a mapping holding the copy arguments (and perhaps more: a manifest row, a ledger request)."""
        return cls(**{name: data[name] for name in COPY_ARGUMENTS if name in data})

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {
            **values,
            "series_instance_uids": list(self.series_instance_uids),
            "sop_instance_uids": list(self.sop_instance_uids),
        }

    def given(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` carry a value (for the error of arguments given together)."""
        return sorted(name for name in names if getattr(self, name))


assert tuple(f.name for f in fields(CopyRequest)) == COPY_ARGUMENTS, "COPY_ARGUMENTS lists CopyRequest's fields"
