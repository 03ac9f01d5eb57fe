"""Emulator throughput for GetImageSet and CopyImageSet, quotas off, from a boto3 thread pool.

Run: ``make bench`` (or ``.venv/bin/python bench/emulator_throughput.py [--calls N] [--threads T]``).

The emulator runs as its own process (``--rate-profile off``), as it does under Airflow, and the
client is one boto3 client shared by a thread pool. The baseline, measured in the same run, is the
same client pool against a canned-response HTTP server that does no emulator work at all: the ratio
says how much of the client's ceiling the emulator reaches. Target: at least 300 GetImageSet/s, so
that the emulator never limits the bulk-copy benchmarks.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from healthimaging_emulator.admin_client import admin_request  # noqa: E402 - after the path is set

ROOT = Path(__file__).resolve().parent.parent
TARGET_GET_PER_SECOND = 300
ID = "0" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_for(url: str, threads: int):
    return boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(
            inject_host_prefix=False,
            max_pool_connections=threads,
            retries={"mode": "standard", "total_max_attempts": 1},
        ),
    )


def rate(calls: list, threads: int) -> tuple[float, int]:
    """Run the callables on a thread pool; returns (calls per second, errors)."""
    errors = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(c) for c in calls]:
            try:
                future.result()
            except Exception:
                errors += 1
    return len(calls) / (time.perf_counter() - started), errors


class CannedHandler(BaseHTTPRequestHandler):
    """Answers every request with a fixed, valid GetImageSet response: the HTTP + boto3 floor."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    body = json.dumps(
        {
            "datastoreId": ID,
            "imageSetId": ID,
            "versionId": "1",
            "imageSetState": "ACTIVE",
            "imageSetWorkflowStatus": "CREATED",
            "createdAt": 1.7e9,
            "updatedAt": 1.7e9,
        }
    ).encode()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


def baseline(calls: int, threads: int) -> float:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CannedHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = client_for(f"http://127.0.0.1:{server.server_address[1]}", threads)
        client.get_image_set(datastoreId=ID, imageSetId=ID)  # warm the connection pool and the model
        per_second, _ = rate([lambda: client.get_image_set(datastoreId=ID, imageSetId=ID)] * calls, threads)
        return per_second
    finally:
        server.shutdown()


def start_emulator(port: int, image_sets: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "healthimaging_emulator",
            "--port",
            str(port),
            "--rate-profile",
            "off",
            "--seed",
            f"synthetic:{image_sets}",
            "--copy-seconds",
            "0.01",
            "--copy-seconds-per-instance",
            "0",
            "--max-concurrent-copies",
            "1000000",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if "listening on" in line:
            return process
    raise SystemExit(f"the emulator exited with code {process.wait()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="GetImageSet calls (default 3000)")
    parser.add_argument("--copies", type=int, default=1000, help="CopyImageSet calls, one per source (default 1000)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    args = parser.parse_args()

    floor = baseline(args.calls, args.threads)
    port = free_port()
    emulator = start_emulator(port, args.copies)
    url = f"http://127.0.0.1:{port}"
    try:
        client = client_for(url, args.threads)
        datastore_id = next(
            d["datastoreId"]
            for d in client.list_datastores()["datastoreSummaries"]
            if d["datastoreName"] == "synthetic"
        )
        sources = [
            s
            for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id)
            for s in page["imageSetsMetadataSummaries"]
        ]
        ids = [s["imageSetId"] for s in sources]
        client.get_image_set(datastoreId=datastore_id, imageSetId=ids[0])
        gets = [
            lambda i=i: client.get_image_set(datastoreId=datastore_id, imageSetId=ids[i % len(ids)])
            for i in range(args.calls)
        ]
        get_rate, get_errors = rate(gets, args.threads)
        copies = [
            lambda s=s: client.copy_image_set(
                datastoreId=datastore_id,
                sourceImageSetId=s["imageSetId"],
                copyImageSetInformation={"sourceImageSet": {"latestVersionId": str(s["version"])}},
            )
            for s in sources[: args.copies]
        ]
        copy_rate, copy_errors = rate(copies, args.threads)
        _, counters = admin_request(url, "GET", "counters")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)

    print(f"emulator throughput, quotas off, {args.threads} boto3 threads, {sys.platform}, 2-core box")
    print(f"  baseline (boto3 vs canned HTTP server) GetImageSet: {floor:8.0f}/s")
    print(
        f"  emulator GetImageSet:                              {get_rate:8.0f}/s  ratio {get_rate / floor:.2f} "
        f"of baseline  ({args.calls} calls, {get_errors} errors)"
    )
    print(
        f"  emulator CopyImageSet (accepted):                  {copy_rate:8.0f}/s  ratio {copy_rate / floor:.2f} "
        f"of baseline  ({len(copies)} calls, {copy_errors} errors)"
    )
    print(
        f"  counters: GetImageSet {counters.get('GetImageSet', {}).get('succeeded')} ok, "
        f"CopyImageSet {counters.get('CopyImageSet', {}).get('succeeded')} ok"
    )
    verdict = "meets" if get_rate >= TARGET_GET_PER_SECOND else "MISSES"
    print(
        f"  target: >= {TARGET_GET_PER_SECOND} GetImageSet/s -> {verdict} ({get_rate / TARGET_GET_PER_SECOND:.2f}x "
        "target)"
    )
    return 0 if get_rate >= TARGET_GET_PER_SECOND and not get_errors and not copy_errors else 1


if __name__ == "__main__":
    sys.exit(main())
