"""The local backend's server: one detached `transformers serve` process serving the same OpenAI-compatible chat API
as production, whose pid/port live in a small JSON state file, so any task can find, reuse or stop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from tasks.common.processes import group_members, stop_group
from tasks.common.runtimes import runtime_executable


@dataclass(frozen=True)
class ServerInfo:
    """What the state file records about a running local server."""

    pid: int  # also its process group id: the server runs in a session of its own
    port: int
    model_dir: str
    started_at: str
    create_time: float  # the process's start time: a recycled pid is never mistaken for our server
    log_path: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Until the API answers for the model (~12.5 s on 2 idle cores; a process that exits fails the wait at once). 300 s
# leaves a saturated machine room many times over; past it the server is stuck, not slow.
READY_DEADLINE_S = 300.0


def start_local_server(
    model_dir: Path | str, state_path: Path | str, port: int | None = None, *, ready_timeout_s: float = READY_DEADLINE_S
) -> ServerInfo:
    """Ensure a healthy `transformers serve` for `model_dir` is running; idempotent.

    A healthy server for the same model is reused; one that is dead, unhealthy or serving another model is
    stopped and replaced. The positional model argument pins and preloads the model, which also disables
    `--model-timeout` unloading (transformers' ModelManager sets the timeout to -1 for a pinned model).
    """
    model_dir, state_path = str(Path(model_dir).resolve()), Path(state_path)
    if not Path(model_dir, "config.json").is_file():
        raise FileNotFoundError(f"no model at {model_dir} (config.json missing)")
    with _locked(state_path):
        current = local_server_status(state_path)
        if current is not None and current.model_dir == model_dir and port in (None, current.port):
            return current
        _stop_locked(state_path)
        return _launch(model_dir, state_path, port or _free_port(), ready_timeout_s)


def local_server_status(state_path: Path | str) -> ServerInfo | None:
    """The recorded server if its process is alive and its API answers for the recorded model, else None."""
    info = _read_state(Path(state_path))
    if info is None or not _alive(info):
        return None
    return info if _serves(info, timeout_s=2.0) else None


def stop_local_server(state_path: Path | str, *, timeout_s: float = 15.0) -> bool:
    """Stop the recorded server's whole process group and forget it; True when a live server was stopped."""
    state_path = Path(state_path)
    with _locked(state_path):
        return _stop_locked(state_path, timeout_s=timeout_s)


def _launch(model_dir: str, state_path: Path, port: int, ready_timeout_s: float) -> ServerInfo:
    log_path = state_path.with_suffix(".log")
    cli = runtime_executable("serving", "transformers")  # the engine's own environment, not Airflow's
    command = [cli, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    info = ServerInfo(
        pid=proc.pid,
        port=port,
        model_dir=model_dir,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        create_time=psutil.Process(proc.pid).create_time(),
        log_path=str(log_path),
    )
    _write_state(state_path, info)  # recorded first, so a failed start can still be cleaned up
    deadline = time.monotonic() + ready_timeout_s
    while not _serves(info, timeout_s=2.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {ready_timeout_s}s"
            )
            _stop_locked(state_path)
            raise RuntimeError(f"transformers serve {reason}; last log lines:\n{_tail(log_path)}")
        time.sleep(0.5)
    return info


def _stop_locked(state_path: Path, timeout_s: float = 15.0) -> bool:
    info = _read_state(state_path)
    stopped = False
    # Members left in the group after the leader died are ours too: Linux never reuses a live group's id as a pid.
    if info is not None and (_alive(info) or group_members(info.pid)):
        stop_group(info.pid, grace_s=timeout_s)
        stopped = True
    state_path.unlink(missing_ok=True)
    return stopped


def _alive(info: ServerInfo) -> bool:
    try:
        proc = psutil.Process(info.pid)
        return abs(proc.create_time() - info.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serves(info: ServerInfo, timeout_s: float) -> bool:
    """The API answers and lists exactly the recorded model (the pinned model is loaded before it listens)."""
    try:
        response = httpx.get(f"{info.base_url}/v1/models", timeout=timeout_s)
        models = [m.get("id") for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return response.status_code == 200 and models == [info.model_dir]


def _read_state(state_path: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(state_path.read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write_state(state_path: Path, info: ServerInfo) -> None:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_path)


@contextlib.contextmanager
def _locked(state_path: Path) -> Iterator[None]:
    """One start/stop at a time per state file, across processes (two tasks must not both launch a server)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(state_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
