"""Bulk-copy benchmark: the healthimaging_bulk_copy DAG at the service's limits on the process stack of
docker-compose.yaml, beside the baselines a user would write without this project; and manifest validation.

Run: ``make bench-bulk`` (every point, about an hour), or ``.venv/bin/python bench/bulk_copy.py [--points
5/s,adaptive] [--scale 0.1] [--baselines loop,naive] [--validate-rows 100000]``; ``make bench-bulk-100k`` is
the 100,000-row run (``--points 100k``).

One stack for every point: PostgreSQL (metadata DB and ledger), Redis, the scheduler, two Celery workers,
the triggerer, and the emulator, whose limits are set for each point through its admin API. The DAG runs
with its default Params; only ``copies_per_second`` is set to the emulator's CopyImageSet quota (and, for an
account whose limits were raised, ``max_copies_in_flight`` and ``get_image_set_per_second`` to the raised
ones). Each point prints:

- the copy makespan (first CopyImageSet sent → last copy verified, from the ledger) over the ideal of
  ``bench/ideal.py`` (the rate and the copies in progress, copies of exactly the emulator's length);
- refused calls: CopyImageSet throttled or over the copies in progress (ServiceQuotaExceededException), and
  GetImageSet throttled; emulator calls per row;
- CPU seconds per 1,000 copies of the triggerer, the workers and the scheduler (process trees, from psutil);
- ledger statements per copy (counted by each engine, from its last progress line);
- peak memory (VmHWM) of the triggerer's processes and the scheduler's;
- for ``adaptive`` (copies_per_second 10 against a 5/s quota): the shared rate after the first minute.

The baselines run on the same emulator with the same limits, on sources of their own (``bench/baselines.py``):
a plain boto3 loop with a limiter, and the DAG a user writes without this project (a mapped task per row,
SDK retries, a poke-mode sensor) where Airflow's ``max_map_length`` lets it run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
from bench import baselines  # noqa: E402 - after the path is set
from bench.ideal import ideal_makespan  # noqa: E402 - after the path is set
from healthimaging.bulk.engine import PACE_MARGIN  # noqa: E402 - after the path is set
from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV  # noqa: E402 - after the path is set
from healthimaging_emulator.seeding import SYNTHETIC_DATASTORE  # noqa: E402 - after the path is set

DAG_ID = "healthimaging_bulk_copy"
#: The engine's statement count, in each batch's last progress line (healthimaging.bulk.engine).
STATEMENTS_LINE = re.compile(r"; (\d+) ledger statements \(")


@dataclass
class Point:
    """One measurement: the emulator's limits, the copies' length, the rows, what the DAG is told."""

    name: str
    quota: float  # CopyImageSet requests a second (burst 1)
    copy_seconds: float
    rows: int
    in_progress: int = 100
    get_image_set: float = 25.0
    get_metadata: float = 50.0
    configured_rate: float | None = None  # copies_per_second, when not the quota (the adaptive point)
    raised: bool = False  # the account's limits were raised: the DAG is told them
    target: float | None = None  # makespan over the ideal to reach
    params: dict[str, Any] = field(default_factory=dict)

    def conf(self) -> dict[str, Any]:
        conf = {"copies_per_second": self.configured_rate or self.quota, **self.params}
        if self.raised:
            conf.update(max_copies_in_flight=self.in_progress, get_image_set_per_second=self.get_image_set)
        return conf

    def emulator_config(self) -> dict[str, Any]:
        return {
            "profile": "aws",
            "rates": {
                "CopyImageSet": {"rate": self.quota, "burst": 1},
                "GetImageSet": {"rate": self.get_image_set, "burst": 2 * self.get_image_set},
                "GetImageSetMetadata": {"rate": self.get_metadata, "burst": 2 * self.get_metadata},
            },
            "timing": {"copy_fixed_seconds": self.copy_seconds, "copy_per_instance_seconds": 0.0},
            "max_concurrent_copies": self.in_progress,
        }


RAISED = {"in_progress": 500, "get_image_set": 250.0, "get_metadata": 500.0, "raised": True}
POINTS = {
    "0.25/s": Point("0.25/s (AWS default), 2 s copies", 0.25, 2.0, 60, target=1.01),
    "5/s": Point("5/s, 2 s copies", 5.0, 2.0, 1000, target=1.03),
    "5/s-60s": Point("5/s, 60 s copies (100 in progress binds)", 5.0, 60.0, 1000, target=1.05),
    "50/s": Point("50/s, 2 s copies, raised limits", 50.0, 2.0, 10_000, target=1.03, **RAISED),
    "adaptive": Point("copies_per_second 10 against a 5/s quota, 2 s copies", 5.0, 2.0, 1000, configured_rate=10.0),
    "100k": Point("100,000 rows, 100/s, 2 s copies, raised limits", 100.0, 2.0, 100_000, **RAISED),
}
DEFAULT_POINTS = ("0.25/s", "5/s", "5/s-60s", "50/s", "adaptive")


# ------------------------------------------------------------------------------------------ process figures


def tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of these processes and every descendant (reaped children included)."""
    import psutil

    total = 0.0
    for pid in pids:
        for process in tree(pid):
            try:
                t = process.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
    return total


