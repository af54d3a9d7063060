"""Peak memory of decoding worst-case images: one of each alone, then a shard's worth at the default concurrency.

Usage: python -m bench.decode_memory [WORK_DIR]

The worst cases sit just under the pixel cap (tasks.model.images.DEFAULT_MAX_PIXELS): a palette PNG with
transparency, an RGBA PNG, a 16-bit greyscale PNG and an RGB JPEG, plus a 7000x7000 palette "bomb" (6 KB, refused
before decoding). Every measurement runs in a fresh process and reads its own peak RSS (VmHWM), imports included,
through the client's encode path (decode, normalise, resize to the token budget, re-encode) — what a shard does per
image. The shard run decodes 16 images from `concurrency` (8, the DAG's default) threads, as `classify_many` does;
DECODE_SLOTS bounds how many decode at once. Then the same shard with the slots opened to the concurrency, for
comparison. Prints one line per measurement and the bound the README states.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

CONCURRENCY = 8  # classify_images' default `concurrency` param
SHARD_IMAGES = 16

_MAKE = r"""
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from tasks.model.images import DEFAULT_MAX_PIXELS

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
side = int(DEFAULT_MAX_PIXELS ** 0.5) - 1
size = (side, side)
palette = Image.new("P", size, 1)
palette.putpalette([0, 0, 0, 200, 30, 30] * 128)
palette.save(out / "palette-transparent.png", transparency=0, optimize=True)
Image.new("RGBA", size, (200, 30, 30, 128)).save(out / "rgba.png", optimize=True)
Image.fromarray(np.full(size, 40000, dtype=np.uint16)).save(out / "sixteen-bit.png", optimize=True)
Image.new("RGB", size, (200, 30, 30)).save(out / "rgb.jpg", quality=90)
Image.new("P", (7000, 7000)).save(out / "bomb.png", optimize=True)
"""

_MEASURE = r"""
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from tasks.model import images
from tasks.model.images import ImageRejected
from tasks.model.vision_tokens import DEFAULT_POLICY
from tasks.serving.client import encode_image

files, concurrency, slots = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
images._DECODE_GATE = threading.BoundedSemaphore(slots)
datas = [Path(f).read_bytes() for f in files]
baseline = hwm()

def one(data):
    try:
        return len(encode_image(data, DEFAULT_POLICY))
    except ImageRejected as exc:
        return str(exc)[:40]

with ThreadPoolExecutor(concurrency) as pool:
    outcomes = list(pool.map(one, datas))
print(json.dumps({"baseline": baseline, "peak": hwm(), "outcomes": outcomes}))
"""


def measure(files: list[Path], concurrency: int, slots: int) -> dict:
    args = [json.dumps([str(f) for f in files]), str(concurrency), str(slots)]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    from tasks.model.images import DECODE_SLOTS, DEFAULT_MAX_PIXELS, MAX_FILE_BYTES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work_dir", nargs="?", type=Path)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="decode-memory-"))
    subprocess.run([sys.executable, "-c", _MAKE, str(work)], check=True)
    kinds = ["palette-transparent.png", "rgba.png", "sixteen-bit.png", "rgb.jpg", "bomb.png"]
    print(f"pixel cap {DEFAULT_MAX_PIXELS:,}, file cap {mb(MAX_FILE_BYTES)}, decode slots {DECODE_SLOTS}")
    worst = 0
    for kind in kinds:
        result = measure([work / kind], 1, 1)
        delta = result["peak"] - result["baseline"]
        worst = max(worst, delta)
        size = (work / kind).stat().st_size
        print(f"one {kind:<24} {size:>10,} B  peak +{mb(delta):>8} over {mb(result['baseline'])}  {result['outcomes']}")
    shard = [work / kinds[i % 4] for i in range(SHARD_IMAGES)]
    for slots in (DECODE_SLOTS, CONCURRENCY):
        result = measure(shard, CONCURRENCY, slots)
        grown = mb(result["peak"] - result["baseline"])
        print(
            f"shard of {SHARD_IMAGES} worst images, concurrency {CONCURRENCY}, {slots} decode slots: "
            f"peak {mb(result['peak'])} (+{grown} over the loaded process)"
        )
    per_image = math.ceil(worst / 2**20)
    print(
        f"bound: decode peak <= {DECODE_SLOTS} slots x {per_image} MB (worst single image) = "
        f"{DECODE_SLOTS * per_image} MB, plus up to concurrency x file cap of raw bytes waiting "
        f"({CONCURRENCY} x {mb(MAX_FILE_BYTES)})"
    )


if __name__ == "__main__":
    main()
