"""Sensor that waits for an AWS HealthImaging image set to settle."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import AirflowException, conf

from healthimaging.copy import states
from healthimaging.hooks.medical_imaging import HealthImagingHook
from healthimaging.triggers.medical_imaging import HealthImagingImageSetTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class HealthImagingImageSetSensor(AwsBaseSensor[HealthImagingHook]):
    """
    Wait until an image set (or one version of it) reaches the target state and workflow status.

    Fails at once, with the service's message, when the image set ends in a ``*_FAILED`` workflow
    status (COPY_FAILED, UPDATE_FAILED, IMPORT_FAILED).

    .. seealso::
        https://docs.aws.amazon.com/healthimaging/latest/APIReference/API_GetImageSet.html

    :param datastore_id: The data store of the image set.
    :param image_set_id: The image set to watch.
    :param version_id: The version to watch; the latest when None.
    :param target_states: Image set states that count as done (default: ACTIVE).
    :param target_workflow_statuses: Workflow statuses that count as done (default: the settled
        ones, CREATED, COPIED, UPDATED, IMPORTED).
    :param deferrable: If True, the sensor waits in the triggerer and holds no worker slot.
        (default: the ``[operators] default_deferrable`` setting)
    :param poke_interval: Seconds between checks (default 30).
    :param max_retries: Checks made in deferrable mode before giving up (default 720).
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for botocore client.
    """

    aws_hook_class = HealthImagingHook
    template_fields: Sequence[str] = aws_template_fields(
        "datastore_id", "image_set_id", "version_id", "target_states", "target_workflow_statuses", "deferrable"
    )
    ui_color = "#66c3ff"

    def __init__(
        self,
        *,
        datastore_id: str,
        image_set_id: str,
        version_id: str | None = None,
        target_states: Collection[str] = (states.ACTIVE,),
        target_workflow_statuses: Collection[str] = tuple(sorted(states.SETTLED_WORKFLOW_STATUSES)),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float = 30,
        max_retries: int = 720,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.datastore_id = datastore_id
        self.image_set_id = image_set_id
        self.version_id = version_id
        self.target_states = list(target_states)
        self.target_workflow_statuses = list(target_workflow_statuses)
        self.deferrable = deferrable
        self.max_retries = max_retries

    def poke(self, context: Context) -> bool:
        response = self.hook.get_image_set(self.datastore_id, self.image_set_id, self.version_id)
        state, workflow = response["imageSetState"], response.get("imageSetWorkflowStatus")
        self.log.info("Image set %s version %s is %s / %s", self.image_set_id, response["versionId"], state, workflow)
        if workflow in states.FAILED_WORKFLOW_STATUSES:
            raise AirflowException(
                f"Image set {self.image_set_id} version {response['versionId']} ended {workflow}: "
                f"{response.get('message', 'no message from the service')}"
            )
        return state in self.target_states and workflow in self.target_workflow_statuses

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(
            trigger=HealthImagingImageSetTrigger(
                datastore_id=self.datastore_id,
                image_set_id=self.image_set_id,
                version_id=self.version_id,
                waiter_name="image_set_settled",
                acceptors=self.acceptors(),
                return_value={"image_set_id": self.image_set_id, "version_id": self.version_id},
                waiter_delay=max(1, math.ceil(self.poke_interval)),  # whole seconds there; 0 would spin
                waiter_max_attempts=self.max_retries,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def acceptors(self) -> list[dict[str, Any]]:
        """The waiter acceptors for this sensor's targets: fail on *_FAILED, succeed on a target, else retry."""

        def path(argument: str, expected: Any, state: str) -> dict[str, Any]:
            return {"matcher": "path", "argument": argument, "expected": expected, "state": state}

        return [
            *(path("imageSetWorkflowStatus", s, "failure") for s in sorted(states.FAILED_WORKFLOW_STATUSES)),
            *(
                path("[imageSetState, imageSetWorkflowStatus]", [state, workflow], "success")
                for state in self.target_states
                for workflow in self.target_workflow_statuses
            ),
            {"matcher": "error", "argument": "Error.Code", "expected": "ThrottlingException", "state": "retry"},
            {"matcher": "error", "argument": "Error.Code", "expected": "InternalServerException", "state": "retry"},
        ]

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        validated_event = validate_execute_complete_event(event)
        if validated_event["status"] != "success":
            raise AirflowException(
                f"Error while waiting for image set {self.image_set_id}: {validated_event['message']}"
            )
        self.log.info("Image set %s reached its target state", self.image_set_id)