def peak_rss_mb(pids: list[int]) -> float:
    """The largest VmHWM (peak resident memory) among these processes and their descendants, in MB."""
    peak = 0
    for pid in pids:
        for process in tree(pid):
            try:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
    return peak / 1024


def rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        for process in tree(pid):
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
    return total / 1e6


def service_pids(stack, service: str) -> list[int]:
    return [p.popen.pid for p in stack.processes.values() if p.service == service and p.popen is not None]


# ------------------------------------------------------------------------------------------ the project's run


class SourcePool:
    """The stack's synthetic image sets (compose seeds ``synthetic:$HEALTHIMAGING_EMULATOR_SYNTHETIC_IMAGE_SETS``),
    handed out in disjoint slices: a run on sources an earlier run copied would skip them all. The seed's ids
    are known in advance (healthimaging_emulator.seeding: the md5 of ``synthetic:<i>``); copies get new ones."""

    def __init__(self, stack, size: int) -> None:
        reader = baselines.client(stack.emulator_url, max_attempts=10)
        (self.datastore_id,) = [
            d["datastoreId"]
            for d in reader.list_datastores()["datastoreSummaries"]
            if d["datastoreName"] == SYNTHETIC_DATASTORE
        ]
        self.size, self.next = size, 0

    def take(self, rows: int) -> list[str]:
        if self.next + rows > self.size:
            raise RuntimeError(f"the stack was seeded with {self.size} image sets; {self.next + rows} are needed")
        ids = [hashlib.md5(f"synthetic:{i}".encode()).hexdigest() for i in range(self.next, self.next + rows)]
        self.next += rows
        return ids


def ledger_figures(ledger_url: str, run_id: str) -> dict[str, Any]:
    import sqlalchemy as sa

    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as db:
            first, last_sent, last, succeeded, failed, total, throttles = db.execute(
                sa.text(
                    "SELECT MIN(submitted_at), MAX(submitted_at), MAX(completed_at), "
                    "SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), COUNT(*), SUM(throttles) "
                    "FROM healthimaging_copy_ledger WHERE run_id = :run"
                ),
                {"run": run_id},
            ).one()
            size = db.execute(sa.text("SELECT pg_total_relation_size('healthimaging_copy_ledger')")).scalar_one()
            rows_in_ledger = db.execute(sa.text("SELECT COUNT(*) FROM healthimaging_copy_ledger")).scalar_one()
    finally:
        engine.dispose()
    return {
        "makespan": (last or 0) - (first or 0),
        "send_span": (last_sent or 0) - (first or 0),
        "tail": (last or 0) - (last_sent or 0),
        "succeeded": succeeded or 0,
        "failed": failed or 0,
        "rows": total,
        "throttles_recorded": throttles or 0,
        "ledger_bytes": size,
        "ledger_rows": rows_in_ledger,
    }


