"""HealthImaging image-set states and workflow statuses, and how this package groups them.

One place for these facts: the waiters file, the sensor and the operator read them from here.
"""

from __future__ import annotations

ACTIVE = "ACTIVE"
LOCKED = "LOCKED"
DELETED = "DELETED"

COPIED = "COPIED"
COPY_FAILED = "COPY_FAILED"
COPYING = "COPYING"
COPYING_WITH_READ_ONLY_ACCESS = "COPYING_WITH_READ_ONLY_ACCESS"

#: Workflow statuses of work still in progress.
IN_PROGRESS_WORKFLOW_STATUSES = frozenset(
    {"COPYING", "COPYING_WITH_READ_ONLY_ACCESS", "UPDATING", "UPDATING_FOR_STUDY_CONSISTENCY", "DELETING", "IMPORTING"}
)
#: Workflow statuses that end work badly; a sensor fails fast on them.
FAILED_WORKFLOW_STATUSES = frozenset({"COPY_FAILED", "UPDATE_FAILED", "IMPORT_FAILED"})
#: Workflow statuses of an image set at rest after successful work.
SETTLED_WORKFLOW_STATUSES = frozenset({"CREATED", "COPIED", "UPDATED", "IMPORTED"})

#: A copy's destination version, as the ``image_set_copied`` waiter sees it.
COPY_SUCCESS_STATUSES = frozenset({COPIED})
COPY_PENDING_STATUSES = frozenset({COPYING, COPYING_WITH_READ_ONLY_ACCESS})
COPY_FAILURE_STATUSES = frozenset({COPY_FAILED})
