"""Does calibrated confidence tell a bad night from a good one? On the demo's promoted model, in one run:

1. the held-out digits, split into three clean days as the demo does, classified through the local vLLM endpoint
   with the model's calibration (the nightly client, the same request body as production);
2. the same digits corrupted (blurred, rotated, off-domain photo patches: `tasks.model.demo_data.CORRUPTIONS`), as
   one bad day with the usual label mix;
3. each day judged by the quality gate's checks against the clean days before it (label-free: estimated accuracy,
   low-confidence share, confidence drop; plus the label shift the gate had before), next to the true accuracy the
   demo's known digits give, per corruption kind too.

Run after `make demo` (it trains and promotes the model): python -m bench.confidence_gate [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import pyarrow as pa

from tasks.common import storage
from tasks.common.settings import load_settings
from tasks.model.demo_data import CORRUPTIONS, Digit, digits, held_out_indices
from tasks.model.images import encode_png
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import ResizePolicy
from tasks.nightly.predictions import RowStats
from tasks.nightly.quality import QualityThresholds, evaluate
from tasks.serving.client import EndpointClient, EndpointSpec
from tasks.serving.local import model_dir
from tasks.serving.local_server import start_local_server, stop_local_server
from tasks.training.registry import production_model

CLEAN_DAYS = 3


async def classify(client: EndpointClient, images: list[Digit], concurrency: int) -> list[dict]:
    """One row per image, in the order of `images`."""
    sent = ((str(position), encode_png(d.image)) for position, d in enumerate(images))
    rows: dict[int, dict] = {}
    async for r in client.classify_many(sent, concurrency=concurrency):
        truth = images[int(r.key)].label
        correct = r.status == "ok" and r.label == truth
        rows[int(r.key)] = {"status": r.status, "label": r.label, "confidence": r.confidence, "correct": correct}
    return [rows[position] for position in range(len(images))]


def stats_of(rows: list[dict]) -> RowStats:
    table = pa.table(
        {
            "status": [r["status"] for r in rows],
            "label": [r["label"] for r in rows],
            "confidence": pa.array([r["confidence"] for r in rows], pa.float64()),
            "prompt_tokens": [0] * len(rows),
            "completion_tokens": [0] * len(rows),
        }
    )
    return RowStats().add(table)


def line(name: str, rows: list[dict], baseline: RowStats, thresholds: QualityThresholds) -> str:
    stats = stats_of(rows)
    checks = {c.name: c for c in evaluate(stats, baseline, thresholds)}
    violated = [name for name, c in checks.items() if not c.passed]
    true = sum(r["correct"] for r in rows) / len(rows)
    estimated, low = stats.mean_confidence, stats.share_below(thresholds.low_confidence_below)
    below = sum(r["confidence"] is not None and r["confidence"] < thresholds.low_confidence_below for r in rows)
    drop = checks["confidence_drop"].value
    shift = checks["label_shift"].value
    return (
        f"| {name} | {len(rows)} | {true:.3f} | {estimated:.3f} | {low:.3f} ({below}) | "
        f"{'—' if drop is None else f'{drop:+.3f}'} | {'—' if shift is None else f'{shift:.3f}'} | "
        f"{', '.join(violated) or 'passed'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    settings = load_settings()
    root = storage.root(settings)
    version = production_model(root / storage.MODELS)
    if version is None or version.calibration is None:
        raise SystemExit("no promoted model with a calibration: run `make demo` first")
    report = storage.read_json(
        storage.storage_path(version.dataset_uri(settings.storage_uri)) / storage.CURATION_REPORT
    )
    held_out = list(digits(held_out_indices(report)))
    damage = list(CORRUPTIONS.items())
    corrupted = [Digit(d.index, d.label, damage[i % len(damage)][1](d.image, i)) for i, d in enumerate(held_out)]
    state = root / storage.SERVING / "bench-confidence" / "server.json"
    started = time.monotonic()
    info = start_local_server(model_dir(version.model_uri(settings.storage_uri)), storage.local_path(str(state)))
    temperature = version.calibration.temperature
    print(f"vLLM ready in {time.monotonic() - started:.0f} s; model {version.version}, T={temperature}")
    try:
        client = EndpointClient(
            EndpointSpec("openai_http", url=info.base_url, supports_choice=True, timeout_s=120),
            load_taxonomy(version.taxonomy),
            policy=ResizePolicy(version.max_image_tokens, version.vision_geometry),
            prompt=version.prompt,
            calibration=version.calibration,
        )
        clean_rows = asyncio.run(classify(client, held_out, args.concurrency))
        bad_rows = asyncio.run(classify(client, corrupted, args.concurrency))
    finally:
        stop_local_server(storage.local_path(str(state)))
    thresholds = QualityThresholds()
    days = [clean_rows[i::CLEAN_DAYS] for i in range(CLEAN_DAYS)]
    print("| day | images | true acc. | estimated acc. | low-confidence share | drop vs before | label shift | gate |")
    print("|---|---|---|---|---|---|---|---|")
    baseline = RowStats()
    for n, rows in enumerate(days, 1):
        print(line(f"clean day {n}", rows, baseline, thresholds))
        baseline.merge(stats_of(rows))
    print(line("bad night (all kinds)", bad_rows, baseline, thresholds))
    for k, (kind, _) in enumerate(damage):
        print(line(f"  only {kind}", bad_rows[k :: len(damage)], baseline, thresholds))
    statuses = Counter(r["status"] for r in clean_rows + bad_rows)
    print(f"statuses over all {len(clean_rows) + len(bad_rows)} requests: {dict(statuses)}")


if __name__ == "__main__":
    main()
