"""Hash and group 1,000,000 images for near-duplicates; print time and peak memory of each stage.

Usage: python -m bench.near_duplicates [--images 1000000] [--workers 2] [--taxonomy hotel]
Images are generated as they are hashed (64x48 grey, a random texture each; every tenth a brightened, noisy copy
of the one before) and hashed with the curation's own `phash`, streamed in chunks by one process per worker: the
parent holds 8 bytes per image. Pairs and star groups then run on all the hashes at the taxonomy's threshold, in
the parent, as curation does. Peak RSS is each process's VmHWM, imports included.
Goal (issue 23): hashing + grouping 1 M hashes <= 10 min and <= 1 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from multiprocessing import Pool

import numpy as np

CHUNK = 10_000
COPY_EVERY = 10


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def hash_chunk(start: int) -> tuple[int, np.ndarray, float]:
    """Hashes of images start..start+CHUNK-1 (deterministic per index), and this worker's peak RSS."""
    from PIL import Image

    from tasks.curation.near_duplicates import phash

    rng = np.random.default_rng(start)
    hashes = np.empty(CHUNK, dtype=np.uint64)
    base = rng.integers(0, 256, (48, 64)).astype(np.float32)
    for k in range(CHUNK):
        if (start + k) % COPY_EVERY:
            base = rng.integers(0, 256, (48, 64)).astype(np.float32)
            pixels = base
        else:  # a re-upload of the previous picture: brighter, with sensor noise
            pixels = base * 1.2 + rng.normal(0, 4, base.shape)
        hashes[k] = phash(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L"))
    return start, hashes, peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--taxonomy", default="hotel")
    args = parser.parse_args()
    from tasks.curation.near_duplicates import near_pairs, star_groups, taxonomy_policy

    policy = taxonomy_policy(args.taxonomy)
    n = args.images // CHUNK * CHUNK
    hashes = np.empty(n, dtype=np.uint64)
    started = time.perf_counter()
    worker_rss = 0.0
    with Pool(args.workers) as pool:
        for start, chunk, rss in pool.imap_unordered(hash_chunk, range(0, n, CHUNK)):
            hashes[start : start + CHUNK] = chunk
            worker_rss = max(worker_rss, rss)
    hashed = time.perf_counter()
    pairs = near_pairs(hashes, policy.max_distance)
    paired = time.perf_counter()
    grouping = star_groups(n, *pairs, policy.max_group_size)
    grouped = time.perf_counter()

    planted = n // COPY_EVERY
    found = sum(1 for i, j in zip(*(a.tolist() for a in pairs[:2]), strict=True) if j == i + 1 and j % COPY_EVERY == 0)
    sizes = Counter(len(members) for members in grouping.groups)
    print(f"{n:,} images, {args.workers} workers, threshold {policy.max_distance} bits (taxonomy {args.taxonomy})")
    print(
        f"hashing (generate + phash): {hashed - started:.1f} s ({(hashed - started) / n * 1e6:.0f} us/image "
        f"wall), worker peak RSS {worker_rss:.0f} MB"
    )
    print(
        f"pairs: {len(pairs[0]):,} within the threshold in {paired - hashed:.1f} s; planted copies found "
        f"{found:,}/{planted:,}"
    )
    print(
        f"groups: {len(grouping.groups):,} (sizes {dict(sorted(sizes.items()))}), {len(grouping.cut)} cut, "
        f"in {grouped - paired:.1f} s"
    )
    print(f"hashing + grouping: {grouped - started:.1f} s; parent peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
