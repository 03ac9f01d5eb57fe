"""Tags of data stores and image sets: TagResource, UntagResource, ListTagsForResource."""

from __future__ import annotations

from typing import Any

from healthimaging_emulator.backend.core import BackendCore
from healthimaging_emulator.exceptions import ResourceNotFoundException


class TagsMixin(BackendCore):
    """The tagging operations; a resource is named by its ARN."""

    def _resource(self, db, arn: str) -> None:
        prefix = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/"
        if not arn.startswith(prefix):
            raise ResourceNotFoundException(f"Resource {arn} does not exist in this account and region.")
        parts = arn[len(prefix) :].split("/")
        # Any data store that is not DELETED is taggable: the tagging operations declare no
        # ConflictException, so a CREATING or DELETING data store must not answer one.
        self._datastore(db, parts[0], active=False)
        if (
            len(parts) > 1
            and db.execute(
                "SELECT 1 FROM image_sets WHERE datastore_id = ? AND image_set_id = ?", (parts[0], parts[2])
            ).fetchone()
            is None
        ):
            raise ResourceNotFoundException(f"Image set {parts[2]} does not exist in datastore {parts[0]}.")

    def tag_resource(self, resourceArn: str, tags: dict[str, str]) -> dict[str, Any]:
        with self.store.transaction() as db:
            self._resource(db, resourceArn)
            self._put_tags(db, resourceArn, tags)
        return {}

    def untag_resource(self, resourceArn: str, tagKeys: list[str]) -> dict[str, Any]:
        with self.store.transaction() as db:
            self._resource(db, resourceArn)
            db.executemany("DELETE FROM tags WHERE resource_arn = ? AND key = ?", [(resourceArn, k) for k in tagKeys])
        return {}

    def list_tags_for_resource(self, resourceArn: str) -> dict[str, Any]:
        with self.store.reading() as db:
            self._resource(db, resourceArn)
            rows = db.execute(
                "SELECT key, value FROM tags WHERE resource_arn = ? ORDER BY key", (resourceArn,)
            ).fetchall()
        return {"tags": {r["key"]: r["value"] for r in rows}}
