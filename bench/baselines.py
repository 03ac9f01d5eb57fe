"""The bulk-copy benchmark's two baselines: what a user does without this project, on the same emulator.

Run by hand (``.venv/bin/python bench/baselines.py --rows 60 --rate 5``): a process stack
(``stack.process_stack.ProcessStack``, CeleryExecutor, one worker) whose dags folder holds the
repository's ``dags/*.py`` and ``bench/naive_dag/`` (:func:`dags_folder_with_naive`), the emulator's
CopyImageSet quota at ``--rate``/s burst 1 and copies of ``--copy-seconds``; both baselines run on it,
clean, then (``--lost-response P``, default 0.02, fault seed ``--fault-seed``) with that share of
CopyImageSet responses lost, the plain loops first (a DAG run's aftermath loads this small machine), each
after ``--settle-seconds``, and their figures are printed (and written to ``results.json`` beside the
stack's home).

- :func:`plain_loop`: a boto3 loop with a client-side limiter, one process, one thread.
- :func:`naive_dag`: ``bench/naive_dag/naive_healthimaging_copy.py`` (a mapped task per row and a mapped
  poke-mode sensor per copy) triggered on a running stack.

Both count **duplicates in the emulator**, not from the client: every image set of the data store is
listed (SearchImageSets) before and after the run; each image set created meanwhile is tied to its
source by ``DICOMTags.DICOMSeriesInstanceUID`` of the summary. A copy into a new image set carries the
source's study and series unchanged, and the synthetic seed gives every image set a series UID of its own
(``healthimaging_emulator.seeding``), so the series UID names the source; creation during the run (the
before/after difference, not the series alone) tells this run's copies from earlier runs' on the same
sources. ``duplicates`` is, summed over the sources, the image sets created beyond one.

Lost responses: the emulator's fault ``CopyImageSet:lost_response`` lets the copy happen and drops the
connection. It can be set at run time (``POST /_emulator/config`` ``{"faults": ...}``, which replaces the
fault table): ``lost_response=P`` sets it for the run and puts the previous table back afterwards, so the
caller needs no emulator flag. botocore's standard retry mode resends the request after rand(0, 1) s (more
if that resend is throttled): it makes a second copy when it reaches the source after the first copy has
ended, and meets the first copy's lock (ConflictException, 409) when it arrives while the copy still runs
(``tests/test_emulator_realism.py``). So with 2 s copies most lost responses end in a ConflictException
for a row whose copy does exist (``untracked``: image sets made that the client never heard of), and
duplicates come from what the caller does next: the plain loop gives the row up (it only retries 402 and
throttling), the naive DAG's task retry sends the copy again, ten seconds later, and copies it twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "plugins")) if p not in sys.path]
from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV, admin_request  # noqa: E402 - after the path is set

NAIVE_DAG_FOLDER = ROOT / "bench" / "naive_dag"
NAIVE_DAG_ID = "naive_healthimaging_copy"
COPY = "CopyImageSet"
#: The errors after which the plain loop waits a second and sends the row again: too many copies in progress
#: (402) and throttling that outlasted the SDK's retries. Anything else ends the row (``refused``).
RETRIED_CODES = ("ServiceQuotaExceededException", "ThrottlingException")
#: Airflow's ``[core] max_map_length`` when the configuration does not set it (config.yml).
DEFAULT_MAX_MAP_LENGTH = 1024
DONE = ("COPIED", "COPY_FAILED")

Admin = Callable[..., Any]


def client(url: str, **retries: Any) -> Any:
    """The medical-imaging client a user builds for ``url``: standard retries, dummy credentials."""
    return boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="baseline",
        aws_secret_access_key="baseline",
        config=Config(inject_host_prefix=False, retries={"mode": "standard", **retries}),
    )


def url_admin(url: str) -> Admin:
    """Admin requests to the emulator at ``url`` (token: $HEALTHIMAGING_EMULATOR_ADMIN_TOKEN, as admin_request)."""

    def admin(method: str, path: str, body: Any = None) -> Any:
        status, answer = admin_request(url, method, path, body)
        if status != 200:
            raise RuntimeError(f"emulator admin {method} {path} answered HTTP {status}: {answer}")
        return answer

    return admin


@contextlib.contextmanager
def lost_responses(admin: Admin, probability: float, seed: int | None = None) -> Iterator[None]:
    """CopyImageSet responses lost with ``probability`` inside the block (the emulator's fault table at run
    time, its generators restarted with ``seed``, or the emulator's seed); the previous table and seed
    afterwards. Nothing changes when ``probability`` is 0.

    Setting the table restarts the fault generators, and only calls past the rate limit draw: a run of N
    accepted copies sees the first N draws of ``seed``'s sequence (seed 0 has none under 0.02 in its first
    74), so the seed, not only the share, decides how many responses a short run loses."""
    if not probability:
        yield
        return
    config = admin("GET", "config")
    previous = config["faults"]
    faults = {**previous, COPY: {**previous.get(COPY, {}), "lost_response": probability}}
    admin("POST", "config", {"faults": faults, "seed": config["seed"] if seed is None else seed})
    try:
        yield
    finally:
        admin("POST", "config", {"faults": previous, "seed": config["seed"]})


def image_sets(reader: Any, datastore_id: str) -> dict[str, dict]:
    """Every image set of the data store, by id (SearchImageSets summaries)."""
    return {
        s["imageSetId"]: s
        for page in reader.get_paginator("search_image_sets").paginate(datastoreId=datastore_id)
        for s in page["imageSetsMetadataSummaries"]
    }


def series_uid(summary: dict) -> str | None:
    return (summary.get("DICOMTags") or {}).get("DICOMSeriesInstanceUID")


def created_copies(before: dict[str, dict], after: dict[str, dict], source_ids: list[str]) -> dict[str, Any]:
    """The image sets created between two listings, tied to their sources by series UID (module docstring)."""
    source_of = {series_uid(after[s]): s for s in source_ids if s in after}
    new = {i: s for i, s in after.items() if i not in before}
    by_source: dict[str, list[str]] = defaultdict(list)
    unattributed = []
    for image_set_id, summary in new.items():
        source = source_of.get(series_uid(summary))
        (by_source[source].append(image_set_id) if source else unattributed.append(image_set_id))
    return {
        "by_source": dict(by_source),
        "new": new,
        "duplicates": sum(len(d) - 1 for d in by_source.values()),
        "sources_copied_twice": sum(1 for d in by_source.values() if len(d) > 1),
        "sources_without_copy": sum(1 for s in source_ids if s not in by_source),
        "unattributed": len(unattributed),
    }


def counter_delta(before: dict, after: dict) -> dict[str, Any]:
    """CopyImageSet calls / throttled / 402s / lost responses, and every operation's calls, between two
    snapshots of ``/_emulator/counters``."""
    old, new = before.get(COPY, {}), after.get(COPY, {})

    def nested(key: str, name: str) -> int:
        return new.get(key, {}).get(name, 0) - old.get(key, {}).get(name, 0)

    return {
        "copy_calls": new.get("calls", 0) - old.get("calls", 0),
        "throttled": new.get("throttled", 0) - old.get("throttled", 0),
        "refused_402": nested("errors", "ServiceQuotaExceededException"),
        "conflicts_409": nested("errors", "ConflictException"),
        "lost_responses": nested("faults", "lost_response"),
        "all_calls": sum(v.get("calls", 0) for v in after.values()) - sum(v.get("calls", 0) for v in before.values()),
    }


def error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code", "ClientError")
    return type(error).__name__


def plain_loop(
    url: str,
    datastore_id: str,
    source_ids: list[str],
    rate: float,
    lost_response: float = 0.0,
    fault_seed: int | None = None,
) -> dict:
    """Copy ``source_ids`` the way a user script does without this project, and measure it on the emulator.

    One thread: a boto3 medical-imaging client (standard retries: botocore resends throttled calls and lost
    connections up to 3 attempts), a client-side limiter (time.monotonic, one CopyImageSet per 1 / ``rate``
    s), and for each row GetImageSet (its latestVersionId) then CopyImageSet. Between copies it polls every
    copy in flight with GetImageSet once a second until COPIED or COPY_FAILED. When CopyImageSet fails with
    ServiceQuotaExceededException (402, too many copies in progress) or with a ThrottlingException that
    outlasted the SDK's retries, the loop sleeps 1 s and sends the row again: what a reasonable user script
    does. The limiter spaces the loop's own calls (each 1 / ``rate`` s after the previous one was sent); it
    cannot see the SDK's resends, so against a burst-1 quota at the same rate one throttle (a send the
    service stamps a little under 1 / ``rate`` after the previous) tends to cascade: the resend that succeeds
    is followed at once by the next row's copy, which is throttled in turn. The throttled share therefore
    varies from run to run (0 to about half the calls at 5/s on this machine). Any other error ends the row
    (``refused``, by code in ``refused_codes``): among them the
    ConflictException of an SDK retry that met the lock of the copy its lost first attempt started.

    Returns ``makespan`` (first accepted CopyImageSet sent to the last completion the loop noticed, s),
    ``copied`` / ``failed`` (COPIED / COPY_FAILED), ``refused``, the emulator's CopyImageSet counters delta
    (``copy_calls``, ``throttled``, ``refused_402``, ``conflicts_409``, ``lost_responses``),
    ``calls_per_row`` (every emulator call / rows), ``duplicates`` and ``untracked`` (image sets created
    that the loop never learned of), counted in the emulator (module docstring), and ``cpu_seconds``
    (time.process_time of the loop). ``lost_response``: the share of CopyImageSet responses the emulator
    drops during the run (set through its config API, restored after), drawn from ``fault_seed``
    (:func:`lost_responses`).
    """
    sdk = client(url)
    reader = client(url, max_attempts=10)
    admin = url_admin(url)
    before = image_sets(reader, datastore_id)
    interval = 1.0 / rate
    pending = list(reversed(source_ids))
    in_flight: dict[str, tuple[str, float]] = {}  # destination -> (source, next poll)
    outcome: Counter[str] = Counter()
    refused_codes: Counter[str] = Counter()
    destinations: set[str] = set()
    first_accepted = last_done = None
    with lost_responses(admin, lost_response, fault_seed):
        counters_before = admin("GET", "counters")
        cpu = time.process_time()
        next_copy = time.monotonic()
        while pending or in_flight:
            now = time.monotonic()
            if pending and now >= next_copy:
                source = pending[-1]
                try:
                    version = sdk.get_image_set(datastoreId=datastore_id, imageSetId=source)["versionId"]
                    sent = time.monotonic()
                    next_copy = sent + interval  # the limiter: sends at least 1 / rate apart
                    answer = sdk.copy_image_set(
                        datastoreId=datastore_id,
                        sourceImageSetId=source,
                        copyImageSetInformation={"sourceImageSet": {"latestVersionId": version}},
                    )
                except (ClientError, BotoCoreError) as error:
                    if error_code(error) in RETRIED_CODES:
                        time.sleep(1.0)
                    else:
                        pending.pop()
                        refused_codes[error_code(error)] += 1
                    continue
                pending.pop()
                destination = answer["destinationImageSetProperties"]["imageSetId"]
                destinations.add(destination)
                first_accepted = sent if first_accepted is None else first_accepted
                in_flight[destination] = (source, time.monotonic() + 1.0)
                continue
            for destination, (source, due) in list(in_flight.items()):
                if due > time.monotonic():
                    continue
                try:
                    status = sdk.get_image_set(datastoreId=datastore_id, imageSetId=destination)[
                        "imageSetWorkflowStatus"
                    ]
                except (ClientError, BotoCoreError):
                    status = None  # throttled past the SDK's retries: ask again next second
                if status in DONE:
                    del in_flight[destination]
                    outcome[status] += 1
                    last_done = time.monotonic()
                else:
                    in_flight[destination] = (source, time.monotonic() + 1.0)
            wakes = [due for _, due in in_flight.values()] + ([next_copy] if pending else [])
            if wakes:
                time.sleep(max(0.0, min(wakes) - time.monotonic()))
        cpu_seconds = time.process_time() - cpu
        counters_after = admin("GET", "counters")
    copies = created_copies(before, image_sets(reader, datastore_id), source_ids)
    calls = counter_delta(counters_before, counters_after)
    return {
        "rows": len(source_ids),
        "rate": rate,
        "lost_response": lost_response,
        "makespan": (last_done - first_accepted) if first_accepted is not None and last_done is not None else None,
        "copied": outcome["COPIED"],
        "failed": outcome["COPY_FAILED"],
        "refused": sum(refused_codes.values()),
        "refused_codes": dict(refused_codes),
        **{k: v for k, v in calls.items() if k != "all_calls"},
        "calls_per_row": calls["all_calls"] / len(source_ids) if source_ids else 0.0,
        "duplicates": copies["duplicates"],
        "sources_copied_twice": copies["sources_copied_twice"],
        "sources_without_copy": copies["sources_without_copy"],
        "untracked": len(set(copies["new"]) - destinations),
        "cpu_seconds": cpu_seconds,
    }


# ------------------------------------------------------------------------------------------ the naive DAG


def dags_folder_with_naive(target: Path) -> Path:
    """A dags folder holding copies of the repository's ``dags/*.py`` and ``bench/naive_dag/*.py``: one stack
    (``ProcessStack(dags_folder=...)``) then serves the project's run and the naive baseline."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((ROOT / "dags").glob("*.py")), *sorted(NAIVE_DAG_FOLDER.glob("*.py"))]:
        shutil.copy2(source, target / source.name)
    return target


