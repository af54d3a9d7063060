"""The local endpoint's engine, new against old, in one run: vLLM's CPU build (.venvs/serving, what the local backend
starts) and `transformers serve` (transformers[serving] 5.24.0, the engine before it), on the same model and images.

For each engine: start-up (launch until /v1/models lists the model), peak RSS of the server's whole process group
(sampled every 0.2 s from launch to stop; the sum over its processes, so pages they share count more than once), and
images/s through the project's own EndpointClient at concurrency 1 and 8, each engine with the request its local plan
sends (vLLM with the label constraint; `transformers serve` answers that field with HTTP 422, so without). Then how
often the two gave the same label, and each one's accuracy on the digits' true labels.

The old engine lives in a throwaway environment under .cache/bench/ (built once with uv: torch's CPU wheel plus
transformers[serving]==5.24.0), never in .venv.

Usage: python -m bench.local_engine [--model DIR] [--images N]
The model defaults to the demo's production model (`make demo` trains and registers it under the storage root); with
none registered it falls back to a random tiny model and says so (answers are then meaningless, speed is not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from support.digits import tiny_digits_model
from tasks.common import storage
from tasks.common.processes import stop_group
from tasks.common.settings import REPO_ROOT, load_settings
from tasks.curation.curate import REPORT_NAME
from tasks.model.demo_data import digits, held_out_indices
from tasks.model.images import encode_png
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import ResizePolicy
from tasks.serving.client import ClassificationResult, EndpointClient, EndpointSpec
from tasks.serving.local_server import model_geometry, start_local_server, stop_local_server

WORK = REPO_ROOT / ".cache" / "bench" / "local_engine"
OLD_ENV = REPO_ROOT / ".cache" / "bench" / "transformers-serve"
OLD_REQUIREMENTS = ["transformers[serving]==5.24.0", "pillow"]
CONCURRENCY = (1, 8)
READY_S = 900.0


@dataclass
class Model:
    path: Path
    prompt: str
    policy: ResizePolicy
    source: str
    held_out: list[int] | None = None  # digit indices the model never trained on (its dataset's test split)


@dataclass
class Measured:
    engine: str
    startup_s: float
    peak_rss_mib: float
    rates: dict[int, float]
    results: list[ClassificationResult]


class PeakRss:
    """The peak of the summed RSS of this process's descendants (the server, in a session of its own, and every
    process it starts), sampled in a thread from construction until `stop`."""

    def __init__(self) -> None:
        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            total = 0
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak / 2**20


def find_model(explicit: str | None) -> Model:
    """--model, else the demo's production model from the registry, else a random tiny model."""
    taxonomy = load_taxonomy("digits")
    if explicit:
        path = Path(explicit).resolve()
        return Model(path, taxonomy.prompt(), ResizePolicy(None, model_geometry(path)), f"--model {path}")
    from tasks.training import registry

    settings = load_settings()
    release = registry.production_model(storage.root(settings) / storage.MODELS)
    if release is not None:
        path = storage.local_path(release.model_uri(settings.storage_uri), "the benchmark")
        policy = ResizePolicy(release.max_image_tokens, release.vision_geometry)
        report = storage.read_json(storage.storage_path(release.dataset_uri(settings.storage_uri)) / REPORT_NAME)
        source = f"the registry's production model {release.version} (make demo), on its held-out digits"
        return Model(path, release.prompt, policy, source, held_out_indices(report))
    path = tiny_digits_model(WORK / "untrained")
    source = "NO TRAINED MODEL registered (run `make demo` first): a random tiny model, answers are meaningless"
    return Model(path, taxonomy.prompt(), ResizePolicy(None, model_geometry(path)), source)


def old_engine() -> Path:
    """`transformers serve` in its throwaway environment, built on first use."""
    cli, stamp = OLD_ENV / "bin" / "transformers", OLD_ENV / ".installed"
    if not stamp.is_file():
        shutil.rmtree(OLD_ENV, ignore_errors=True)
        uv = str(REPO_ROOT / ".venv" / "bin" / "uv")
        subprocess.run([uv, "venv", "-q", "--python", "python3", str(OLD_ENV)], check=True)
        torch_source = ["--find-links", "/opt/wheels"] if list(Path("/opt/wheels").glob("torch-*")) else []
        install = [uv, "pip", "install", "-q", "--python", str(OLD_ENV / "bin" / "python"), *torch_source]
        subprocess.run([*install, "torch==2.13.0+cpu", *OLD_REQUIREMENTS], check=True)
        stamp.touch()
    return cli


