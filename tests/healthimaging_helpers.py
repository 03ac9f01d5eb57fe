"""Helpers shared by the HealthImaging operator, sensor and hook tests.

- :class:`Sample`: the emulator seeded with pydicom's sample files, with a catalog of its image sets
  (read through a real boto3 client) and helpers to read back image sets, versions and metadata.
- :func:`run_dag`: write a DAG file into a temporary DAG bundle, run it with ``dag.test()`` and
  return what happened (task states, XCom return values, the exception message of each failed task).
"""

from __future__ import annotations

import gzip
import json
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERIES_MISMATCH = "INVALID_REQUEST: Series of SourceImageSet and DestinationImageSet don't match."


# ----------------------------------------------------------------------------------------- emulator data


def metadata(client, datastore_id: str, image_set_id: str, version: str | None = None) -> dict[str, Any]:
    """The GetImageSetMetadata document (gzip JSON, which botocore does not decompress)."""
    kwargs = {"versionId": str(version)} if version else {}
    response = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, **kwargs)
    assert response["contentEncoding"] == "gzip"
    return json.loads(gzip.decompress(response["imageSetMetadataBlob"].read()))


def sop_uids(document: dict[str, Any]) -> set[str]:
    return {uid for series in document["Study"]["Series"].values() for uid in series["Instances"]}


def frame_count(document: dict[str, Any]) -> int:
    return sum(
        len(i.get("ImageFrames") or []) for s in document["Study"]["Series"].values() for i in s["Instances"].values()
    )


@dataclass
class ImageSet:
    image_set_id: str
    document: dict[str, Any]

    @property
    def patient_id(self) -> str | None:
        return self.document["Patient"]["DICOM"].get("PatientID")

    @property
    def study_uid(self) -> str:
        return self.document["Study"]["DICOM"]["StudyInstanceUID"]

    @property
    def series_uid(self) -> str:
        (uid,) = self.document["Study"]["Series"]
        return uid

    @property
    def instances(self) -> list[str]:
        return sorted(self.document["Study"]["Series"][self.series_uid]["Instances"])

    @property
    def frames(self) -> int:
        return frame_count(self.document)


