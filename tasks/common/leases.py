"""One holder at a time for a storage object (a partition's publish lease, a dt's claim), by compare-and-swap.

Every step is one atomic operation of the storage itself (tasks.common.storage: an S3 conditional write or delete,
or a local exclusive create / replace under a lock): create the lease if absent; take over a lease that is stale
(expired, or its owner provably gone) only if it is still the version that was judged stale; renew and release
only one's own version. So two contenders can never both hold it: the one whose swap lands second finds a new
version, judges that one, and fails naming its holder — never with a raw storage error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from tasks.common import storage

log = logging.getLogger(__name__)

ATTEMPTS = 8  # takeovers that lose to another contender before giving up (each loss means someone else won)


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: enough to judge whether it is still alive and to name it in a refusal."""

    run: str  # what it works for: a run token, a DagRun id
    owner: dict[str, Any] = field(default_factory=dict)  # the Airflow task instance (dag_id, run_id, task_id, ...)
    expires_at: float | None = None  # epoch seconds; None: held until its owner is gone
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this acquisition, unique

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder:
        """A lease written by anyone: an unreadable one is an expired lease of nobody (it protects nothing)."""
        try:
            doc = json.loads(data)
            return cls(
                run=str(doc["run"]),
                owner=dict(doc.get("owner") or {}),
                expires_at=doc.get("expires_at"),
                token=str(doc.get("token", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(run="<unreadable lease>", expires_at=0.0, token="")

    def describe(self) -> str:
        who = f"run {self.run}"
        if self.owner:
            who += " (task " + ", ".join(f"{k}={v}" for k, v in sorted(self.owner.items())) + ")"
        return who

    def expiry(self) -> str:
        if self.expires_at is None:
            return "does not expire (held until its run ends)"
        when = datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")
        left = self.expires_at - time.time()
        return f"expires at {when} (in {left:.0f} s)" if left > 0 else f"expired at {when}"


Judge = Callable[[Holder], str | None]  # why a held lease may be taken over (expired, owner gone), or None


def expired(holder: Holder) -> str | None:
    if holder.expires_at is not None and holder.expires_at <= time.time():
        return holder.expiry()
    return None


def any_of(*judges: Judge) -> Judge:
    def judge(holder: Holder) -> str | None:
        return next((reason for j in judges if (reason := j(holder))), None)

    return judge


@dataclass
class Lease:
    """A lease this process holds: `version` is what its next renew or release must still find."""

    path: ObjectStoragePath
    holder: Holder
    version: str
    conflict: type[AirflowFailException]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # a renewer thread and the body

    def renew(self, ttl_s: float) -> None:
        """Extend to now + ttl_s, if still ours; else `conflict` naming whoever holds it now."""
        with self._lock:
            renewed = replace(self.holder, expires_at=time.time() + ttl_s)
            version = storage.replace_if(self.path, renewed.encode(), self.version)
            if version is None:
                raise self.conflict(
                    f"lost the lease {self.path} (held as {self.holder.describe()}): "
                    f"{_now_held(self.path)}; nothing more was written"
                )
            self.holder, self.version = renewed, version

    def release(self) -> bool:
        """Delete the lease only if it is still this version (never a successor's)."""
        with self._lock:
            return storage.delete_if(self.path, self.version)


def acquire(
    path: ObjectStoragePath,
    holder: Holder,
    *,
    stale: Judge,
    conflict: type[AirflowFailException],
    explain: Callable[[Holder], str],
) -> Lease:
    """Hold `path` as `holder`, taking it over only when `stale` says the current holder may be replaced; else
    raise `conflict(explain(current holder))`."""
    doc = holder.encode()
    held_by = Holder(run="<nobody>")
    for _ in range(ATTEMPTS):
        version = storage.create_exclusive(path, doc)
        if version is not None:
            return Lease(path, holder, version, conflict)
        current = storage.read_versioned(path)
        if current is None:  # released between the create and the read: try to create again
            continue
        held_by = Holder.decode(current.data)
        reason = stale(held_by)
        if reason is None:
            raise conflict(explain(held_by))
        version = storage.replace_if(path, doc, current.version)
        if version is not None:
            log.warning("took over %s from %s: %s", path, held_by.describe(), reason)
            return Lease(path, holder, version, conflict)
    raise conflict(explain(held_by))  # every swap lost to another contender: the last one seen holds it


@contextmanager
def held(lease: Lease, *, ttl_s: float, every_s: float) -> Iterator[Lease]:
    """Renew the lease every `every_s` while the body runs, release it after; a lost renewal fails the body's
    end (the body re-checks with `lease.renew` before its commit point, so it never commits without the lease)."""
    stop = threading.Event()
    lost: list[BaseException] = []

    def renew_until_stopped() -> None:
        while not stop.wait(every_s):
            try:
                lease.renew(ttl_s)
            except BaseException as exc:  # lost: remember it, stop renewing
                lost.append(exc)
                return

    renewer = threading.Thread(target=renew_until_stopped, name=f"renew {lease.path.name}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        if not lost:
            lease.release()
    if lost:
        raise lost[0]


def _now_held(path: ObjectStoragePath) -> str:
    current = storage.read_versioned(path)
    if current is None:
        return "nobody holds it now"
    held_by = Holder.decode(current.data)
    return f"now held by {held_by.describe()}, which {held_by.expiry()}"


def owner_of(ti: Any) -> dict[str, Any]:
    """The identity of a running Airflow task instance, as a lease records it."""
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "try_number": ti.try_number,
    }


LIVE_TI_STATES = ("running", "queued", "scheduled", "restarting", "up_for_retry", "up_for_reschedule", "deferred")


def owner_gone(me: Mapping[str, Any], live_count: Callable[[Mapping[str, Any]], int]) -> Judge:
    """A judge for leases held by Airflow task instances: the owner is provably gone when it is this very task
    instance (an earlier try, or the same try of a DagRun made again under the same run_id, as `dags test` does):
    a task instance runs one try at a time and the running one is `me`. Another task instance is gone when Airflow
    counts no live instance of it (`live_count`: the Task SDK's get_ti_count in LIVE_TI_STATES)."""

    def judge(holder: Holder) -> str | None:
        owner = holder.owner
        if not owner:
            return None
        if all(owner.get(k) == me.get(k) for k in ("dag_id", "run_id", "task_id", "map_index")):
            return f"its owner was try {owner.get('try_number')} of this task instance, which now runs as me"
        try:
            alive = live_count(owner)
        except Exception as exc:  # no answer is no proof: wait for the expiry
            log.warning("could not ask Airflow about the lease owner %s: %s", owner, exc)
            return None
        return None if alive else "Airflow has no queued or running instance of its owner task"

    return judge
