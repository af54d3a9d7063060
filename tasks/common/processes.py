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
            if not group_members(pgid):  # only zombies left: reap the leader, if it is our child
                _reap(pgid)
                return
            time.sleep(0.1)


def _reap(pid: int, timeout_s: float = 5.0) -> None:
    """Collect our child's exit status once it can be collected: a multi-threaded leader shows as a zombie before its
    last threads are gone, and only then can it be waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child, or already collected
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.05)
