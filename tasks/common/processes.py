"""Stopping a whole process group: local training (accelerate's workers) and the local server (its children) run
in a session of their own, so one signal to the group reaches every process they started."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the group. Linux never hands a live group's id to a new process."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def stop_group(pgid: int, *, grace_s: float = 10.0) -> None:
    """SIGTERM the group, wait up to `grace_s` for every member to exit, then SIGKILL what is left and wait again.
    The leader is reaped when it is our own child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pgid, os.WNOHANG)
            if not group_members(pgid):
                return
            time.sleep(0.1)
