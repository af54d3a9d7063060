"""Long-running child processes that can always be found and stopped again.

Each process starts in its own session (so its process group id is its pid) with a marker in its environment.
Airflow's task runner moves every task into a new process group, so a group kill alone can miss a task that is
still running; the inherited marker finds those too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MARKER_VAR = "AIRFLOW_E2E_STACK_ID"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ManagedProcess:
    """One command in its own session, stdout and stderr in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, env: Mapping[str, str], cwd: Path) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _proc_status(pid: str) -> tuple[int, str] | None:
    """(process group id, state letter) of a live pid, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return int(fields[2]), fields[0]


def _has_marker(pid: str, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_VAR}={marker}".encode() in environ.split(b"\0")


def find_processes(marker: str, pgids: Iterable[int]) -> list[int]:
    """Pids still alive (zombies excluded) in one of `pgids` or carrying `marker` in their environment."""
    groups = set(pgids)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        status = _proc_status(entry)
        if status is None or status[1] == "Z":
            continue
        if status[0] in groups or _has_marker(entry, marker):
            found.append(int(entry))
    return sorted(found)


def describe(pids: Iterable[int]) -> str:
    """`pid: command line` per pid, for assertion messages."""
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "<gone>"
        lines.append(f"{pid}: {cmd.strip()}")
    return "\n".join(lines)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def stop(processes: Iterable[ManagedProcess], marker: str, grace_s: float = 20.0) -> list[int]:
    """Stop like a process manager: SIGTERM each leader and let it shut its own children down, then SIGTERM
    whatever is left in the groups or carries the marker, then SIGKILL. Returns the pids that survived.

    Only leaders get the first signal: a group-wide SIGTERM also hits Airflow's internal subprocesses, and the
    triggerer then waits 10 s for its trigger runner before escalating.
    """
    started = [p for p in processes if p.popen is not None]
    groups = [p.pid for p in started]
    _signal([p.pid for p in started if p.exit_code() is None], signal.SIGTERM)
    _wait_until(lambda: all(p.exit_code() is not None for p in started), grace_s)  # exit_code() also reaps
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal(find_processes(marker, groups), sig)
        _wait_until(
            lambda: not find_processes(marker, groups) and all(p.exit_code() is not None for p in started),
            min(grace_s, 5.0),
        )
    return find_processes(marker, groups)
