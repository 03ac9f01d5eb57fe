"""Starting and stopping groups of long-running processes (the parts under :mod:`stack.supervisor`).

Each process gets a process group of its own (so a whole component, workers' children included, can be
signalled at once) and asks Linux to SIGTERM it if the starting process dies without stopping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _set_parent_death_signal() -> None:  # in the child, between fork and exec
    """Ask Linux to SIGTERM the child if its parent dies without stopping it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], *, cwd: str | Path, env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen:
    """Start ``argv`` in a process group of its own, output to ``log``, no stdin."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: pgid == pid
        preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,
    )


def signal_group(popen: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)  # start_new_session: pgid == pid


def kill_tree(popen: subprocess.Popen) -> list[int]:
    """SIGKILL a process group and every descendant (task processes start groups of their own), as a
    machine or container dying would; returns the pids killed."""
    import psutil

    victims: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(popen.pid)
        victims = [parent, *parent.children(recursive=True)]
    signal_group(popen, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.kill()
    psutil.wait_procs(victims, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=10)
    return [victim.pid for victim in victims]


def stop_all(popens: Sequence[subprocess.Popen], timeout: float) -> None:
    """SIGTERM each process group in the given order and every descendant (task processes start groups of
    their own), wait up to ``timeout`` seconds, then SIGKILL what is left."""
    import psutil

    tracked: dict[int, psutil.Process] = {}
    for popen in popens:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(popen.pid)
            tracked[parent.pid] = parent
            for child in parent.children(recursive=True):
                tracked[child.pid] = child
    for popen in popens:
        signal_group(popen, signal.SIGTERM)
    for child in tracked.values():
        with contextlib.suppress(psutil.Error):
            child.terminate()
    deadline = time.monotonic() + timeout
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
    _gone, alive = psutil.wait_procs(list(tracked.values()), timeout=max(0.1, deadline - time.monotonic()))
    for popen in popens:
        signal_group(popen, signal.SIGKILL)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
