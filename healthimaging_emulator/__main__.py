"""``python -m healthimaging_emulator``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from healthimaging_emulator import seeding
from healthimaging_emulator.admin_client import ADMIN_TOKEN_ENV, admin_token_from_env
from healthimaging_emulator.quotas import RATE_PROFILES
from healthimaging_emulator.realism import FAULT_KINDS, Realism, Timing
from healthimaging_emulator.server import EmulatorServer

#: Host names besides IP addresses and localhost that clients may address the emulator by, comma-separated.
ALLOWED_HOSTS_ENV = "HEALTHIMAGING_EMULATOR_ALLOWED_HOSTS"


def _rate(text: str) -> tuple[str, tuple[float, float]]:
    """``CopyImageSet=5`` or ``CopyImageSet=5:10`` (rate:burst)."""
    try:
        operation, spec = text.split("=", 1)
        rate, _, burst = spec.partition(":")
        return operation, (float(rate), float(burst) if burst else max(1.0, float(rate)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OPERATION=RATE or OPERATION=RATE:BURST") from None


def _fault(text: str) -> tuple[str, str, float]:
    """``CopyImageSet:throttle=0.1``."""
    try:
        target, probability = text.split("=", 1)
        operation, kind = target.split(":", 1)
        value = float(probability)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OPERATION:KIND=PROBABILITY") from None
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}"
        )
    return operation, kind, value


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # leave serve_forever the same way Ctrl-C does


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m healthimaging_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="port (default 8089; 0 picks a free one)")
    parser.add_argument("--state-dir", help="folder for the SQLite state; without it state lives in memory")
    parser.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="SPEC",
        help="'sample' (pydicom's test files in data store 'demo') or 'synthetic:N'; repeatable",
    )
    parser.add_argument(
        "--rate-profile",
        choices=RATE_PROFILES,
        default="aws",
        help="token-bucket profile: aws (AWS default quotas), fast (x1000, for tests), off",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        action="append",
        default=[],
        metavar="OP=RATE[:BURST]",
        help="override one operation's rate limit, e.g. CopyImageSet=5:5; repeatable",
    )
    parser.add_argument(
        "--copy-seconds",
        type=float,
        default=Timing.copy_fixed_seconds,
        help="fixed duration of a copy (default %(default)s)",
    )
    parser.add_argument(
        "--copy-seconds-per-instance",
        type=float,
        default=Timing.copy_per_instance_seconds,
        help="added duration per SOP instance copied (default %(default)s)",
    )
    parser.add_argument(
        "--async-seconds",
        type=float,
        default=1.0,
        help="duration of metadata updates, deletes, imports and data store creation (default 1.0)",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="OP:KIND=P",
        help=f"inject a fault with probability P; KIND is one of {', '.join(FAULT_KINDS)}; repeatable",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault generators (default 0)")
    parser.add_argument(
        "--max-concurrent-copies", type=int, default=None, help="copies in flight per data store (default 100)"
    )
    parser.add_argument("--max-frames-per-copy", type=int, default=None, help="image frames per copy (default 1000)")
    parser.add_argument("--account-id", default="123456789012")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument(
        "--s3-root",
        help="folder that s3://bucket/key URIs of imports map to; imports read and write "
        "only under it, and are refused without it",
    )
    # The default is read in main(), not here, so that --help never prints the token.
    parser.add_argument(
        "--admin-token",
        default=None,
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on the admin API (/_emulator/...); default: "
        f"${ADMIN_TOKEN_ENV}, empty = no token. Prefer the variable: other local users can read "
        "a command line (ps)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients address the emulator by (IP addresses and localhost always pass; "
        f"a request naming any other host is refused, against DNS rebinding); repeatable; also "
        f"${ALLOWED_HOSTS_ENV}, comma-separated",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pydicom warns about the odd files in its own test set; the import reports skipped files itself.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    faults: dict[str, dict[str, float]] = {}
    for operation, kind, probability in args.fault:
        faults.setdefault(operation, {})[kind] = probability
    timing = Timing(
        copy_fixed_seconds=args.copy_seconds,
        copy_per_instance_seconds=args.copy_seconds_per_instance,
        update_seconds=args.async_seconds,
        delete_seconds=args.async_seconds,
        datastore_seconds=args.async_seconds,
        import_seconds=args.async_seconds,
    )
    limits = {
        k: v
        for k, v in (
            ("max_concurrent_copies", args.max_concurrent_copies),
            ("max_frames_per_copy", args.max_frames_per_copy),
        )
        if v is not None
    }
    try:
        for spec in args.seed:
            seeding.parse_seed(spec)
        realism = Realism(
            profile=args.rate_profile,
            rate_overrides=dict(args.rate),
            timing=timing,
            seed=args.fault_seed,
            faults=faults,
            **limits,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = EmulatorServer(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        realism=realism,
        account_id=args.account_id,
        region=args.region,
        s3_root=args.s3_root,
        admin_token=admin_token_from_env() if args.admin_token is None else args.admin_token,
        allowed_hosts=[*args.allowed_host, *os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")],
    )
    for spec in args.seed:
        result = seeding.seed(server.backend, spec)
        verb = "created" if result.created else "kept existing"
        print(
            f"seed {spec}: {verb} data store {result.datastore_name!r} ({result.datastore_id}) with "
            f"{result.image_sets} image sets in {result.seconds:.1f}s",
            flush=True,
        )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Threads hand the GIL over every millisecond instead of every 5: a request waits less for a busy thread
    # before its arrival is stamped (the quota's clock), and latencies are steadier under load.
    sys.setswitchinterval(0.001)
    print(
        f"admin API: {'token required' if server.admin_token else 'open (no --admin-token)'}; imports: "
        f"{'under ' + str(server.backend.s3_root) if server.backend.s3_root else 'refused (no --s3-root)'}",
        flush=True,
    )
    print(f"HealthImaging emulator listening on {server.url} (state: {args.state_dir or 'in memory'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
