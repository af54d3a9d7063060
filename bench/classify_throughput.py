"""Throughput of nightly classification against one local endpoint, in one run:

1. capacity: a direct load generator (pre-built request bodies, async HTTP) at growing concurrency — the most the
   endpoint serves;
2. ours: `tasks.nightly.classification.classify_shard` on a partition of the same images (storage reads, resize,
   retries, Parquet) — ours / capacity should be >= 0.95;
3. naive: one request at a time, the original image, max_tokens=256 — ours / naive should be >= 5.

On one machine the endpoint and its client would share the CPU, and the client's work would look like endpoint
slowness: the server is pinned to the last core and every client (load generator included) to the others — the
topology of production, where the endpoint is another machine.

Usage: python -m bench.classify_throughput [--model DIR] [--images N] [--work DIR]
The model defaults to the one bench.tiny_digits_training trains (.data/bench/tiny_digits/run); `--model untrained`
builds a random tiny model instead (it never stops before max_tokens: the case where max_tokens matters).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import httpx

from support.digits import digit_images, tiny_digits_model
from support.endpoints import endpoint_record
from tasks.common.storage import storage_path
from tasks.model.images import encode_png
from tasks.model.taxonomy import load_taxonomy
from tasks.nightly.classification import PartitionJob, ShardResult, classify_shard
from tasks.nightly.partitions import plan_partition
from tasks.serving import deployment
from tasks.serving.client import build_request, encode_image
from tasks.serving.local_server import start_local_server, stop_local_server

TRAINED = Path(".data/bench/tiny_digits/run")
DT = "2026-11-02"
LOAD_CONCURRENCY = (1, 2, 4, 8, 16)
ROUNDS = 3


async def load_generator(url: str, bodies: list[bytes], concurrency: int) -> float:
    """Images per second for `bodies` sent with `concurrency` requests in flight (nothing else on the client)."""
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def worker() -> None:
            while queue:
                response = await c.post(
                    "/v1/chat/completions", content=queue.pop(), headers={"Content-Type": "application/json"}
                )
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) / (time.perf_counter() - started)


def naive(url: str, files: list[Path], prompt: str) -> float:
    """One request at a time, the original PNG as is, max_tokens=256: how a first script would do it."""
    taxonomy = load_taxonomy("digits")
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as client:
        for path in files:
            image_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
            content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}]
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": 256}
            answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            taxonomy.parse_answer(answer)
    return len(files) / (time.perf_counter() - started)


def classify_partition(work: Path, incoming: Path, record: dict, concurrency: int) -> ShardResult:
    """The nightly path: plan the partition, classify it as one shard (storage reads, resize, rows, Parquet)."""
    partition = f"file://{work}/predictions/dt={DT}"
    plan = plan_partition(
        storage_path(f"file://{incoming}"),
        storage_path(partition),
        dt=DT,
        model_version="bench",
        shard_size=10_000,
        reclassify=True,
    )
    job = PartitionJob(DT, f"file://{incoming}", partition, plan.run_token, record, concurrency, "aws_default")
    return classify_shard(job, plan.shards[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(TRAINED), help="model dir, or 'untrained'")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--naive-images", type=int, default=60)
    parser.add_argument("--work", default=".data/bench/classify_throughput")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    shutil.rmtree(work / "predictions", ignore_errors=True)
    model = tiny_digits_model(work / "untrained") if args.model == "untrained" else Path(args.model).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"no model at {model}: run `python -m bench.tiny_digits_training` first, or --model untrained")

    incoming = work / "incoming" / f"dt={DT}"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    images, _ = digit_images(args.images)
    files = []
    for i, image in enumerate(images):
        files.append(incoming / f"digit-{i:04d}.png")
        files[-1].write_bytes(encode_png(image))

    state = work / "server.json"
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[-1:])  # inherited by the server process and its threads
    server = start_local_server(model, state)
    os.sched_setaffinity(0, cores[:-1] or cores)
    try:
        record = endpoint_record(server.base_url, model_uri=model.as_uri(), supports_choice=True)
        client = PartitionJob(DT, "", "", "", record, 1, "aws_default").client()
        jpegs = [encode_image(p.read_bytes(), client.policy) for p in files]
        bodies = [json.dumps(build_request(client.prompt, j, client.spec, client.choices)).encode() for j in jpegs]
        asyncio.run(load_generator(server.base_url, bodies[:10], 2))  # warm-up
        capacity = {c: asyncio.run(load_generator(server.base_url, bodies, c)) for c in LOAD_CONCURRENCY}
        best = max(capacity, key=capacity.get)
        # Rounds alternate the two at the best concurrency, so drift of a shared machine hits both alike.
        direct, ours = [], []
        for _ in range(ROUNDS):
            direct.append(asyncio.run(load_generator(server.base_url, bodies, best)))
            result = classify_partition(work, incoming, record, best)
            ours.append(result.rows / (result.finished - result.started))
        naive_rate = naive(server.base_url, files[: args.naive_images], client.prompt)
    finally:
        stop_local_server(state)

    statuses = result.stats["statuses"]
    policy = deployment.resize_policy(record)
    capacity_rate, ours_rate = statistics.median(direct), statistics.median(ours)
    print(f"model {model} | {len(files)} digits | resize geometry tile {policy.geometry.tile_size}px")
    for c, rate in capacity.items():
        print(f"  load generator, {c:>2} in flight: {rate:6.2f} images/s")
    print(f"endpoint capacity:  {capacity_rate:6.2f} images/s, median of {fmt(direct)} at {best} in flight")
    print(f"shard classifier:   {ours_rate:6.2f} images/s, median of {fmt(ours)} at concurrency {best} ({statuses})")
    print(f"naive (1 at a time, original image, max_tokens=256): {naive_rate:6.2f} images/s")
    print(
        f"ours / capacity = {ours_rate / capacity_rate:.3f} (goal >= 0.95); "
        f"ours / naive = {ours_rate / naive_rate:.2f}x (goal >= 5x)"
    )


def fmt(rates: list[float]) -> str:
    return "[" + ", ".join(f"{r:.1f}" for r in rates) + "]"


if __name__ == "__main__":
    main()
