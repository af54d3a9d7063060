"""Plan (list → manifest → shards) partitions of growing size; print time and peak memory of each.

Usage: python -m bench.plan_partition [WORK_DIR] [--sizes 25000,50000,100000]
Each plan runs in a fresh process and reads its own peak RSS (VmHWM: unlike ru_maxrss, reset by exec), imports
included. Twice per size: a first run
(everything to classify) and an incremental rerun against a committed partition of the same images (everything
carried over). Goal: 100,000 images in <= 30 s and <= 300 MB, and memory flat as the partition grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DT = "2026-11-02"
SHARD_SIZE = 500


def make_partition(incoming: Path, n: int) -> None:
    """n small files in 100 folders (a real drop's nesting); reused when already there."""
    marker = incoming / f".complete-{n}"
    if marker.exists():
        return
    for i in range(n):
        path = incoming / f"{i % 100:02d}" / f"img-{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8" + i.to_bytes(8, "big"))
    marker.write_text("")


def commit_everything(incoming: Path, partition: Path) -> None:
    """A committed partition whose rows match every listed file: what a finished first run leaves behind."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.common.storage import storage_path
    from tasks.nightly.steps import partitions, predictions

    listing = partition.parent / "listing.parquet"
    partitions.write_listing(storage_path(f"file://{incoming}"), listing)
    table = pq.read_table(listing).sort_by("key")  # committed files are sorted by key
    n = table.num_rows
    rows = pa.table(
        {
            "key": table["key"],
            "content_sha256": pa.nulls(n, pa.string()),
            "source_size": table["size"],
            "source_version": table["version"],
            "status": pa.array(["ok"] * n),
            "label": pa.array(["3"] * n),
            **{name: pa.nulls(n, pa.string()) for name in ("raw_answer", "reason")},
            **{name: pa.array([7] * n, pa.int64()) for name in ("prompt_tokens", "completion_tokens", "attempts")},
            "latency_s": pa.array([0.1] * n),
            "model_version": pa.array(["v1"] * n),
            "endpoint": pa.array(["bench"] * n),
        }
    ).select(predictions.row_schema().names)
    out = storage_path(f"file://{partition}")
    predictions.write_table(out / "run=seed" / "rows.parquet", rows.cast(predictions.row_schema()))
    predictions.publish(
        out,
        "seed",
        [{"path": "run=seed/rows.parquet", "rows": n}],
        {"model_version": "v1", "rows": n, "busy_seconds": 100.0},
    )
    listing.unlink()


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def child(incoming: Path, partition: Path) -> None:
    """One plan in this process; prints a JSON line."""
    import duckdb  # noqa: F401 — imported before the baseline, so the difference is the plan's own memory
    import pyarrow.parquet  # noqa: F401

    from tasks.common.storage import storage_path
    from tasks.nightly.partitions import plan_partition

    baseline = peak_rss_mb()
    started = time.perf_counter()
    plan = plan_partition(
        storage_path(f"file://{incoming}"),
        storage_path(f"file://{partition}"),
        dt=DT,
        model_version="v1",
        shard_size=SHARD_SIZE,
    )
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak,
                "after_imports_mb": baseline,
                "images": plan.images,
                "carried": plan.carried,
                "shards": len(plan.shards),
            }
        )
    )


def measure(incoming: Path, partition: Path) -> dict:
    command = [sys.executable, "-m", "bench.plan_partition", "--child", str(incoming), str(partition)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", nargs="?", default=".data/bench/plan_partition")
    parser.add_argument("--sizes", default="25000,50000,100000")
    parser.add_argument("--child", nargs=2, metavar=("INCOMING", "PARTITION"))
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    import shutil

    work = Path(args.work).resolve()
    for n in [int(s) for s in args.sizes.split(",")]:
        incoming, partition = work / f"incoming-{n}" / f"dt={DT}", work / f"predictions-{n}" / f"dt={DT}"
        make_partition(incoming, n)
        shutil.rmtree(partition.parent, ignore_errors=True)
        partition.mkdir(parents=True)
        first = measure(incoming, partition)
        commit_everything(incoming, partition)
        rerun = measure(incoming, partition)
        for name, r in (("first run", first), ("incremental", rerun)):
            print(
                f"{n:>7,} images, {name:<11}: {r['seconds']:5.1f} s, peak RSS {r['peak_mb']:5.0f} MB "
                f"({r['peak_mb'] - r['after_imports_mb']:+4.0f} MB over imports), {r['shards']} shards, "
                f"{r['carried']:,} carried"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
