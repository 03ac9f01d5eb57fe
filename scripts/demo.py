"""``make demo``: the bulk copy, end to end, on embedded defaults — no AWS account needed.

1. Starts the HealthImaging emulator with the sample data (pydicom's test files) and AWS's default
   quotas (CopyImageSet 0.25/s).
2. Writes a sample manifest: a new copy, a subset copy, a merge into an existing destination, a
   forced copy across studies, and one bad row.
3. Runs the ``healthimaging_bulk_copy`` DAG on it with ``airflow dags test`` (SQLite Airflow, SQLite
   ledger), exactly as a user would trigger it by hand.
4. Prints the run summary and where the report and the ledger are, and how to see the run in the
   dashboard.

``make demo-dashboard`` (``demo.py --dashboard``) then serves that Airflow (``airflow api-server`` on
``.demo/``'s metadata database and ledger) so that the run can be looked at in the HealthImaging
dashboard, until Ctrl-C.

Everything lives under ``.demo/`` in the repository. Patient data is never printed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
AIRFLOW_HOME = DEMO / "airflow"
PYTHON = sys.executable
AIRFLOW = str(Path(PYTHON).with_name("airflow"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_emulator(port: int) -> subprocess.Popen:
    command = [
        PYTHON,
        "-m",
        "healthimaging_emulator",
        "--port",
        str(port),
        "--seed",
        "sample",
        "--copy-seconds",
        "2",
        "--log-level",
        "WARNING",
    ]
    print("$ python -m healthimaging_emulator --port", port, "--seed sample --copy-seconds 2   (AWS default quotas)")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"the emulator exited early with code {process.wait()}")
        print("  " + line.rstrip(), flush=True)
        if "listening on" in line:
            return process
    process.kill()
    raise SystemExit("the emulator did not start within 60 seconds")


def document(client, datastore_id: str, image_set_id: str) -> dict:
    blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)[
        "imageSetMetadataBlob"
    ].read()
    return json.loads(gzip.decompress(blob))


def wait_active(client, datastore_id: str, image_set_id: str) -> dict:
    for _ in range(120):
        state = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
        if state["imageSetState"] == "ACTIVE":
            return state
        time.sleep(0.5)
    raise SystemExit(f"image set {image_set_id} did not become ACTIVE")


def build_manifest(client, datastore_id: str) -> list[dict]:
    """Choose sample image sets for the five kinds of row, and make the merge's destination."""
    summaries = [
        s
        for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id)
        for s in page["imageSetsMetadataSummaries"]
    ]
    docs = {s["imageSetId"]: document(client, datastore_id, s["imageSetId"]) for s in summaries}

    def instances(image_set_id: str) -> dict[str, list[str]]:
        return {uid: sorted(series["Instances"]) for uid, series in docs[image_set_id]["Study"]["Series"].items()}

    multi = sorted((i for i in docs if sum(len(v) for v in instances(i).values()) >= 3), key=lambda i: i)
    single = sorted(i for i in docs if i not in multi)
    new_copy, subset_source, merge_source = multi[0], multi[1], multi[2]
    forced_source, forced_destination = single[0], single[1]

    # The merge's destination: a copy of the first instance of merge_source (same patient, study and
    # series, so the merge of the rest needs no force).
    series_uid, sops = next(iter(instances(merge_source).items()))
    first = {"SchemaVersion": "1.1", "Study": {"Series": {series_uid: {"Instances": {sops[0]: {}}}}}}
    response = client.copy_image_set(
        datastoreId=datastore_id,
        sourceImageSetId=merge_source,
        copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": json.dumps(first)}}
        },
    )
    merge_destination = response["destinationImageSetProperties"]["imageSetId"]
    wait_active(client, datastore_id, merge_destination)
    wait_active(client, datastore_id, merge_source)

    subset_series, subset_sops = next(iter(instances(subset_source).items()))
    return [
        {"source_image_set_id": new_copy, "label": "new copy"},
        {"source_image_set_id": subset_source, "sop_instance_uids": ";".join(subset_sops[:2]), "label": "subset copy"},
        {
            "source_image_set_id": merge_source,
            "destination_image_set_id": merge_destination,
            "label": "merge into existing",
        },
        {
            "source_image_set_id": forced_source,
            "destination_image_set_id": forced_destination,
            "force": "true",
            "label": "forced copy across studies",
        },
        {"source_image_set_id": "not-an-image-set-id", "label": "bad row"},
    ]


def airflow_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "demo",
                    "password": "demo",
                    "extra": {"endpoint_url": url, "region_name": "us-east-1"},
                }
            ),
            "PYTHONPATH": str(ROOT / "plugins"),
        }
    )
    return env


