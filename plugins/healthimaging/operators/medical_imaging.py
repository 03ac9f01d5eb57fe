"""Operators for AWS HealthImaging."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.exceptions import WaiterTerminalFailure
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.amazon.aws.utils.waiter_with_logging import wait
from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, conf

from healthimaging.bulk import lineage
from healthimaging.bulk.ledger import CONNECTION_ID as LEDGER_CONN_ID
from healthimaging.copy import states
from healthimaging.copy.copiable_attributes import CopyRequestError
from healthimaging.copy.plan import CopyPlan, resolve_plan, uid_digest
from healthimaging.copy.record import CopyRecord
from healthimaging.copy.request import COPY_ARGUMENTS, CopyRequest
from healthimaging.copy.submission import CopySubmissionError, SubmissionPolicy, reconcile, snapshot_series, submit_copy
from healthimaging.hooks.medical_imaging import HealthImagingHook
from healthimaging.links.medical_imaging import HealthImagingImageSetLink
from healthimaging.triggers.medical_imaging import HealthImagingBulkCopyTrigger, HealthImagingImageSetTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The task_state_store key of the copy a task instance has in flight. Renaming it breaks retries in flight.
COPY_STATE_KEY = "healthimaging_copy"


class HealthImagingCopyImageSetOperator(AwsBaseOperator[HealthImagingHook]):
    """
    Copy an AWS HealthImaging image set, exactly once, and wait for the copy.

    Copies to a new image set, or into ``destination_image_set_id`` (a merge); all of the source or a
    subset (``copiable_attributes``, or ``series_instance_uids`` / ``sop_instance_uids`` from which it
    is built). CopyImageSet has no idempotency token: the SDK never repeats the call, the copy is
    recorded in ``task_state_store`` before waiting so that a retry of the task resumes the same copy,
    and after an ambiguous failure the data store is reconciled before anything is sent again.

    .. seealso::
        https://docs.aws.amazon.com/healthimaging/latest/APIReference/API_CopyImageSet.html

    :param datastore_id: The data store holding source and destination.
    :param source_image_set_id: The image set to copy.
    :param source_version_id: The source version to copy; the latest when None. A pinned version
        that is no longer the latest fails the task.
    :param destination_image_set_id: Copy into this image set (a merge); a new image set when None.
    :param destination_version_id: The destination's expected latest version; the latest when None.
    :param copiable_attributes: The subset to copy, as a dict or JSON string in the documented
        schema (keys are DICOM Series/SOP Instance UIDs).
    :param series_instance_uids: Copy these whole series of the source (builds copiable_attributes).
    :param sop_instance_uids: Copy these SOP instances of the source (builds copiable_attributes).
    :param copy_image_set_information: The AWS CLI's ``--copy-image-set-information`` JSON, verbatim;
        replaces the version, destination and subset arguments.
    :param force: Copy even if Patient/Study/Series metadata of source and destination disagree.
    :param promote_to_primary: Make the destination a primary image set.
    :param wait_for_completion: Wait until the copy ends. (default: True)
    :param deferrable: Wait in the triggerer, holding no worker slot.
        (default: the ``[operators] default_deferrable`` setting)
    :param waiter_delay: Seconds between status checks. (default: 10)
    :param waiter_max_attempts: Status checks before giving up. (default: 360)
    :param verify_copy: After the copy, check that the destination version holds exactly the SOP
        instances meant to be copied (plus, for a merge, those it had). (default: True)
    :param max_submit_attempts: Attempts to have the copy accepted, throttling not counted. (default: 8)
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for botocore client.
    :return: a dict: datastore, source id and version, destination id and version, final workflow
        status, forced, is_primary, copy kind, verified, attempts and timings.
    """

    aws_hook_class = HealthImagingHook
    template_fields: Sequence[str] = aws_template_fields(
        *COPY_ARGUMENTS,
        "wait_for_completion",
        "deferrable",
        "waiter_delay",
        "waiter_max_attempts",
        "verify_copy",
    )
    template_fields_renderers = {"copiable_attributes": "json", "copy_image_set_information": "json"}
    operator_extra_links = (HealthImagingImageSetLink(),)
    ui_color = "#66c3ff"

    def __init__(
        self,
        *,
        datastore_id: str,
        source_image_set_id: str,
        source_version_id: str | None = None,
        destination_image_set_id: str | None = None,
        destination_version_id: str | None = None,
        copiable_attributes: dict[str, Any] | str | None = None,
        series_instance_uids: list[str] | None = None,
        sop_instance_uids: list[str] | None = None,
        copy_image_set_information: dict[str, Any] | str | None = None,
        force: bool = False,
        promote_to_primary: bool = False,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        waiter_delay: int = 10,
        waiter_max_attempts: int = 360,
        verify_copy: bool = True,
        max_submit_attempts: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.datastore_id = datastore_id
        self.source_image_set_id = source_image_set_id
        self.source_version_id = source_version_id
        self.destination_image_set_id = destination_image_set_id
        self.destination_version_id = destination_version_id
        self.copiable_attributes = copiable_attributes
        self.series_instance_uids = series_instance_uids
        self.sop_instance_uids = sop_instance_uids
        self.copy_image_set_information = copy_image_set_information
        self.force = force
        self.promote_to_primary = promote_to_primary
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.waiter_delay = waiter_delay
        self.waiter_max_attempts = waiter_max_attempts
        self.verify_copy = verify_copy
        self.max_submit_attempts = max_submit_attempts
        self._record: CopyRecord | None = None  # what lineage reports, as far as the copy got

    # ------------------------------------------------------------------ execution

    def execute(self, context: Context) -> dict[str, Any]:
        store = context.get("task_state_store")
        record = self._resume(store) or self._submit(store)
        self._record = record
        HealthImagingImageSetLink.persist(
            context=context,
            operator=self,
            region_name=self.hook.conn_region_name,
            aws_partition=self.hook.conn_partition,
            datastore_id=record.datastore_id,
            image_set_id=record.destination_image_set_id,
        )
        if self.deferrable:
            self.defer(trigger=self._trigger(record), method_name="execute_complete")
        if not self.wait_for_completion:
            return record.with_status(self._destination_status(record)).to_dict()
        self._wait_in_worker(record)
        return self._complete(record)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        validated_event = validate_execute_complete_event(event)
        record = self._record = CopyRecord.from_dict(validated_event["value"])
        if validated_event["status"] != "success":
            raise self._copy_not_copied(record, self._destination_status(record), validated_event.get("message"))
        return self._complete(record)

    # ------------------------------------------------------------------ steps

    @property
    def copy_request(self) -> CopyRequest:
        """The copy this task makes, from its (rendered) arguments."""
        return CopyRequest(**{name: getattr(self, name) for name in COPY_ARGUMENTS})

    def _plan(self) -> CopyPlan:
        try:
            return resolve_plan(self.hook, self.copy_request)
        except CopyRequestError as exc:
            raise AirflowException(f"Cannot copy image set {self.source_image_set_id}: {exc}") from exc

    def _submit(self, store: Any) -> CopyRecord:
        """Plan the copy, record the intent (a crash after it reconciles instead of copying again), send it."""
        plan = snapshot_series(self.hook, self._plan())
        self._record = CopyRecord.planned(plan)
        _store(store, {"phase": "submitting", "plan": plan.to_dict(), "started_at": time.time()})
        try:
            submitted = submit_copy(self.hook, plan, SubmissionPolicy(max_attempts=self.max_submit_attempts))
        except CopySubmissionError as exc:
            raise AirflowException(f"CopyImageSet of image set {plan.source_image_set_id} failed: {exc}") from exc
        record = CopyRecord.accepted(submitted)
        _store(store, {"phase": "submitted", "copy": record.to_dict()})
        self.log.info(
            "Copy accepted: image set %s version %s -> %s (%s copy%s)",
            record.source_image_set_id,
            record.source_version_id,
            record.destination,
            record.copy_kind,
            ", reconciled after a lost response" if submitted.reconciled else "",
        )
        return record

    def _resume(self, store: Any) -> CopyRecord | None:
        """The copy an earlier try of this task instance started, if it is still worth waiting for."""
        state = store.get(COPY_STATE_KEY) if store is not None else None
        if not state:
            return None
        if state["phase"] == "submitting":
            plan = CopyPlan.from_dict(state["plan"])
            self.log.warning("An earlier try stopped while sending CopyImageSet; checking whether the copy took effect")
            found = reconcile(self.hook, plan, state["started_at"])
            if found is None:
                self.log.info("No copy took effect; sending it again")
                return None
            record = CopyRecord.accepted(found)
            _store(store, {"phase": "submitted", "copy": record.to_dict()})
            return record
        record = CopyRecord.from_dict(state["copy"])
        status = self._destination_status(record)
        workflow = status.get("imageSetWorkflowStatus")
        if workflow == states.COPY_FAILED:
            self.log.warning(
                "The copy an earlier try started ended COPY_FAILED (%s); copying again", status.get("message")
            )
            return None
        self.log.info("Resuming the copy an earlier try started: %s is %s", record.destination, workflow)
        return record

    def _trigger(self, record: CopyRecord) -> HealthImagingImageSetTrigger:
        return HealthImagingImageSetTrigger(
            datastore_id=record.datastore_id,
            image_set_id=record.destination_image_set_id,
            version_id=record.destination_version_id,
            waiter_name="image_set_copied",
            return_value=record.to_dict(),
            waiter_delay=self.waiter_delay,
            waiter_max_attempts=self.waiter_max_attempts,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def _wait_in_worker(self, record: CopyRecord) -> None:
        try:
            wait(
                waiter=self.hook.get_waiter("image_set_copied"),
                waiter_delay=self.waiter_delay,
                waiter_max_attempts=self.waiter_max_attempts,
                args={
                    "datastoreId": record.datastore_id,
                    "imageSetId": record.destination_image_set_id,
                    "versionId": record.destination_version_id,
                },
                failure_message=f"Copy to image set {record.destination_image_set_id} failed",
                status_message="Copy destination is",
                status_args=["imageSetWorkflowStatus", "message"],
            )
        except WaiterTerminalFailure as exc:
            # The waiter's own text says only which acceptor matched: name the status and the service's message.
            raise self._copy_not_copied(record, exc.last_response or {}) from exc

    def _destination_status(self, record: CopyRecord) -> dict[str, Any]:
        return self.hook.get_image_set(
            record.datastore_id, record.destination_image_set_id, record.destination_version_id
        )

    def _copy_not_copied(
        self, record: CopyRecord, status: dict[str, Any], waited: str | None = None
    ) -> AirflowException:
        """The one error of a copy that did not end COPIED: the destination, its status, the service's message."""
        workflow = status.get("imageSetWorkflowStatus")
        message = status.get("message") or "no message from the service"
        if workflow in states.COPY_PENDING_STATUSES:
            return AirflowException(f"Copy to {record.destination} is still {workflow} after waiting: {waited}")
        return AirflowException(f"Copy to {record.destination} ended {workflow}: {message}")

    def _complete(self, record: CopyRecord) -> dict[str, Any]:
        """Check that the copy ended COPIED and (``verify_copy``) holds what was meant; the task's result."""
        final = self._destination_status(record)
        if final.get("imageSetWorkflowStatus") != states.COPIED:
            raise self._copy_not_copied(record, final)
        verified = False
        if self.verify_copy and record.expected_instance_digest:
            held = self.hook.get_sop_instance_uids(
                record.datastore_id, record.destination_image_set_id, record.destination_version_id
            )
            if uid_digest(held) != record.expected_instance_digest:
                raise AirflowException(
                    f"Copy verification failed: destination {record.destination} holds {len(held)} SOP instances, "
                    f"expected {record.expected_instance_count} (the copied ones plus any the destination already held)"
                )
            verified = True
        record = self._record = record.completed(final, verified=verified, completed_at=time.time())
        self.log.info(
            "Copy complete: %s is %s (forced=%s, primary=%s, verified=%s)",
            record.destination,
            record.workflow_status,
            record.forced,
            record.is_primary,
            record.verified,
        )
        return record.to_dict()

    # ------------------------------------------------------------------ lineage

    def get_openlineage_facets_on_start(self):
        from airflow.providers.openlineage.extractors import OperatorLineage

        return OperatorLineage()

    def get_openlineage_facets_on_complete(self, task_instance: Any):
        """Source image set version in, destination image set version out; ids only, no patient data."""
        return lineage.copy_lineage(self._record)

    def get_openlineage_facets_on_failure(self, task_instance: Any):
        """As far as the copy got; the listener adds the task's error itself."""
        return lineage.copy_lineage(self._record)