def bucket_rate(ledger_url: str) -> float | None:
    """The shared CopyImageSet bucket's rate now (healthimaging.bulk.ledger.Ledger.bucket_rate)."""
    from healthimaging.bulk.ledger import Ledger, engine_for

    state = Ledger(engine_for(ledger_url)).bucket_rate("CopyImageSet")
    return None if state is None else state[0]


def statements(stack, run_id: str) -> int:
    """The ledger statements the run's engines counted (their last progress lines, in the task logs)."""
    total = 0
    quoted = f"run_id={run_id}"
    for path in (stack.home / "logs").rglob("*"):
        if path.is_file() and quoted in str(path):
            total += sum(int(m.group(1)) for m in STATEMENTS_LINE.finditer(path.read_text(errors="replace")))
    return total


class Sampler(threading.Thread):
    """Samples, every ``interval`` seconds, the shared rate and the scheduler's and triggerer's memory."""

    def __init__(self, stack, interval: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval = stack, interval
        self.samples: list[dict[str, float | None]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(self.interval):
            try:
                rate = bucket_rate(self.stack.ledger_url())
            except Exception:  # noqa: BLE001 - a sample missed is not a failed benchmark
                rate = None
            self.samples.append(
                {
                    "t": time.monotonic() - started,
                    "rate": rate,
                    "scheduler_mb": rss_mb(service_pids(self.stack, "airflow-scheduler")),
                    "triggerer_mb": rss_mb(service_pids(self.stack, "airflow-triggerer")),
                }
            )


def run_point(stack, api, point: Point, manifests: Path, pool: SourcePool) -> dict[str, Any]:
    from healthimaging.bulk.manifest import template

    stack.emulator_admin("POST", "config", point.emulator_config())
    datastore_id, ids = pool.datastore_id, pool.take(point.rows)
    manifest = manifests / f"{re.sub(r'[^A-Za-z0-9]+', '-', point.name)}-{int(time.time())}.csv"
    manifest.write_text(template({"source_image_set_id": i} for i in ids))
    services = {s: service_pids(stack, s) for s in ("airflow-triggerer", "airflow-worker", "airflow-scheduler")}
    cpu_before = {s: cpu_seconds(p) for s, p in services.items()}
    counters_before = stack.emulator_admin("GET", "counters")
    sampler = Sampler(stack)
    sampler.start()
    started = time.monotonic()
    conf = {"manifest": str(manifest), "default_datastore_id": datastore_id, **point.conf()}
    run_id = api.trigger(DAG_ID, conf=conf, wait_for_dag_timeout=180)
    ideal = ideal_makespan(point.rows, point.quota, point.copy_seconds, point.in_progress)
    state = api.wait_for_run(DAG_ID, run_id, timeout=3 * ideal + 900, poll=2)
    run_seconds = time.monotonic() - started
    sampler.stopped.set()
    sampler.join()
    counters_after = stack.emulator_admin("GET", "counters")
    counters = baselines.counter_delta(counters_before, counters_after)
    cpu = {s: cpu_seconds(p) - cpu_before[s] for s, p in services.items()}
    if state != "success":
        print(api.diagnostics(DAG_ID, run_id), file=sys.stderr)
    ledger = ledger_figures(stack.ledger_url(), run_id)
    report_seconds = report_step_seconds(api, run_id)
    return {
        "point": point,
        "state": state,
        "run_seconds": run_seconds,
        "ideal": ideal,
        **ledger,
        "copy_calls": counters["copy_calls"],
        "throttled": counters["throttled"],
        "over_limit": counters["refused_402"],
        "get_throttled": counters_after.get("GetImageSet", {}).get("throttled", 0)
        - counters_before.get("GetImageSet", {}).get("throttled", 0),
        "calls": counters["all_calls"],
        "cpu": cpu,
        "statements": statements(stack, run_id),
        "triggerer_peak_mb": peak_rss_mb(services["airflow-triggerer"]),
        "scheduler_peak_mb": peak_rss_mb(services["airflow-scheduler"]),
        "samples": sampler.samples,
        "final_rate": bucket_rate(stack.ledger_url()),
        "report_seconds": report_seconds,
        "task_instances": len(api.task_instances(DAG_ID, run_id)),
    }


def report_step_seconds(api, run_id: str) -> float | None:
    for ti in api.task_instances(DAG_ID, run_id):
        if ti["task_id"] == "report" and ti.get("duration") is not None:
            return float(ti["duration"])
    return None


# ------------------------------------------------------------------------------------------ printing


def print_point(r: dict[str, Any]) -> bool:
    p: Point = r["point"]
    copies = max(r["succeeded"], 1)
    ratio = r["makespan"] / r["ideal"]
    refused = r["throttled"] + r["over_limit"]
    share = refused / r["copy_calls"] if r["copy_calls"] else 0.0
    print(f"\n{p.name}: {p.rows:,} rows, {p.in_progress} in progress; DAG conf {json.dumps(p.conf())}")
    print(
        f"  run {r['state']}: {r['succeeded']:,} succeeded, {r['failed']} failed, of {r['rows']:,} rows in the ledger"
    )
    meets = "" if p.target is None else f" (target <= {p.target:.2f}x: {'meets' if ratio <= p.target else 'MISSES'})"
    print(f"  copy makespan {r['makespan']:.1f}s vs ideal {r['ideal']:.1f}s: {ratio:.3f}x{meets}")
    print(
        f"    first to last send {r['send_span']:.1f}s (the rate alone: {(p.rows - 1) / p.quota:.1f}s), last send to "
        f"last copy done {r['tail']:.1f}s (one copy: {p.copy_seconds:.1f}s)"
    )
    print(
        f"  refused CopyImageSet calls {refused} of {r['copy_calls']} = {100 * share:.2f}% "
        f"({r['throttled']} throttled, {r['over_limit']} over the copies in progress; target <= 0.5%); "
        f"GetImageSet throttled {r['get_throttled']}"
    )
    print(
        f"  emulator calls per row {r['calls'] / max(p.rows, 1):.2f}; ledger statements per copy "
        f"{r['statements'] / copies:.1f}; task instances {r['task_instances']}"
    )
    print(
        "  CPU s per 1,000 copies: "
        + ", ".join(f"{s.removeprefix('airflow-')} {1000 * v / copies:.1f}" for s, v in r["cpu"].items())
    )
    print(f"  peak memory: triggerer {r['triggerer_peak_mb']:.0f} MB, scheduler {r['scheduler_peak_mb']:.0f} MB")
    if r["report_seconds"] is not None:
        print(
            f"  report step {r['report_seconds']:.1f}s; ledger {r['ledger_rows']:,} rows, "
            f"{r['ledger_bytes'] / 1e6:.0f} MB"
        )
    samples = [s for s in r["samples"] if s["t"] >= 60 and s["rate"] is not None]
    if p.configured_rate is not None and samples:
        rates = [s["rate"] / PACE_MARGIN for s in samples]  # in copies_per_second terms
        print(
            f"  shared rate after the first minute: {min(rates):.2f}..{max(rates):.2f}/s against the {p.quota}/s quota "
            f"({100 * (min(rates) / p.quota - 1):+.1f}%..{100 * (max(rates) / p.quota - 1):+.1f}%); at the end "
            f"{(r['final_rate'] or 0) / PACE_MARGIN:.2f}/s"
        )
    memory = [s for s in r["samples"] if s["scheduler_mb"]]
    if len(memory) > 4:
        first, last = memory[len(memory) // 10], memory[-1]
        print(
            f"  resident memory, a tenth in -> end: scheduler {first['scheduler_mb']:.0f} -> "
            f"{last['scheduler_mb']:.0f} MB (peak {max(s['scheduler_mb'] for s in memory):.0f}), "
            f"triggerer {first['triggerer_mb']:.0f} -> "
            f"{last['triggerer_mb']:.0f} MB (peak {max(s['triggerer_mb'] for s in memory):.0f})"
        )
    ok = r["state"] == "success" and r["succeeded"] == p.rows
    if p.target is not None:
        ok = ok and ratio <= p.target and share <= 0.005
    return ok


def run_baselines(stack, point: Point, names: list[str], limits: dict[str, int], pool: SourcePool) -> None:
    ideal = ideal_makespan(point.rows, point.quota, point.copy_seconds, point.in_progress)
    if "loop" in names and point.rows > limits["loop"]:
        print(f"  plain boto3 loop: not run (--loop-max-rows {limits['loop']})")
    elif "loop" in names:
        stack.emulator_admin("POST", "config", point.emulator_config())
        datastore_id, ids = pool.datastore_id, pool.take(point.rows)
        b = baselines.plain_loop(stack.emulator_url, datastore_id, ids, point.configured_rate or point.quota)
        refused = b["throttled"] + b["refused_402"]
        print(
            f"  plain boto3 loop + limiter: makespan {b['makespan'] / ideal:.3f}x the ideal, refused "
            f"{refused} of {b['copy_calls']} ({100 * refused / max(b['copy_calls'], 1):.1f}%), "
            f"{b['calls_per_row']:.2f} calls per row, {b['copied']} copied, {b['failed']} failed, "
            f"CPU {1000 * b['cpu_seconds'] / max(b['copied'], 1):.1f} s per 1,000"
        )
    if "naive" in names:
        limit = baselines.max_map_length(stack)
        if point.rows > limit:
            print(f"  naive mapped DAG: stops at Airflow's max_map_length ({limit}): {point.rows:,} rows cannot run")
            return
        if point.rows > limits["naive"]:
            print(f"  naive mapped DAG: not run (--naive-max-rows {limits['naive']})")
            return
        stack.emulator_admin("POST", "config", point.emulator_config())
        datastore_id, ids = pool.datastore_id, pool.take(point.rows)
        n = baselines.naive_dag(stack, ids, datastore_id)
        refused = n["throttled"] + n["refused_402"]
        print(
            f"  naive mapped DAG (SDK retries, poke sensor): {n['state']}, makespan {n['makespan'] / ideal:.3f}x the "
            f"ideal, refused {refused} of {n['copy_calls']}, {n['task_instances']} task instances, "
            f"{n['worker_slot_seconds']:.0f} worker-slot seconds, duplicates {n['duplicates']}"
        )


# ------------------------------------------------------------------------------------------ validation


def validation(rows: int) -> dict:
    from healthimaging.bulk.manifest import template, validate_manifest

    datastore = "a" * 32
    data = template(
        {"datastore_id": datastore, "source_image_set_id": f"{i:032x}", "label": f"row {i}"} for i in range(rows)
    ).encode()

    def measure(work):
        """(seconds, peak bytes, result) of ``work()``: timed on its own, then run again under tracemalloc,
        which slows allocation several-fold and would distort the time."""
        began = time.perf_counter()
        work()
        seconds = time.perf_counter() - began
        tracemalloc.start()
        result = work()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return seconds, peak, result

    base_seconds, base_peak, _ = measure(lambda: list(csv.DictReader(io.StringIO(data.decode()))))
    seconds, peak, validated = measure(lambda: validate_manifest(data, "m.csv"))
    return {
        "rows": rows,
        "bytes": len(data),
        "seconds": seconds,
        "peak": peak,
        "base_seconds": base_seconds,
        "base_peak": base_peak,
        "valid": len(validated.rows),
        "rejected": len(validated.rejected),
    }


def print_validation(v: dict) -> bool:
    print(
        f"\nmanifest validation: {v['rows']:,} rows ({v['bytes'] / 1e6:.1f} MB), {v['valid']:,} valid, "
        f"{v['rejected']} rejected"
    )
    print(
        f"  time {v['seconds']:.2f}s (target <= 3 s) vs csv.DictReader alone {v['base_seconds']:.2f}s: "
        f"{v['seconds'] / v['base_seconds']:.1f}x"
    )
    print(
        f"  peak memory {v['peak'] / 1e6:.0f} MB (target <= 200 MB) vs csv.DictReader alone {v['base_peak'] / 1e6:.0f} "
        f"MB: {v['peak'] / v['base_peak']:.1f}x"
    )
    return v["seconds"] <= 3 and v["peak"] <= 200e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=",".join(DEFAULT_POINTS), help=f"of {', '.join(POINTS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every point's rows (quick tries)")
    parser.add_argument("--baselines", default="loop,naive", help="loop, naive, both or none ('')")
    parser.add_argument("--validate-rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--naive-max-rows", type=int, default=1024, help="run the naive DAG only on points of at most this many rows"
    )
    parser.add_argument(
        "--loop-max-rows", type=int, default=10_000, help="run the plain loop only on points of at most this many rows"
    )
    args = parser.parse_args()
    names = [n for n in args.points.split(",") if n]
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        parser.error(f"unknown points {unknown}; choose from {', '.join(POINTS)}")
    baseline_names = [b for b in args.baselines.split(",") if b]
    ok = True
    if names:
        limits = {"naive": args.naive_max_rows, "loop": args.loop_max_rows}
        ok = run_points([POINTS[n] for n in names], args.scale, baseline_names, args.workers, limits)
    if args.validate_rows > 0:
        ok = print_validation(validation(args.validate_rows)) and ok
    return 0 if ok else 1


def run_points(
    points: list[Point], scale: float, baseline_names: list[str], workers: int, limits: dict[str, int]
) -> bool:
    from stack.compose import ENV_EXAMPLE
    from stack.process_stack import ProcessStack
    from tests.airflow_stack import StackClient

    home = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))}
    if scale != 1.0:
        points = [Point(**{**p.__dict__, "rows": max(int(p.rows * scale), 10)}) for p in points]
    # every run copies sources of its own: the project's, and each baseline's where it runs
    needed = sum(
        p.rows * (1 + sum(1 for b in baseline_names if p.rows <= limits.get(b, 0) and p.rows <= 10_000)) for p in points
    )
    environ["HEALTHIMAGING_EMULATOR_SYNTHETIC_IMAGE_SETS"] = str(needed)
    dags = baselines.dags_folder_with_naive(home / "dags") if "naive" in baseline_names else ROOT / "dags"
    stack = ProcessStack(
        home / "home",
        workers=workers,
        env_file=ENV_EXAMPLE,
        environ=environ,
        dags_folder=dags,
        emulator_args=["--log-level", "WARNING"],
    )
    ok = True
    with stack:
        # the baselines' admin requests (healthimaging_emulator.admin_client) read the token from the environment
        os.environ[ADMIN_TOKEN_ENV] = stack.emulator_admin_token
        api = StackClient(stack)
        api.auth_token = stack.token()
        manifests = stack.home / "manifests"
        manifests.mkdir(exist_ok=True)
        print(f"process stack: {workers} Celery workers, triggerer, scheduler, PostgreSQL ledger; home {stack.home}")
        pool = SourcePool(stack, needed)
        print(f"  {needed:,} synthetic image sets seeded, a slice of its own for each run")
        for point in points:
            ok = print_point(run_point(stack, api, point, manifests, pool)) and ok
            sys.stdout.flush()
            if baseline_names and point.rows <= 10_000:
                run_baselines(stack, point, baseline_names, limits, pool)
                sys.stdout.flush()
    return ok


if __name__ == "__main__":
    sys.exit(main())
