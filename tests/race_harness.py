"""Race harness for one writer per partition: two (or more) contenders released by a barrier, round after round.

Kinds:
- `publish`: each contender stages its own run's file, then all call `tasks.nightly.predictions.publish` for the
  same dt at once. Files are staged before the barrier, so a correct lease lets exactly one succeed (the loser
  either meets the lease or finds its files replaced): a round where two succeed is a double winner. After each
  round `_SUCCESS` must list only files that exist and the partition must hold its rows.
- `claim`: all call `tasks.nightly.partitions.claim_dt` for the same dt with different, active run ids: one may
  pass.
`--stale` seeds each round with a lease (or claim) left by a killed holder (expired / its run finished), the case
where every contender takes over at once. Threads share one process; processes are persistent spawned workers
(a barrier per round), so a round costs the race, not an interpreter start.

A raw exception is any failure that is not an AirflowFailException (PublishConflict is one): a loser must say who
won, never crash on a vanished file. The same script runs against any checkout (`PYTHONPATH`), which is how the
old code's numbers were measured.

Usage: python -m tests.race_harness --storage file:///tmp/race [--kind publish|claim] [--mode threads|processes]
       [--stale] [--rounds 500] [--contenders 2] [--conn-id aws_default]   (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

ACTIVE = "running"


def _path(uri: str, conn_id: str | None):
    from tasks.common.storage import storage_path

    return storage_path(uri, conn_id)


def rows_table(keys: list[str]):
    import pyarrow as pa

    from tasks.nightly import predictions

    rows = [{"key": key, "status": "ok", "label": "3", "attempts": 1} for key in sorted(keys)]
    return pa.Table.from_pylist(rows, schema=predictions.row_schema())


@contextmanager
def quiet() -> Iterator[None]:
    """Takeovers of the seeded stale lease are logged as warnings: one per round is noise here."""
    import logging

    tasks_log = logging.getLogger("tasks")
    level = tasks_log.level
    tasks_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tasks_log.setLevel(level)


def token_of(round_: int, who: int) -> str:
    return f"r{round_:05d}-c{who}"


def prepare(kind: str, partition_uri: str, conn_id: str | None, round_: int, contenders: int, stale: bool) -> None:
    """Clean the partition and stage every contender's file; seed a stale lease or claim."""
    from tasks.common import storage
    from tasks.nightly import predictions

    partition = _path(partition_uri, conn_id)
    if partition.exists():
        partition.fs.rm(partition.path, recursive=True)
    if kind == "publish":
        for who in range(contenders):
            token = token_of(round_, who)
            predictions.write_table(
                partition / f"run={token}/shard-00000.parquet", rows_table([f"{token}-{k}" for k in "ab"])
            )
    if stale:
        name, doc = (
            ("_LEASE", {"run": "killed", "expires_at": time.time() - 1})
            if kind == "publish"
            else ("_CLAIM", {"run": "finished__run", "run_id": "finished__run"})  # both formats
        )
        storage.write_bytes_atomic(partition / name, json.dumps(doc).encode())