def main() -> int:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir()
    port = free_port()
    step("Starting the HealthImaging emulator with the sample data")
    emulator = start_emulator(port)
    url = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "medical-imaging",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
            config=Config(inject_host_prefix=False),
        )
        datastore_id = next(
            d["datastoreId"] for d in client.list_datastores()["datastoreSummaries"] if d["datastoreName"] == "demo"
        )

        step("Writing the sample manifest")
        rows = build_manifest(client, datastore_id)
        sys.path.insert(0, str(ROOT / "plugins"))
        from healthimaging.bulk.manifest import template

        manifest = DEMO / "manifest.csv"
        manifest.write_text(template(rows))
        for number, row in enumerate(rows, start=1):
            print(f"  row {number}: {row['label']}")
        print(f"  -> {manifest}")

        env = airflow_env(url)
        step("Preparing Airflow (SQLite metadata database)")
        subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        print(f"  AIRFLOW_HOME={AIRFLOW_HOME}")

        conf = {
            "manifest": str(manifest),
            "default_datastore_id": datastore_id,
            "progress_interval_seconds": 5,
            "poll_interval_seconds": 1,
        }
        step("Running the DAG healthimaging_bulk_copy (CopyImageSet limited to 0.25/s, as AWS's default quota)")
        print(f"$ airflow dags test healthimaging_bulk_copy --conf '{json.dumps(conf)}'")
        log_path = DEMO / "dag-run.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            result = subprocess.run(
                [AIRFLOW, "dags", "test", "healthimaging_bulk_copy", "--conf", json.dumps(conf)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        print(f"  finished in {time.monotonic() - started:.0f}s (exit code {result.returncode}); full log: {log_path}")

        reports = sorted((AIRFLOW_HOME / "healthimaging_reports" / "healthimaging_bulk_copy").glob("*/report.json"))
        if not reports:
            print("  no report was written; see the log above")
            return 1
        summary = json.loads(reports[-1].read_text())
        step("Run summary")
        counts = summary["counts"]
        print(
            f"  rows {summary['manifest']['rows']}: succeeded {counts['succeeded']}, failed {counts['failed']}, "
            f"rejected {counts['rejected']}, skipped {counts['skipped']}  (all accounted for: "
            f"{summary['allRowsAccountedFor']})"
        )
        print(
            f"  latency p50 {summary['latencySeconds']['p50']}s, p90 {summary['latencySeconds']['p90']}s; errors "
            f"{summary['errors']}"
        )
        ledger_path = AIRFLOW_HOME / "healthimaging_ledger.sqlite3"
        with sqlite3.connect(ledger_path) as db:
            print("  ledger rows (row, label, status, kind, source -> destination version, verified):")
            for row in db.execute(
                "SELECT row_number, label, status, copy_kind, source_image_set_id, destination_image_set_id,"
                " destination_version_id, verified, error_code FROM healthimaging_copy_ledger ORDER BY row_number"
            ):
                number, label, status, kind, source, destination, version, verified, code = row
                target = f"{destination} v{version}" if destination else "-"
                print(
                    f"    {number}  {label:<28} {status:<10} {kind or '-':<7} {source or '-'} -> {target}"
                    f"  {'verified' if verified else ''}{code or ''}"
                )
        step("Where things are")
        print(f"  report:  {reports[-1].parent}  (report.json, succeeded.csv, failed.csv, rejected.csv, skipped.csv)")
        print(f"  ledger:  sqlite:///{ledger_path}  (table healthimaging_copy_ledger)")
        print(f"  run log: {log_path}")
        print("  run it again: the rows already copied are skipped (make demo starts from scratch each time)")
        print("  dashboard: make demo-dashboard  (serves this Airflow and prints the dashboard's URL)")
        expected = counts["succeeded"] == 4 and counts["rejected"] == 1 and summary["allRowsAccountedFor"]
        return 0 if expected and result.returncode == 0 else 1
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def serve_dashboard(port: int = 8080) -> int:
    """``airflow api-server`` on the demo's Airflow, until Ctrl-C: the HealthImaging dashboard shows its run."""
    import urllib.request

    if not (AIRFLOW_HOME / "airflow.db").exists():
        print("no demo has run yet: make demo first")
        return 1
    env = airflow_env("http://127.0.0.1:1")  # the emulator is gone: the dashboard reads only the ledger
    step(f"Serving the demo's Airflow on http://127.0.0.1:{port} (Ctrl-C stops it)")
    server = subprocess.Popen([AIRFLOW, "api-server", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                print(f"  airflow api-server exited ({server.returncode}); is port {port} free?")
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        else:
            print("  airflow api-server did not answer within 120 s")
            return 1
        print(f"  dashboard: http://127.0.0.1:{port}/plugin/healthimaging-copies  (or /healthimaging/ alone)")
        print(
            "  log in as admin; the password is in "
            f"{AIRFLOW_HOME / 'simple_auth_manager_passwords.json.generated'} (Airflow's simple auth manager)"
        )
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(serve_dashboard() if "--dashboard" in sys.argv[1:] else main())
