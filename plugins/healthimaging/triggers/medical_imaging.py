"""Trigger that waits on an AWS HealthImaging image set (serves the copy operator and the sensor)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.base import AwsBaseWaiterTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent

from healthimaging.bulk.ledger import CONNECTION_ID as LEDGER_CONN_ID
from healthimaging.hooks.medical_imaging import HealthImagingHook


class HealthImagingImageSetTrigger(AwsBaseWaiterTrigger):
    """
    Poll an image set (optionally one version) with a waiter until it succeeds or fails.

    :param datastore_id: The data store of the image set.
    :param image_set_id: The image set to watch.
    :param version_id: The version to watch; the latest when None.
    :param waiter_name: ``image_set_copied`` (a copy's destination version) or ``image_set_settled``
        (ACTIVE again, failing fast on a ``*_FAILED`` status), from ``waiters/medical-imaging.json``.
    :param return_value: What the TriggerEvent carries back to the task (``value`` key): everything
        ``execute_complete`` needs, because attributes set before deferring are not kept.
    :param acceptors: Waiter acceptors replacing the named waiter's ones (a sensor's custom targets).
    :param waiter_delay: The amount of time in seconds to wait between attempts.
    :param waiter_max_attempts: The maximum number of attempts to be made.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region name.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for botocore client.
    """

    aws_hook_class = HealthImagingHook

    def __init__(
        self,
        *,
        datastore_id: str,
        image_set_id: str,
        version_id: str | None = None,
        waiter_name: str = "image_set_copied",
        return_value: Any = None,
        acceptors: list[dict[str, Any]] | None = None,
        waiter_delay: int = 10,
        waiter_max_attempts: int = 360,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ) -> None:
        waiter_args: dict[str, Any] = {"datastoreId": datastore_id, "imageSetId": image_set_id}
        if version_id is not None:
            waiter_args["versionId"] = str(version_id)
        super().__init__(
            serialized_fields={
                "datastore_id": datastore_id,
                "image_set_id": image_set_id,
                "version_id": version_id,
                "waiter_name": waiter_name,
                "return_value": return_value,
                "acceptors": acceptors,
            },
            waiter_name=waiter_name,
            waiter_args=waiter_args,
            failure_message=f"HealthImaging image set {image_set_id} failed",
            status_message=f"Image set {image_set_id} is",
            status_queries=["imageSetState", "imageSetWorkflowStatus", "message"],
            return_key="value",
            return_value=return_value,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            waiter_config_overrides={"acceptors": acceptors} if acceptors else None,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            verify=verify,
            botocore_config=botocore_config,
        )


class HealthImagingBulkCopyTrigger(BaseTrigger):
    """
    Run one batch of a bulk copy in the triggerer: send, wait for and verify its copies.

    The work is the :class:`~healthimaging.bulk.engine.BatchCopyEngine`, whose state is the ledger, run
    step by step in a thread so the event loop stays free. If the triggerer restarts, the trigger
    starts again and the engine resumes from the ledger: rows the dead engine held are taken over once
    its lease has expired and reconciled. Two instances of one trigger (two triggerers during a
    failover) share the batch's rows: each row is held and sent by one of them.

    :param dag_id: The run's DAG.
    :param run_id: The run.
    :param manifest_sha256: The manifest's digest (part of the ledger key).
    :param batch: The batch number.
    :param settings: :class:`~healthimaging.bulk.engine.BulkCopySettings` as a dict.
    :param ledger_conn_id: The Airflow connection of the ledger database.
    """

    def __init__(
        self,
        *,
        dag_id: str,
        run_id: str,
        manifest_sha256: str,
        batch: int,
        settings: dict[str, Any],
        ledger_conn_id: str = LEDGER_CONN_ID,
    ) -> None:
        super().__init__()
        self.dag_id = dag_id
        self.run_id = run_id
        self.manifest_sha256 = manifest_sha256
        self.batch = batch
        self.settings = settings
        self.ledger_conn_id = ledger_conn_id

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "manifest_sha256": self.manifest_sha256,
                "batch": self.batch,
                "settings": self.settings,
                "ledger_conn_id": self.ledger_conn_id,
            },
        )

    def engine(self):
        from healthimaging.bulk.engine import BatchCopyEngine
        from healthimaging.bulk.ledger import Ledger
        from healthimaging.bulk.settings import BulkCopySettings

        return BatchCopyEngine(
            Ledger.from_airflow(self.ledger_conn_id),
            dag_id=self.dag_id,
            run_id=self.run_id,
            manifest_sha256=self.manifest_sha256,
            batch=self.batch,
            settings=BulkCopySettings.from_dict(self.settings),
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        engine = None
        try:
            engine = await asyncio.to_thread(self.engine)
            while (wait := await asyncio.to_thread(engine.step)) is not None:
                await asyncio.sleep(wait)
            counts = await asyncio.to_thread(engine.counts)
        except asyncio.CancelledError:
            # Moved to another triggerer, or this one stops: end the lease now so that the rows this engine
            # holds are taken over at once (a step still running in its thread can then send nothing).
            if engine is not None:
                engine.release()
            raise
        except Exception as exc:  # reported to the task, which fails and can be retried: the ledger keeps the state
            self.log.exception("batch %s failed", self.batch)
            if engine is not None:  # it does nothing more: what it holds can be taken over (and reconciled) at once
                await asyncio.to_thread(engine.release)
            yield TriggerEvent({"status": "error", "batch": self.batch, "message": f"{type(exc).__name__}: {exc}"})
            return
        yield TriggerEvent({"status": "success", "batch": self.batch, "counts": counts})