def start_old(model: Path, port: int, log: Path) -> tuple[subprocess.Popen, str]:
    """The old engine's command, as tasks/serving/local_server.py ran it before vLLM."""
    command = [str(old_engine()), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_S
    while not _lists(url, str(model)):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc.pid)
            raise SystemExit(f"transformers serve did not start; see {log}")
        time.sleep(0.2)
    return proc, url


def _lists(url: str, model: str) -> bool:
    try:
        return [m.get("id") for m in httpx.get(f"{url}/v1/models", timeout=2).json()["data"]] == [model]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False


def throughput(client: EndpointClient, images: list[bytes], concurrency: int) -> tuple[float, list]:
    async def run() -> list[ClassificationResult]:
        pairs = [(f"{i:04d}", image) for i, image in enumerate(images)]
        return [result async for result in client.classify_many(pairs, concurrency=concurrency)]

    started = time.perf_counter()
    results = asyncio.run(run())
    return len(images) / (time.perf_counter() - started), sorted(results, key=lambda r: r.key)


def measure(engine: str, start: Callable[[], tuple[int, str]], stop: Callable[[int], None], model: Model, images):
    """Start the engine (timed, RSS sampled from launch to stop), warm it up, then images/s at each concurrency."""
    rss, started = PeakRss(), time.perf_counter()
    pgid, url = start()
    startup = time.perf_counter() - started
    try:
        spec = EndpointSpec("openai_http", url=url, timeout_s=120, supports_choice=engine == "vLLM")
        client = EndpointClient(spec, load_taxonomy("digits"), policy=model.policy, prompt=model.prompt)
        throughput(client, images[:8], 2)  # warm-up: the first requests pay one-off costs
        rates, results = {}, []
        for concurrency in CONCURRENCY:
            rates[concurrency], results = throughput(client, images, concurrency)
    finally:
        stop(pgid)
    return Measured(engine, startup, rss.stop(), rates, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model directory (default: the demo's production model)")
    parser.add_argument("--images", type=int, default=120)
    args = parser.parse_args()
    model = find_model(args.model)
    WORK.mkdir(parents=True, exist_ok=True)
    chosen = list(digits(model.held_out[: args.images])) if model.held_out else list(digits())[-args.images :]
    images, labels = [encode_png(digit.image) for digit in chosen], [digit.label for digit in chosen]
    old_engine()  # built before any clock starts
    state = WORK / "server.json"

    def start_new() -> tuple[int, str]:
        info = start_local_server(model.path, state, ready_timeout_s=READY_S)
        return info.pid, info.base_url

    def start_previous() -> tuple[int, str]:
        proc, url = start_old(model.path, free_port(), WORK / "transformers-serve.log")
        return proc.pid, url

    load_before = os.getloadavg()
    runs = [
        measure("vLLM", start_new, lambda _: stop_local_server(state), model, images),
        measure("transformers serve", start_previous, stop_group, model, images),
    ]
    report(model, runs, labels, load_before)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def report(model: Model, runs: list[Measured], labels: list[str], load_before: tuple[float, ...]) -> None:
    new, old = runs
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC | {os.cpu_count()} CPUs | load average before {load_before[0]:.2f}"
        f", after {os.getloadavg()[0]:.2f}"
    )
    print(f"model: {model.source}\n{len(labels)} digits, the same images and client for both engines\n")
    print("| engine | start-up s | peak RSS MiB | images/s c=1 | images/s c=8 | accuracy | statuses |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        correct = sum(r.label == label for r, label in zip(run.results, labels, strict=True))
        statuses = {s: sum(r.status == s for r in run.results) for s in ("ok", "invalid", "failed")}
        print(
            f"| {run.engine} | {run.startup_s:.1f} | {run.peak_rss_mib:.0f} | {run.rates[1]:.2f} | {run.rates[8]:.2f} "
            f"| {correct}/{len(labels)} | {statuses} |"
        )
    same = sum(a.label == b.label for a, b in zip(new.results, old.results, strict=True))
    speedup = ", ".join(f"c={c}: {new.rates[c] / old.rates[c]:.1f}x" for c in CONCURRENCY)
    print(f"\nsame label from both engines: {same}/{len(labels)}; vLLM / transformers serve: {speedup}")


if __name__ == "__main__":
    main()