def contend(kind: str, partition_uri: str, conn_id: str | None, round_: int, who: int) -> str:
    """One contender's attempt: "won", "refused" (an AirflowFailException, the message naming the winner) or
    "raw:<type>"."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.nightly import partitions, predictions

    partition = _path(partition_uri, conn_id)
    token = token_of(round_, who)
    try:
        if kind == "publish":
            files = [{"path": f"run={token}/shard-00000.parquet", "rows": 2}]
            predictions.publish(partition, token, files, {"rows": 2})
        else:
            states = {"finished__run": "success"}
            partitions.claim_dt(partition, f"run__{token}", lambda run_id: states.get(run_id, ACTIVE))
    except AirflowFailException:
        return "refused"
    except Exception as exc:
        return f"raw:{type(exc).__name__}: {exc}"
    return "won"


def check(kind: str, partition_uri: str, conn_id: str | None) -> str | None:
    """What is wrong with the partition after a round, or None."""
    from tasks.nightly import predictions

    if kind != "publish":
        return None
    partition = _path(partition_uri, conn_id)
    manifest = predictions.read_success(partition)
    if manifest is None:
        return "nothing committed"
    missing = [f["path"] for f in manifest["files"] if not (partition / f["path"]).exists()]
    if missing:
        return f"_SUCCESS lists missing files {missing}"
    if predictions.read_partition(partition).num_rows != 2:
        return "rows lost"
    return None


def _worker(args: tuple, barrier: Any, results: Any, who: int) -> None:
    kind, uri, conn_id, rounds = args
    with quiet():
        for round_ in range(rounds):
            barrier.wait()
            results.put((round_, who, contend(kind, uri, conn_id, round_, who)))


def race(
    kind: str,
    uri: str,
    *,
    rounds: int,
    contenders: int = 2,
    mode: str = "threads",
    stale: bool = False,
    conn_id: str | None = None,
) -> dict[str, Any]:
    """Run `rounds` rounds; counts of double winners, rounds without a winner, raw exceptions and bad partitions."""
    with quiet():
        return _race(kind, uri, rounds=rounds, contenders=contenders, mode=mode, stale=stale, conn_id=conn_id)


def _race(kind: str, uri: str, *, rounds: int, contenders: int, mode: str, stale: bool, conn_id: str | None) -> dict:
    tally: Counter[str] = Counter()
    examples: list[str] = []

    def score(round_: int, outcomes: list[str]) -> None:
        won = outcomes.count("won")
        tally["double_winners"] += won > 1
        tally["no_winner"] += won == 0
        raws = [o for o in outcomes if o.startswith("raw:")]
        tally["raw_exceptions"] += len(raws)
        problem = check(kind, uri, conn_id)
        tally["bad_partitions"] += problem is not None
        if (won > 1 or raws or problem) and len(examples) < 5:
            examples.append(f"round {round_}: {outcomes} {problem or ''}")

    started = time.monotonic()
    if mode == "threads":
        with ThreadPoolExecutor(contenders) as pool:
            for round_ in range(rounds):
                prepare(kind, uri, conn_id, round_, contenders, stale)
                barrier = threading.Barrier(contenders)

                def one(who: int, barrier=barrier, round_=round_) -> str:
                    barrier.wait()
                    return contend(kind, uri, conn_id, round_, who)

                score(round_, list(pool.map(one, range(contenders))))
    else:
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(contenders + 1), ctx.Queue()
        workers = [
            ctx.Process(target=_worker, args=((kind, uri, conn_id, rounds), barrier, results, who))
            for who in range(contenders)
        ]
        for w in workers:
            w.start()
        try:
            for round_ in range(rounds):
                prepare(kind, uri, conn_id, round_, contenders, stale)
                barrier.wait(timeout=120)  # releases every worker at once
                got = [results.get(timeout=120) for _ in range(contenders)]
                score(round_, [outcome for _, _, outcome in got])
        finally:
            for w in workers:
                w.join(timeout=10)
                if w.is_alive():
                    w.kill()
    return {
        "kind": kind,
        "mode": mode,
        "stale": stale,
        "rounds": rounds,
        "contenders": contenders,
        "double_winners": tally["double_winners"],
        "no_winner": tally["no_winner"],
        "raw_exceptions": tally["raw_exceptions"],
        "bad_partitions": tally["bad_partitions"],
        "seconds": round(time.monotonic() - started, 1),
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="a folder URI: file:///tmp/race or s3://bucket/prefix")
    parser.add_argument("--kind", choices=("publish", "claim"), default="publish")
    parser.add_argument("--mode", choices=("threads", "processes"), default="threads")
    parser.add_argument("--stale", action="store_true")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--contenders", type=int, default=2)
    parser.add_argument("--conn-id", default="aws_default")
    a = parser.parse_args()
    uri = f"{a.storage.rstrip('/')}/predictions/dt=2026-11-02"
    try:
        result = race(
            a.kind, uri, rounds=a.rounds, contenders=a.contenders, mode=a.mode, stale=a.stale, conn_id=a.conn_id
        )
    except Exception:
        traceback.print_exc()
        raise
    print(json.dumps(result))


if __name__ == "__main__":
    main()