@dataclass
class Sample:
    """The sample data store of a running emulator, read through a real boto3 client."""

    handle: Any
    client: Any
    datastore_id: str
    image_sets: list[ImageSet] = field(default_factory=list)

    @classmethod
    def seed(cls, handle: Any) -> Sample:
        datastore_id = handle.seed("sample")["datastoreId"]
        client = handle.client()
        sample = cls(handle, client, datastore_id)
        sample.image_sets = [ImageSet(s, metadata(client, datastore_id, s)) for s in sample.all_image_set_ids()]
        return sample

    # -------------------------------------------------------------- reading the emulator

    def all_image_set_ids(self) -> list[str]:
        return [
            summary["imageSetId"]
            for page in self.client.get_paginator("search_image_sets").paginate(datastoreId=self.datastore_id)
            for summary in page["imageSetsMetadataSummaries"]
        ]

    def new_image_set_ids(self) -> set[str]:
        """Image sets that were not in the seed."""
        return set(self.all_image_set_ids()) - {s.image_set_id for s in self.image_sets}

    def get(self, image_set_id: str, version: str | None = None) -> dict[str, Any]:
        kwargs = {"versionId": str(version)} if version else {}
        return self.client.get_image_set(datastoreId=self.datastore_id, imageSetId=image_set_id, **kwargs)

    def metadata(self, image_set_id: str, version: str | None = None) -> dict[str, Any]:
        return metadata(self.client, self.datastore_id, image_set_id, version)

    def sop_uids(self, image_set_id: str, version: str | None = None) -> set[str]:
        return sop_uids(self.metadata(image_set_id, version))

    def versions(self, image_set_id: str) -> dict[str, dict[str, Any]]:
        items = [
            item
            for page in self.client.get_paginator("list_image_set_versions").paginate(
                datastoreId=self.datastore_id, imageSetId=image_set_id
            )
            for item in page["imageSetPropertiesList"]
        ]
        return {item["versionId"]: item for item in items}

    def wait_active(self, image_set_id: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            props = self.get(image_set_id)
            if props["imageSetState"] == "ACTIVE":
                return props
            if time.monotonic() > deadline:
                raise AssertionError(f"image set {image_set_id} still {props['imageSetState']} after {timeout}s")
            time.sleep(0.02)

    def copy_calls(self) -> int:
        """CopyImageSet calls the emulator received (every outcome counted)."""
        return self.handle.counters().get("CopyImageSet", {}).get("calls", 0)

    def copy_counters(self) -> dict[str, Any]:
        return self.handle.counters().get(
            "CopyImageSet", {"calls": 0, "succeeded": 0, "throttled": 0, "faults": {}, "errors": {}}
        )

    # -------------------------------------------------------------- choosing image sets

    def with_instances(self, minimum: int) -> ImageSet:
        """The image set with the most instances (at least ``minimum``), every instance with frames."""
        candidates = [
            s
            for s in self.image_sets
            if len(s.document["Study"]["Series"]) == 1
            and all(i.get("ImageFrames") for i in s.document["Study"]["Series"][s.series_uid]["Instances"].values())
        ]
        best = max(candidates, key=lambda s: len(s.instances))
        assert len(best.instances) >= minimum
        return best

    def other_patient(self, source: ImageSet) -> ImageSet:
        """An image set of another patient and study, with a patient id (so that a merge mismatches)."""
        return next(
            s
            for s in self.image_sets
            if s.patient_id
            and s.patient_id != source.patient_id
            and s.study_uid != source.study_uid
            and s.instances
            and s.frames
        )

    def same_study_pair(self) -> tuple[ImageSet, ImageSet]:
        """Two image sets of one study with different series: a copy between them without force ends
        COPY_FAILED with the documented Series mismatch message."""
        return next(
            (a, b)
            for a in self.image_sets
            for b in self.image_sets
            if a is not b and a.study_uid == b.study_uid and a.series_uid != b.series_uid and a.frames
        )

    def by_id(self, image_set_id: str) -> ImageSet:
        return next(s for s in self.image_sets if s.image_set_id == image_set_id)


def copiable(selection: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "SchemaVersion": "1.1",
        "Study": {"Series": {series: {"Instances": {uid: {} for uid in uids}} for series, uids in selection.items()}},
    }


class Code(str):
    """Python source placed in a DAG file as is (not repr'd)."""

    def __repr__(self) -> str:
        return str(self)


def copy_task(task_id: str, *, cls: str = "HealthImagingCopyImageSetOperator", **kwargs: Any) -> str:
    """One copy operator in a DAG file; ``waiter_delay`` 1 unless given."""
    kwargs.setdefault("waiter_delay", 1)
    return task(task_id, cls=cls, **kwargs)


def sensor_task(task_id: str, **kwargs: Any) -> str:
    """One image-set sensor in a DAG file; ``poke_interval`` 1 unless given."""
    kwargs.setdefault("poke_interval", 1)
    return task(task_id, cls="HealthImagingImageSetSensor", **kwargs)


def task(task_id: str, *, cls: str, **kwargs: Any) -> str:
    """``task_id = cls(task_id=..., **kwargs)`` as DAG-file source (values repr'd, :class:`Code` as is)."""
    args = "".join(f", {name}={value!r}" for name, value in kwargs.items())
    return f"{task_id} = {cls}(task_id={task_id!r}{args})\n"


def update_study_description(sample: Sample, image_set_id: str, text: str) -> str:
    """UpdateImageSetMetadata on an image set's Study; waits for the new version; returns its id."""
    latest = sample.get(image_set_id)["versionId"]
    updates = {"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": text}}}
    response = sample.client.update_image_set_metadata(
        datastoreId=sample.datastore_id,
        imageSetId=image_set_id,
        latestVersionId=latest,
        updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": json.dumps(updates).encode()}},
    )
    sample.wait_active(image_set_id)
    return response["latestVersionId"]