def max_map_length(stack: Any) -> int:
    """Airflow's ``[core] max_map_length`` as the stack's scheduler reads it (``airflow config get-value``)."""
    env = stack.processes["airflow-scheduler"].env
    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run(
        [airflow, "config", "get-value", "core", "max_map_length"], env=env, capture_output=True, text=True
    )
    try:
        return int(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return int(env.get("AIRFLOW__CORE__MAX_MAP_LENGTH", DEFAULT_MAX_MAP_LENGTH))


def task_instance_figures(db_url: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Task instances of a run and their durations (end_date - start_date) from the metadata DB: the final
    tries (``task_instance``) and the earlier tries of retried ones (``task_instance_history``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    query = (
        "SELECT COUNT(*), COALESCE(SUM(EXTRACT(EPOCH FROM end_date - start_date)), 0), MIN(start_date), "
        "MAX(end_date) FROM {table} WHERE dag_id = :dag AND run_id = :run"
    )
    try:
        with engine.connect() as db:
            args = {"dag": dag_id, "run": run_id}
            count, seconds, first, last = db.execute(sa.text(query.format(table="task_instance")), args).one()
            retried, retried_seconds, _, _ = db.execute(
                sa.text(query.format(table="task_instance_history")), args
            ).one()
            states = dict(
                db.execute(
                    sa.text(
                        "SELECT state, COUNT(*) FROM task_instance WHERE dag_id = :dag AND run_id = :run GROUP BY state"
                    ),
                    args,
                ).fetchall()
            )
    finally:
        engine.dispose()
    return {
        "task_instances": count,
        "worker_slot_seconds": float(seconds),
        "earlier_tries": retried,
        "earlier_tries_slot_seconds": float(retried_seconds),
        "task_states": {str(k): v for k, v in states.items()},
        "tasks_makespan": (last - first).total_seconds() if first and last else None,
    }


def naive_dag(
    stack: Any,
    manifest_rows: list[str],
    datastore_id: str,
    lost_response: float = 0.0,
    fault_seed: int | None = None,
    timeout: float | None = None,
) -> dict:
    """Run ``naive_healthimaging_copy`` (bench/naive_dag/) for ``manifest_rows`` (source image set ids) on a
    running ``ProcessStack`` whose dags folder holds it (:func:`dags_folder_with_naive`), and measure it.

    Returns ``makespan`` from the emulator: the first destination image set's creation (``createdAt``) to the
    last one's last update (``updatedAt``: the copy's end), over the image sets this run created;
    ``tasks_makespan`` is the same span from the task instances (first start_date to last end_date). Then
    the emulator's CopyImageSet counters delta (``copy_calls``, ``throttled``, ``refused_402``,
    ``conflicts_409``, ``lost_responses``), ``task_instances`` and ``worker_slot_seconds`` (sum of
    end_date - start_date over the ``task_instance`` table; ``earlier_tries_slot_seconds`` adds the tries
    that were retried, from ``task_instance_history``), the run's ``state``, ``duplicates`` (in the emulator:
    module docstring), and ``max_map_length``.

    Where it stops: a mapped task cannot expand over more than ``[core] max_map_length`` items (1024 by
    default; read here from the stack's configuration). Airflow 3.3 checks it when the upstream task pushes
    its return value (``airflow/api_fastapi/execution_api/routes/xcoms.py``, ``set_xcom``)::

        max_map_length = conf.getint("core", "max_map_length", fallback=1024)
        if task_map.length > max_map_length:
            raise HTTPException(
                status_code=status.HTTP_400_BAD_REQUEST,
                detail={
                    "reason": "unmappable_return_value_length",
                    "message": "pushed value is too large to map as a downstream's dependency",
                },
            )

    so with a longer manifest ``source_ids`` fails (and with it the run) before any copy is sent:
    ``fits_max_map_length`` says whether this manifest fits.
    """
    from tests.airflow_stack import StackClient

    reader = client(stack.emulator_url, max_attempts=10)
    limit = max_map_length(stack)
    before = image_sets(reader, datastore_id)
    with lost_responses(stack.emulator_admin, lost_response, fault_seed):
        counters_before = stack.emulator_admin("GET", "counters")
        api = StackClient(stack)
        api.auth_token = stack.token()
        conf = {"datastore_id": datastore_id, "source_ids": list(manifest_rows)}
        run_id = api.trigger(NAIVE_DAG_ID, conf=conf, wait_for_dag_timeout=180)
        state = api.wait_for_run(NAIVE_DAG_ID, run_id, timeout=timeout or 60 * len(manifest_rows) + 600, poll=2)
        counters_after = stack.emulator_admin("GET", "counters")
    copies = created_copies(before, image_sets(reader, datastore_id), list(manifest_rows))
    made = copies["new"].values()
    makespan = (
        max(s["updatedAt"] for s in made).timestamp() - min(s["createdAt"] for s in made).timestamp() if made else None
    )
    calls = counter_delta(counters_before, counters_after)
    return {
        "rows": len(manifest_rows),
        "lost_response": lost_response,
        "run_id": run_id,
        "state": state,
        "makespan": makespan,
        "makespan_source": "emulator: first destination createdAt to last destination updatedAt",
        **{k: v for k, v in calls.items() if k != "all_calls"},
        "calls_per_row": calls["all_calls"] / len(manifest_rows) if manifest_rows else 0.0,
        **task_instance_figures(stack.sql_alchemy_conn, NAIVE_DAG_ID, run_id),
        "duplicates": copies["duplicates"],
        "sources_copied_twice": copies["sources_copied_twice"],
        "sources_without_copy": copies["sources_without_copy"],
        "max_map_length": limit,
        "fits_max_map_length": len(manifest_rows) <= limit,
        "max_map_length_note": (
            f"a manifest of more than {limit} rows ([core] max_map_length) fails source_ids: the execution API "
            "refuses the XCom ('pushed value is too large to map as a downstream's dependency')"
        ),
        "diagnostics": None if state == "success" else api.diagnostics(NAIVE_DAG_ID, run_id),
    }


# ------------------------------------------------------------------------------------------ by hand


def emulator_args(rows: int, rate: float, copy_seconds: float) -> list[str]:
    """The emulator's arguments for the benchmark (as bench/bulk_copy.py's): ``rows`` synthetic image sets,
    CopyImageSet at ``rate``/s burst 1, copies of ``copy_seconds``."""
    return [
        "--seed",
        f"synthetic:{rows}",
        "--rate",
        f"CopyImageSet={rate}:1",
        "--copy-seconds",
        str(copy_seconds),
        "--copy-seconds-per-instance",
        "0",
        "--log-level",
        "WARNING",
    ]


def synthetic_sources(url: str, rows: int) -> tuple[str, list[str]]:
    """The synthetic data store and its first ``rows`` image sets."""
    reader = client(url, max_attempts=10)
    (datastore_id,) = [
        d["datastoreId"] for d in reader.list_datastores()["datastoreSummaries"] if d["datastoreName"] == "synthetic"
    ]
    return datastore_id, list(image_sets(reader, datastore_id))[:rows]


def settle(seconds: float) -> None:
    """Wait ``seconds``, or until the 1-minute load average falls under the machine's cores, whichever is
    later, at most 3 x ``seconds``."""
    began = time.monotonic()
    time.sleep(seconds)
    while os.getloadavg()[0] > (os.cpu_count() or 1) and time.monotonic() - began < 3 * seconds:
        time.sleep(2)


def describe(name: str, r: dict, ideal: float) -> str:
    makespan = r["makespan"]
    lines = [
        f"{name}: {r['rows']} rows, lost responses {100 * r['lost_response']:g}%"
        + (f", run {r['state']}" if "state" in r else ""),
        f"  makespan {makespan:.1f}s = {makespan / ideal:.3f}x the ideal {ideal:.1f}s"
        if makespan
        else "  makespan: none (no copy completed)",
        f"  CopyImageSet calls {r['copy_calls']}, throttled {r['throttled']}"
        f" ({100 * r['throttled'] / max(1, r['copy_calls']):.1f}%), 402 {r['refused_402']}, 409 {r['conflicts_409']},"
        f" lost responses {r['lost_responses']}; all calls per row {r['calls_per_row']:.2f}",
        f"  duplicates in the emulator: {r['duplicates']} ({r['sources_copied_twice']} sources copied more than once)",
    ]
    if "cpu_seconds" in r:
        lines.insert(
            2,
            f"  copied {r['copied']}, COPY_FAILED {r['failed']}, refused {r['refused']} {r['refused_codes'] or ''}"
            f"; untracked image sets {r['untracked']}; loop CPU {r['cpu_seconds']:.2f}s",
        )
    else:
        lines.insert(
            2,
            f"  task instances {r['task_instances']} {r['task_states']} (+{r['earlier_tries']} earlier tries);"
            f" tasks' span {r['tasks_makespan'] or 0:.1f}s",
        )
        lines.insert(
            3,
            f"  worker-slot seconds {r['worker_slot_seconds']:.1f} ({r['worker_slot_seconds'] / r['rows']:.2f}/row;"
            f" +{r['earlier_tries_slot_seconds']:.1f} in earlier tries); sources without a copy"
            f" {r['sources_without_copy']}",
        )
        lines.append(
            f"  max_map_length {r['max_map_length']}: this manifest "
            f"{'fits' if r['fits_max_map_length'] else 'DOES NOT FIT'}; {r['max_map_length_note']}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--copy-seconds", type=float, default=2.0)
    parser.add_argument("--lost-response", type=float, default=0.02, help="the duplicate runs' share (0: none)")
    parser.add_argument("--fault-seed", type=int, default=1, help="the emulator's fault seed in the duplicate runs")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settle-seconds", type=float, default=30.0, help="pause before each run")
    args = parser.parse_args()
    from bench.ideal import ideal_makespan
    from healthimaging_emulator.quotas import MAX_CONCURRENT_COPIES_PER_DATASTORE
    from stack.compose import ENV_EXAMPLE
    from stack.process_stack import ProcessStack

    home = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    stack = ProcessStack(
        home / "home",
        workers=args.workers,
        env_file=ENV_EXAMPLE,
        environ=environ,
        emulator_args=emulator_args(args.rows, args.rate, args.copy_seconds),
        dags_folder=dags_folder_with_naive(home / "dags"),
    )
    ideal = ideal_makespan(args.rows, args.rate, args.copy_seconds, MAX_CONCURRENT_COPIES_PER_DATASTORE)
    print(
        f"baselines: {args.rows} rows, CopyImageSet quota {args.rate}/s burst 1, copies of {args.copy_seconds}s,"
        f" ideal makespan {ideal:.1f}s (bench/ideal.py); stack home {stack.home}",
        flush=True,
    )
    results = []
    shares = [0.0] + ([args.lost_response] if args.lost_response else [])
    with stack:
        os.environ[ADMIN_TOKEN_ENV] = stack.emulator_admin_token  # plain_loop's admin requests
        datastore_id, ids = synthetic_sources(stack.emulator_url, args.rows)
        # The loops first: on this small machine a DAG run's aftermath (scheduler, worker) still holds the CPU
        # for a while, and a starved emulator stamps sends that left 1 / rate apart closer together.
        runs = [("plain boto3 loop", share) for share in shares] + [
            ("naive DAG (mapped copy + poke sensors)", share) for share in shares
        ]
        for name, share in runs:
            settle(args.settle_seconds)
            load = os.getloadavg()[0]
            if name.startswith("plain"):
                r = plain_loop(stack.emulator_url, datastore_id, ids, args.rate, share, args.fault_seed)
            else:
                r = naive_dag(stack, ids, datastore_id, share, args.fault_seed)
            print(describe(name, r, ideal) + f"\n  (1-minute load average at the start: {load:.1f})", flush=True)
            if r.get("diagnostics"):
                print(r["diagnostics"][-4000:], file=sys.stderr)
            results.append({"baseline": name, **r})
    (home / "results.json").write_text(json.dumps(results, default=str, indent=1))
    return 0 if all(r.get("state", "success") == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
