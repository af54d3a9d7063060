"""Plan a backlog and write its request files on local storage; print time and peak memory for growing backlogs.

Usage: python -m bench.plan_backlog [WORK_DIR] [--sizes 30000,300000] [--days 30] [--workers N]
Each size runs in a fresh process and reads its own peak RSS (VmHWM), imports included. What is measured is what
`classify_backlog`'s tasks do, through their own bodies:
- plan (one process, as the plan_backlog task): every day listed into its manifest (`partitions.plan_partition`),
  shards → request files → jobs;
- requests (`steps.write_requests`, the mapped write_requests task, one call per day), spread over `--workers`
  processes (default: one per CPU), as a scheduler runs the mapped tasks side by side: every image read, decoded,
  resized to the endpoint record's token budget and re-encoded as JPEG by the endpoint client's `encode_image`, its
  chat body built by `build_request` (label constraint included), written as one JSON Lines record, plus one index
  file per request file. Worker start-up (a fresh interpreter and its imports) is inside the time.
The images are tiny (distinct 8x8 PNGs of ~270 bytes, the local tiny model's 32-px geometry), so the numbers are the
per-image cost of the request builder itself (decode, resize, JPEG, base64, JSON), not of real photos, whose decode
and resize cost more.
Goal: >= 300,000 images over 30 days in <= 60 s and <= 400 MB per process, memory flat as the backlog grows.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

IMAGES_PER_FILE = 500
VARIANTS = 64  # distinct images, written round-robin


def make_backlog(incoming: Path, n: int, days: list[str]) -> None:
    """n tiny PNGs spread over the days; reused when already there."""
    import numpy as np
    from PIL import Image

    marker = incoming / f".complete-{n}-{len(days)}"
    if marker.exists():
        return
    variants = []
    for seed in range(VARIANTS):
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(buf, format="PNG")
        variants.append(buf.getvalue())
    for day in days:
        (incoming / f"dt={day}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (incoming / f"dt={days[i % len(days)]}" / f"img-{i:07d}.png").write_bytes(variants[i % VARIANTS])
    marker.write_text("")


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def write_day(jobs: list[dict], day: dict) -> tuple[list[dict], float]:
    """One mapped write_requests task; returns what it wrote and this worker's peak RSS so far."""
    from tasks.backlog.steps import write_requests

    return write_requests(jobs, day), peak_rss_mb()


def child(work: Path, incoming: Path, days: list[str], workers: int) -> None:
    """Plan in this process, write the request files in `workers` processes; prints a JSON line."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import asdict
    from itertools import repeat

    import duckdb  # noqa: F401 — imported before the baseline, so the difference is the work's own memory
    import pyarrow.parquet  # noqa: F401

    from support.endpoints import endpoint_record
    from tasks.backlog import plan
    from tasks.common.storage import storage_path
    from tasks.nightly.classification import PartitionJob
    from tasks.nightly.partitions import plan_partition

    record = dataclasses.replace(endpoint_record("http://127.0.0.1:9"), supports_choice=True)
    baseline = peak_rss_mb()
    started = time.perf_counter()
    day_docs, files = [], []
    for day in days:
        partition = storage_path(f"file://{work}/predictions/dt={day}")
        planned = plan_partition(
            storage_path(f"file://{incoming}/dt={day}"),
            partition,
            dt=day,
            model_version="v1",
            shard_size=IMAGES_PER_FILE,
        )
        day_job = PartitionJob(
            day, f"file://{incoming}/dt={day}", str(partition), planned.run_token, record, 64, "aws_default"
        )
        day_docs.append({"job": asdict(day_job)})
        files += plan.request_files(day, planned.shards)
    jobs = plan.chunk_jobs(files, prefix=f"file://{work}/backlog", run_key="bench", identity={}, images_per_job=200_000)
    planned_s = time.perf_counter() - started
    job_docs = [job.to_dict() for job in jobs]
    # spawn, as each task is its own process (and a fork of a process with pyarrow's threads is unsafe)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(write_day, repeat(job_docs), day_docs))
    total_s = time.perf_counter() - started
    written = [w for day, _ in results for w in day]
    print(
        json.dumps(
            {
                "plan_s": planned_s,
                "requests_s": total_s - planned_s,
                "total_s": total_s,
                "peak_mb": peak_rss_mb(),
                "worker_peak_mb": max(peak for _, peak in results),
                "after_imports_mb": baseline,
                "records": sum(w["records"] for w in written),
                "files": len(files),
                "jobs": len(jobs),
                "workers": workers,
                "max_record_bytes": max(w["max_record_bytes"] for w in written),
            }
        )
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", nargs="?", default=".data/bench/plan_backlog")
    parser.add_argument("--sizes", default="30000,300000")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", nargs=3, metavar=("WORK", "INCOMING", "FIRST_DAY"))
    args = parser.parse_args(argv)
    if args.child:
        first = date.fromisoformat(args.child[2])
        child(
            Path(args.child[0]),
            Path(args.child[1]),
            [(first + timedelta(days=d)).isoformat() for d in range(args.days)],
            args.workers,
        )
        return
    import shutil

    root = Path(args.work).resolve()
    first = date(2026, 9, 1)
    days = [(first + timedelta(days=d)).isoformat() for d in range(args.days)]
    for n in [int(s) for s in args.sizes.split(",")]:
        incoming, work = root / f"incoming-{n}", root / f"work-{n}"
        make_backlog(incoming, n, days)
        shutil.rmtree(work, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "bench.plan_backlog",
            "--days",
            str(args.days),
            "--workers",
            str(args.workers),
            "--child",
            str(work),
            str(incoming),
            days[0],
        ]
        r = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(
            f"{n:>7,} images / {args.days} days: plan {r['plan_s']:5.1f} s + requests {r['requests_s']:6.1f} s "
            f"in {r['workers']} worker(s) = {r['total_s']:6.1f} s; peak RSS planner {r['peak_mb']:4.0f} MB "
            f"({r['peak_mb'] - r['after_imports_mb']:+4.0f} MB over imports), each worker <= "
            f"{r['worker_peak_mb']:4.0f} MB; "
            f"{r['files']} request files in {r['jobs']} job(s), largest record {r['max_record_bytes']} B"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