def _store(store: Any, state: dict[str, Any]) -> None:
    """Keep the copy's state for a retry of this task instance (not kept where there is no state store)."""
    if store is not None:
        store.set(COPY_STATE_KEY, state)


class HealthImagingBulkCopyBatchOperator(BaseOperator):
    """
    Copy one batch of a manifest registered in the ledger (see ``dags/healthimaging_bulk_copy.py``).

    Deferrable by default: the batch runs in the triggerer (:class:`HealthImagingBulkCopyTrigger`) and
    holds no worker slot while its copies are sent and run. The batch's state is the ledger, so a
    retry of this task, or a restart of the triggerer, resumes it without copying anything twice.

    :param batch: The batch number (mapped).
    :param manifest_sha256: The manifest's digest.
    :param settings: :class:`~healthimaging.bulk.settings.BulkCopySettings` as a dict.
    :param aws_conn_id: The Airflow connection used for AWS credentials; None: the one in ``settings``.
    :param region_name: AWS region_name; None or empty: the one in ``settings`` (else the connection's).
    :param ledger_conn_id: The Airflow connection of the ledger database.
    :param deferrable: Run the batch in the triggerer, holding no worker slot, or in this worker.
        (default: the ``[operators] default_deferrable`` setting; the bulk-copy DAGs pass True)
    :return: the batch's row counts by status.
    """

    template_fields: Sequence[str] = (
        "batch",
        "manifest_sha256",
        "settings",
        "aws_conn_id",
        "region_name",
        "ledger_conn_id",
    )
    ui_color = "#66c3ff"

    def __init__(
        self,
        *,
        batch: int,
        manifest_sha256: str,
        settings: dict[str, Any],
        aws_conn_id: str | None = None,
        region_name: str | None = None,
        ledger_conn_id: str = LEDGER_CONN_ID,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.manifest_sha256 = manifest_sha256
        self.settings = settings
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.ledger_conn_id = ledger_conn_id
        self.deferrable = deferrable
        self._lineage_rows: list[dict[str, Any]] = []
        self._counts: dict[str, int] = {}

    def _trigger(self, context: Context) -> HealthImagingBulkCopyTrigger:
        settings = dict(self.settings)
        if self.aws_conn_id is not None:
            settings["aws_conn_id"] = self.aws_conn_id
        if self.region_name:
            settings["region_name"] = self.region_name
        return HealthImagingBulkCopyTrigger(
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            manifest_sha256=self.manifest_sha256,
            batch=int(self.batch),
            settings=settings,
            ledger_conn_id=self.ledger_conn_id,
        )

    def execute(self, context: Context) -> dict[str, int]:
        trigger = self._trigger(context)
        if self.deferrable:
            self.defer(trigger=trigger, method_name="execute_complete")
        counts = trigger.engine().run()
        self.log.info("Batch %s done: %s", self.batch, counts)
        self._remember(context, counts)
        return counts

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, int]:
        if not event or event.get("status") != "success":
            raise AirflowException(
                f"Batch {self.batch} stopped: {(event or {}).get('message', 'no event')}; "
                "a retry resumes it from the ledger"
            )
        self.log.info("Batch %s done: %s", self.batch, event["counts"])
        self._remember(context, event["counts"])
        return event["counts"]

    def _remember(self, context: Context, counts: dict[str, int]) -> None:
        """Keep the batch's rows for OpenLineage."""
        from healthimaging.bulk.ledger import Ledger

        self._counts = counts
        self._lineage_rows = Ledger.from_airflow(self.ledger_conn_id).run_rows(
            context["dag"].dag_id, context["run_id"], self.manifest_sha256, batch=int(self.batch)
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any):
        """Every copied source version in, every destination version out; ids only, no patient data."""
        return lineage.batch_lineage(self._lineage_rows, self._counts)
