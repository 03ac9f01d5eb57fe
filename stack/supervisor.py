"""Named processes of one stack, each in a process group of its own with a log file: start, run to completion,
alive checks, kill, restart, ordered stop of every descendant, and the log tails for diagnostics."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stack.processes import kill_tree, spawn, stop_all


@dataclass
class Process:
    """One process of a stack: the compose service it stands for, its command and environment.

    ``runs_to_completion``: a step that exits when done (``airflow-init``), not a long-running service.
    """

    name: str
    service: str
    argv: list[str]
    env: dict[str, str]
    runs_to_completion: bool = False
    popen: subprocess.Popen | None = field(default=None, repr=False)


class Supervisor:
    """Starts and stops the :class:`Process` es of :attr:`processes`; ``<log_dir>/<name>.log`` holds each one's
    output (appended to across restarts).

    :param stop_order: services stopped first, in this order (the scheduler before the rest: no new work);
        the others after them.
    """

    def __init__(self, log_dir: Path, cwd: Path, stop_order: Sequence[str] = (), stop_timeout: float = 20.0) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.stop_order = tuple(stop_order)
        self.stop_timeout = stop_timeout
        self.processes: dict[str, Process] = {}
        self._log_files: list[IO[bytes]] = []

    def start(self, name: str) -> None:
        """Start a process that is not running (a planned one, or one stopped by :meth:`kill`)."""
        process = self.processes[name]
        if process.popen is not None:
            raise RuntimeError(f"{name} is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(log)
        process.popen = spawn(process.argv, cwd=self.cwd, env=process.env, log=log)

    def run_to_completion(self, name: str, timeout: float) -> None:
        """Start a step and wait for it; raise, with the tail of its log, unless it exits 0 in time."""
        self.start(name)
        try:
            code = self.processes[name].popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} did not finish in {timeout:g}s\n" + self.log_tail(name)) from None
        if code != 0:
            raise RuntimeError(f"{name} failed with exit code {code}\n" + self.log_tail(name, 60))

    def check_alive(self) -> None:
        """Raise if a long-running process exited, with the tail of its log."""
        for name, process in self.processes.items():
            if process.runs_to_completion or process.popen is None:
                continue
            if process.popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.popen.returncode}:\n{self.log_tail(name)}")

    def kill(self, name: str) -> list[int]:
        """SIGKILL a running process with every descendant (a crash: no shutdown code runs); the pids killed."""
        process = self.processes[name]
        if process.popen is None:
            raise RuntimeError(f"{name} is not running")
        killed = kill_tree(process.popen)
        process.popen = None
        return killed

    def restart(self, name: str) -> None:
        """Stop a process as compose would (SIGTERM, SIGKILL after ``stop_timeout``), then start it again."""
        process = self.processes[name]
        if process.popen is not None:
            stop_all([process.popen], self.stop_timeout)
            process.popen = None
        self.start(name)

    def stop(self) -> None:
        """SIGTERM every running process group and descendant in :attr:`stop_order`, SIGKILL what is left after
        ``stop_timeout``; close the logs. Safe to call twice."""
        running = [p for p in self.processes.values() if p.popen is not None]

        def order(p: Process) -> int:
            return self.stop_order.index(p.service) if p.service in self.stop_order else len(self.stop_order)

        try:
            stop_all([p.popen for p in sorted(running, key=order)], self.stop_timeout)
        finally:
            for log in self._log_files:
                log.close()
            self._log_files.clear()

    def pids(self) -> list[int]:
        """Every process started here that is still alive, descendants included."""
        import psutil

        found: set[int] = set()
        for process in self.processes.values():
            if process.popen is None:
                continue
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.popen.pid)
                if parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
                    found.add(parent.pid)
                found.update(c.pid for c in parent.children(recursive=True))
        return sorted(found)

    # ------------------------------------------------------------------------------ diagnostics

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_path(name)
        if not path.exists():
            return f"--- {name}: no log"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {name} ({path}):\n" + "\n".join(text)

    def diagnostics(self, names: Iterable[str] | None = None, lines: int = 30) -> str:
        """The tail of each process's log (every process's by default)."""
        return "\n".join(self.log_tail(name, lines) for name in (names or self.processes))
