"""``make demo``: start the HealthImaging emulator with the sample data and show it working through boto3.

It lists the data store and its image sets, copies one image set, waits for the copy to finish and
checks that the copy holds the same SOP instances as its source. No AWS account is needed. Patient
data is never printed: image sets are shown by id, modality and counts only.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_emulator(port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "healthimaging_emulator", "--port", str(port), "--seed", "sample",
               "--copy-seconds", "1.5", "--log-level", "WARNING"]
    print("$", " ".join(command[1:]), flush=True)
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


def sop_uids(client, datastore_id: str, image_set_id: str, version: str) -> set[str]:
    blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id, versionId=version)
    document = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
    return {uid for series in document["Study"]["Series"].values() for uid in series["Instances"]}


def main() -> int:
    port = free_port()
    emulator = start_emulator(port)
    url = f"http://127.0.0.1:{port}"
    try:
        # inject_host_prefix=False: botocore would otherwise send data-plane calls to runtime-127.0.0.1.
        client = boto3.client("medical-imaging", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="demo", aws_secret_access_key="demo",
                              config=Config(inject_host_prefix=False))
        datastores = client.list_datastores()["datastoreSummaries"]
        print(f"\nData stores at {url}:")
        for ds in datastores:
            print(f"  {ds['datastoreId']}  {ds['datastoreName']:<10} {ds['datastoreStatus']}")
        datastore_id = next(ds["datastoreId"] for ds in datastores if ds["datastoreName"] == "demo")

        summaries = []
        for page in client.get_paginator("search_image_sets").paginate(datastoreId=datastore_id):
            summaries.extend(page["imageSetsMetadataSummaries"])
        print(f"\nImage sets in data store 'demo': {len(summaries)} (the first 8, without patient data)")
        print(f"  {'image set id':<34}{'version':>8}  {'modality':<9}{'primary':<8}")
        for summary in summaries[:8]:
            tags = summary.get("DICOMTags", {})
            print(f"  {summary['imageSetId']:<34}{summary['version']:>8}  {tags.get('DICOMSeriesModality', '-'):<9}"
                  f"{str(summary['isPrimary']):<8}")

        source = next(s for s in summaries if s.get("DICOMTags", {}).get("DICOMSeriesModality") == "CT")
        source_id, source_version = source["imageSetId"], str(source["version"])
        print(f"\nCopying image set {source_id} (version {source_version}) to a new image set")
        response = client.copy_image_set(datastoreId=datastore_id, sourceImageSetId=source_id,
                                         copyImageSetInformation={"sourceImageSet": {"latestVersionId": source_version}})
        destination = response["destinationImageSetProperties"]
        print(f"  accepted: destination {destination['imageSetId']} version {destination['latestVersionId']} is "
              f"{destination['imageSetState']}/{destination['imageSetWorkflowStatus']}; source is "
              f"{response['sourceImageSetProperties']['imageSetState']}/"
              f"{response['sourceImageSetProperties']['imageSetWorkflowStatus']}")
        started = time.monotonic()
        while True:
            state = client.get_image_set(datastoreId=datastore_id, imageSetId=destination["imageSetId"])
            print(f"  {time.monotonic() - started:4.1f}s  {state['imageSetState']}/{state['imageSetWorkflowStatus']}")
            if state["imageSetState"] == "ACTIVE":
                break
            time.sleep(0.5)
        if state["imageSetWorkflowStatus"] != "COPIED":
            print(f"  copy failed: {state.get('message')}")
            return 1
        copied = sop_uids(client, datastore_id, destination["imageSetId"], destination["latestVersionId"])
        original = sop_uids(client, datastore_id, source_id, source_version)
        verdict = "identical" if copied == original else "DIFFERENT"
        print(f"  verified: the copy holds {len(copied)} SOP instances, {verdict} to its source")

        with urllib.request.urlopen(f"{url}/_emulator/counters", timeout=10) as reply:
            counters = json.loads(reply.read())
        print("\nEmulator counters (calls / throttled):")
        for operation, counts in counters.items():
            print(f"  {operation:<24}{counts['calls']:>4} / {counts['throttled']}")
        return 0 if verdict == "identical" else 1
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
