"""``python -m stack``: the stack of docker-compose.yaml without Docker, and its configuration.

python -m stack up [--workers 2] [--home DIR] [--emulator-arg=--fault ...]   # until Ctrl-C
python -m stack up --executor LocalExecutor                                 # no workers, no Redis
python -m stack env [--service airflow-worker-1]                            # what each process gets
python -m stack dotenv                                                      # .env from .env.example
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path


def _up(args: argparse.Namespace) -> int:
    from stack.process_stack import ProcessStack

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="healthimaging-stack-"))
    stack = ProcessStack(
        home,
        executor=args.executor,
        workers=args.workers,
        worker_concurrency=args.worker_concurrency,
        env_file=args.env_file,
        emulator=not args.no_emulator,
        emulator_args=args.emulator_arg,
    )

    def stop(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"Starting the stack in {home} (logs in {home / 'process-logs'}) ...", flush=True)
    try:
        with stack:
            user = stack.credentials[0]
            names = ", ".join(stack.processes)
            print(
                f"\nUp in {stack.timings['start']:.0f}s: {names}\n"
                f"  UI and REST API  {stack.api_url}  (login {user}; password: cat {stack.passwords_file})\n"
                + (
                    f"  emulator         {stack.emulator_url}  (admin API token: cat {_token_file(stack)})\n"
                    if stack.emulator
                    else ""
                )
                + f"  metadata DB      {stack.variables['POSTGRES_DB']}, ledger DB {stack.ledger_database}\n"
                + (
                    f"  Celery broker    redis://{stack.redis_host}:{stack.redis_port}/{stack.local.redis_db}\n"
                    if stack.celery
                    else ""
                )
                + "Ctrl-C stops every process and drops the databases.",
                flush=True,
            )
            while True:
                stack.check_alive()
                time.sleep(2)
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    return 0


def _token_file(stack) -> Path:
    """The emulator's admin token in a file only its owner reads (the stack may have generated it)."""
    from stack.init import write_private_file

    path = stack.home / "config" / "emulator_admin_token"
    write_private_file(path, stack.emulator_admin_token)
    return path


def _env(args: argparse.Namespace) -> int:
    from stack.process_stack import ProcessStack

    stack = ProcessStack(
        Path(args.home or tempfile.gettempdir()) / "healthimaging-stack",
        executor=args.executor,
        workers=args.workers,
        env_file=args.env_file,
    )
    processes = stack.plan()
    for name, process in processes.items():
        if args.service and name != args.service:
            continue
        print(f"# {name}: {shlex.join(process.argv)}")
        inherited = stack._inherited_environ()
        for key in sorted(process.env):
            if key not in inherited or inherited[key] != process.env[key]:
                print(f"{key}={shlex.quote(process.env[key])}")
        print()
    return 0


def _dotenv(args: argparse.Namespace) -> int:  # noqa: ARG001
    from stack.process_stack import write_dotenv

    try:
        path = write_dotenv()
    except FileExistsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"wrote {path} (fresh secrets; edit it for real AWS, see README)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from stack.process_stack import EXECUTORS

    parser = argparse.ArgumentParser(
        prog="python -m stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the stack as processes until Ctrl-C")
    up.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=EXECUTORS[0],
        help="compose's CeleryExecutor (default), or the LocalExecutor: no workers, no Redis",
    )
    up.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Celery workers (default 2 with the CeleryExecutor, none with the LocalExecutor)",
    )
    up.add_argument("--worker-concurrency", type=int, default=None, help="task slots per worker (default: .env)")
    up.add_argument("--home", help="AIRFLOW_HOME of the stack (default: a new temporary folder)")
    up.add_argument("--env-file", help="default: .env, else .env.example")
    up.add_argument("--no-emulator", action="store_true", help="do not run the emulator (real AWS in .env)")
    up.add_argument(
        "--emulator-arg",
        action="append",
        default=[],
        help="extra emulator argument, e.g. --emulator-arg=--fault --emulator-arg=CopyImageSet:throttle=0.1",
    )
    up.set_defaults(func=_up)
    env = sub.add_parser("env", help="print each process's command and Airflow environment (nothing is started)")
    env.add_argument("--service", help="only this process, e.g. airflow-worker-1")
    env.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0])
    env.add_argument("--workers", type=int, default=None)
    env.add_argument("--home")
    env.add_argument("--env-file")
    env.set_defaults(func=_env)
    dotenv = sub.add_parser("dotenv", help="write .env from .env.example with fresh secrets")
    dotenv.set_defaults(func=_dotenv)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