def boto_copy(sample: Sample, source: str, *, destination: str | None = None, selection=None, **flags: Any) -> str:
    """A copy made with a plain boto3 client (test set-up); waits until it ends; returns the destination id."""
    info: dict[str, Any] = {"sourceImageSet": {"latestVersionId": sample.get(source)["versionId"]}}
    if selection is not None:
        info["sourceImageSet"]["DICOMCopies"] = {"copiableAttributes": json.dumps(copiable(selection))}
    if destination:
        info["destinationImageSet"] = {
            "imageSetId": destination,
            "latestVersionId": sample.get(destination)["versionId"],
        }
    response = sample.client.copy_image_set(
        datastoreId=sample.datastore_id, sourceImageSetId=source, copyImageSetInformation=info, **flags
    )
    image_set_id = response["destinationImageSetProperties"]["imageSetId"]
    sample.wait_active(image_set_id)
    sample.wait_active(source)
    return image_set_id


# ----------------------------------------------------------------------------------------- dag.test()

DAG_HEADER = '''
from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from healthimaging.operators import HealthImagingCopyImageSetOperator
from healthimaging.sensors import HealthImagingImageSetSensor

RESULTS = Path({results!r})


def record_failure(context):
    """Write the exception that failed the task where the test reads it."""
    ti = context["ti"]
    (RESULTS / f"{{ti.task_id}}.try{{ti.try_number}}.error").write_text(
        f"{{type(context.get('exception')).__name__}}: {{context.get('exception')}}")

'''


@dataclass
class DagResult:
    state: str
    task_states: dict[str, str]
    xcom: dict[str, Any]
    errors: dict[str, str]
    events: list[tuple[str, str]]
    tries: dict[str, int]
    seconds: float
    started: dict[str, float | None] = field(default_factory=dict)
    ended: dict[str, float | None] = field(default_factory=dict)

    def error(self, task_id: str) -> str:
        return "\n".join(v for k, v in sorted(self.errors.items()) if k.startswith(f"{task_id}.try"))


def write_dag(folder: Path, dag_id: str, body: str, *, params: str = "{}") -> Path:
    """A DAG file: the shared header, then ``body`` (indented under ``with DAG(...)``)."""
    folder.mkdir(parents=True, exist_ok=True)
    results = folder.parent / "results"
    results.mkdir(exist_ok=True)
    text = (
        DAG_HEADER.format(results=str(results))
        + textwrap.dedent(f"""
        with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), catchup=False, params={params},
                 default_args={{"on_failure_callback": record_failure, "retries": 0}}) as dag:
        """)
        + textwrap.indent(textwrap.dedent(body).strip() + "\n", "    ")
    )
    path = folder / f"{dag_id}.py"
    path.write_text(text)
    return path


def run_dag(dag_bundle, folder: Path, dag_id: str, *, run_conf: dict[str, Any] | None = None) -> DagResult:
    """Make ``folder`` the DAG bundle, run ``dag_id`` with ``dag.test()`` and collect the outcome."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.log import Log
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_bundle(folder)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.get_dag(dag_id)
    started = time.monotonic()
    dag_run = dag.test(run_conf=run_conf)
    seconds = time.monotonic() - started
    with create_session() as session:
        tis = dag_run.get_task_instances(session=session)
        task_states = {ti.task_id: str(ti.state) for ti in tis}
        tries = {ti.task_id: ti.try_number for ti in tis}
        started = {ti.task_id: ti.start_date.timestamp() if ti.start_date else None for ti in tis}
        ended = {ti.task_id: ti.end_date.timestamp() if ti.end_date else None for ti in tis}
        rows = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id, XComModel.key == "return_value")
            .all()
        )
        xcom = {
            row.task_id: (json.loads(row.value) if isinstance(row.value, (str, bytes)) else row.value) for row in rows
        }
        events = [
            (row.task_id, row.event)
            for row in session.query(Log).filter(Log.dag_id == dag_id, Log.run_id == dag_run.run_id).order_by(Log.id)
        ]
    results = folder.parent / "results"
    errors = {p.name.removesuffix(".error"): p.read_text() for p in results.glob("*.error")} if results.exists() else {}
    return DagResult(str(dag_run.state), task_states, xcom, errors, events, tries, seconds, started, ended)
