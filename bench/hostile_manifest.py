"""Time and peak memory of manifest validation on 100 MB of hostile input, beside a valid manifest of
the same size measured in the same run (the baseline).

    .venv/bin/python bench/hostile_manifest.py [--megabytes 100]

Each input is written to a file and validated in a fresh Python process (read + validate), so that
its peak resident memory is its own. Ratios are against the valid manifest.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ID = "a" * 32

# Peak memory is the child's VmHWM (its own high-water mark; ru_maxrss would carry the parent's peak
# across fork and exec).
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from healthimaging.bulk.manifest import ManifestError, validate_manifest
def hwm_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
before = hwm_kb()
started = time.perf_counter()
data = open(sys.argv[2], "rb").read()
try:
    v = validate_manifest(data, sys.argv[3], default_datastore_id="d" * 32)
    outcome = f"{v.total_rows:,} rows: {len(v.rows):,} valid, {len(v.rejected):,} rejected"
except ManifestError as exc:
    outcome = "refused: " + str(exc)[:70]
seconds = time.perf_counter() - started
peak = hwm_kb()
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "added_mb": (peak - before) / 1024, "outcome": outcome}))
"""


def fill(line: bytes, size: int, header: bytes = b"") -> bytes:
    return header + line * max(1, (size - len(header)) // len(line))


def inputs(size: int) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (file name, a function making its bytes) of each input, about ``size`` bytes each."""
    rng = random.Random(7)
    header = b"source_image_set_id,label\n"
    # A realistic row (~120 bytes: data store, source, version, label), so 100 MB stays under MAX_ROWS.
    full = b"datastore_id,source_image_set_id,source_version_id,label\n"
    row = "{d},{n:032x},1,{label}\n"
    row_size = len(row.format(d="d" * 32, n=0, label="study 0 " + "x" * 40))

    def valid() -> bytes:
        return full + b"".join(
            row.format(d="d" * 32, n=n, label=f"study {n} " + "x" * 40).encode()
            for n in range(max(1, (size - len(full)) // row_size))
        )

    deep = ('{"source_image_set_id": "%s", "label": %s}\n' % (ID, "[" * 900 + "]" * 900)).encode()
    return {
        "valid CSV (baseline)": ("m.csv", valid),
        "random bytes": ("m.csv", lambda: rng.randbytes(size)),
        "invalid UTF-8 lines": ("m.csv", lambda: fill(f"{ID},caf".encode() + b"\xe9\n", size, header)),
        "NUL in every line": ("m.csv", lambda: fill(f"{ID},a".encode() + b"\x00b\n", size, header)),
        "lines over the line limit": ("m.csv", lambda: fill(b"x" * (3 * 1024 * 1024) + b"\n", size, header)),
        "quote never closed (line 2)": ("m.csv", lambda: header + b'"' + fill(b"x" * 1000 + b"\n", size)),
        "unknown header, 60 columns": (
            "m.csv",
            lambda: fill(b",".join([b"x"] * 60) + b"\n", size, b",".join(b"c%d" % i for i in range(60)) + b"\n"),
        ),
        "deep JSON (900 levels)": ("m.jsonl", lambda: fill(deep, size)),
        "JSON lines not objects": ("m.jsonl", lambda: fill(b"[1,2,3]\n", size)),
        "lone surrogates": (
            "m.jsonl",
            lambda: fill(('{"source_image_set_id": "%s", "label": "\\ud800"}\n' % ID).encode(), size),
        ),
        "blank lines only": ("m.csv", lambda: b"\n" * size),
    }


def measure(path: Path, name: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT / "plugins"), str(path), name],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=100)
    args = parser.parse_args()
    size = int(args.megabytes * 1_000_000)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, (name, make) in inputs(size).items():
            path = Path(folder) / name
            data = make()
            path.write_bytes(data)
            megabytes = len(data) / 1e6
            del data
            results[label] = {**measure(path, name), "mb": megabytes}
            path.unlink()
    base = results["valid CSV (baseline)"]
    print(f"{'input':30} {'MB':>6} {'seconds':>8} {'x base':>7} {'peak MB':>8} {'x base':>7}  outcome")
    for label, r in results.items():
        print(
            f"{label:30} {r['mb']:6.0f} {r['seconds']:8.2f} {r['seconds'] / base['seconds']:7.2f} {r['peak_mb']:8.0f} "
            f"{r['peak_mb'] / base['peak_mb']:7.2f}  {r['outcome']}"
        )
    worst = max(r["peak_mb"] / r["mb"] for r in results.values())
    print(f"\nworst peak memory: {worst:.1f} x the input's size; every input ended in rows or one ManifestError")
    return 0


if __name__ == "__main__":
    sys.exit(main())
