"""The local backend's trainer: the shipped entry script (include/training/launch.py) as a subprocess, on the tiny
LLaVA-NeXT built offline from the dataset's own words, with its output streamed line by line into the task log.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.common import storage
from tasks.costs.pricing import hourly_price
from tasks.model.taxonomy import load_taxonomy
from tasks.training.plan import ENTRY_POINT, TRAINING_SOURCE_DIR, TrainingOutcome, TrainingPlan, script_flags

LOCAL = "local"  # region and instance type of the local backend in the price table
TAIL_LINES = 40


def local_dir(uri: str) -> Path:
    """The directory behind a file:// URI: the local trainer reads and writes plain files."""
    path = storage.storage_path(uri)
    if path.protocol != "file":
        raise ValueError(f"the local backend trains from and into file:// storage; got {uri!r}")
    return Path(path.path)


def tiny_model_corpus(taxonomy_name: str, prompt: str) -> list[str]:
    """Every text the tiny model must tokenise: the dataset's prompt, each label and each answer."""
    taxonomy = load_taxonomy(taxonomy_name)
    return [prompt, *taxonomy.labels, *(taxonomy.answer(label) for label in taxonomy.labels)]


def prepare_base_model(plan: TrainingPlan) -> str:
    """The base model directory: the one the params name, or a tiny LLaVA-NeXT built into `models/<version>/`."""
    if plan.base_model:
        return plan.base_model
    from tasks.model.tiny_model import build_tiny_llava

    return str(
        build_tiny_llava(local_dir(plan.model_root) / "base_model", tiny_model_corpus(plan.taxonomy, plan.prompt))
    )


def training_command(plan: TrainingPlan, base_model: str) -> tuple[list[str], dict[str, str]]:
    """launch.py with explicit paths, as SageMaker would run it, plus the environment that picks the launcher.

    launch.py reads the process count from SM_NUM_GPUS: 0 runs train.py in this process; 2 or more run accelerate
    with the ZeRO-3 config, one CPU process each (DeepSpeed's CPU accelerator, gloo).
    """
    output = local_dir(plan.output_uri)
    argv = [
        sys.executable,
        str(TRAINING_SOURCE_DIR / ENTRY_POINT),
        *("--model_id", base_model),
        *("--dataset_path", str(local_dir(plan.dataset_uri))),
        *("--model_dir", str(local_dir(plan.model_uri))),
        *("--output_data_dir", str(output)),
        *("--checkpoint_dir", str(local_dir(plan.checkpoint_uri))),
        *script_flags(plan.hyperparameters),
    ]
    processes = plan.local_processes if plan.local_processes >= 2 else 0
    env = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["SM_NUM_GPUS"] = str(processes)
    if processes:
        env["DS_ACCELERATOR"] = "cpu"
    return argv, env


def run_streaming(argv: list[str], env: dict[str, str], log: logging.Logger) -> None:
    """Run `argv`, logging each output line as it comes; a failure raises with the last lines.

    The child runs in its own process group, so an interrupted task (timeout, mark-failed) takes accelerate's worker
    processes down with it instead of leaving them training.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log.info("%s", line)
        proc.wait()
    finally:
        if proc.poll() is None:
            _stop_group(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with {proc.returncode}; last lines:\n" + "\n".join(tail))


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def train_locally(plan: TrainingPlan, base_model: str, log: logging.Logger) -> TrainingOutcome:
    """Train (resuming from the newest checkpoint of an earlier try) and return what it took."""
    argv, env = training_command(plan, base_model)
    log.info("Training %s: %s", plan.version, " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(argv))
    started = time.monotonic()
    run_streaming(argv, env, log)
    wall = time.monotonic() - started
    summary = json.loads(local_dir(plan.summary_uri).read_text(encoding="utf-8"))
    return TrainingOutcome(
        job_name=plan.job_name,
        region=LOCAL,
        instance_type=LOCAL,
        instance_count=1,
        spot=False,
        billable_seconds=round(wall, 2),
        price_per_hour_usd=hourly_price(LOCAL, LOCAL, "training"),
        train_seconds=float(summary["train_seconds"]),
    )
