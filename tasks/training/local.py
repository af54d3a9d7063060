"""The local training backend: the shipped entry script (include/training/launch.py) as a subprocess, on the tiny
LLaVA-NeXT built offline from the dataset's own words, with its output streamed line by line into the task log.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import time
from typing import Any

from airflow.sdk import XComArg, task

from tasks.common.processes import stop_group
from tasks.common.runtimes import runtime_executable
from tasks.common.settings import REPO_ROOT
from tasks.common.storage import local_path
from tasks.costs.pricing import hourly_price
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import TINY_GEOMETRY
from tasks.records.dataset import DatasetRelease
from tasks.training.plan import ENTRY_POINT, TRAINING_SOURCE_DIR, Resources, TrainingOutcome, TrainingPlan, script_flags

LOCAL = "local"  # region and instance type of the local backend in the price table
TAIL_LINES = 40
log = logging.getLogger(__name__)
# The tiny model on 2 CPU cores: fp32 (bf16 on CPU is >2x slower), no checkpointing of activations, a large learning
# rate and batch. On the curated digits (1,259 train / 359 test): 10 epochs 94.7%, 15 epochs 97.2% (600 steps);
# batch 16 reached 98.0% but costs twice the time per epoch; lr 2e-3 diverged to 84%.
LOCAL_HYPERPARAMETERS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "num_train_epochs": 15,
    "per_device_train_batch_size": 32,
    "bf16": False,
    "gradient_checkpointing": False,
    "eval_strategy": "no",
    "save_steps": 100,
    "logging_steps": 10,
    "eval_batch_size": 64,
}

PREPARE_DOC = """
Builds the offline tiny LLaVA-NeXT (small Llama + CLIP, vocabulary from the dataset's prompt and answers) into
`models/<version>/base_model/`, or uses the `base_model` param's directory. Reuses a complete earlier build.
"""
TRAIN_DOC = """
Runs `include/training/launch.py` as a subprocess; its output streams into this log. `local_processes` >= 2 runs
accelerate + DeepSpeed ZeRO-3 on CPU. A retry resumes from the newest checkpoint in `models/<version>/checkpoints/`.
**Runbook** — **fails with `training exited with N`**: the log ends with the script's last lines (out of memory, a bad
hyperparameter); fix it and clear the task, which resumes from the newest checkpoint.
"""


class LocalTraining:
    """The tiny LLaVA-NeXT on this machine's CPUs: everything under `models/<version>/`."""

    name = LOCAL
    geometry = TINY_GEOMETRY
    hyperparameters = LOCAL_HYPERPARAMETERS
    default_base_model = ""  # built from the dataset's words by prepare_training
    shared_checkpoints = False  # models/<version>/checkpoints/: a retry of the run resumes them

    def resources(self, params: dict[str, Any]) -> Resources:
        return Resources(LOCAL, 1, False, 0, LOCAL)

    def size(
        self, hyperparameters: dict[str, Any], resources: Resources, dataset: DatasetRelease, params: dict[str, Any]
    ) -> tuple[dict[str, Any], None]:
        """Not sized: the tiny model trains in minutes and has no MaxRuntime to fit."""
        return hyperparameters, None

    def artifact_uris(self, model_root: str, job_name: str) -> tuple[str, str]:
        return f"{model_root}/model", model_root

    def train(self, plan: XComArg, pool: str) -> XComArg:
        @task(task_id="prepare_training", doc_md=PREPARE_DOC)
        def prepare_training(plan: dict[str, Any]) -> str:
            return prepare_base_model(TrainingPlan.from_dict(plan))

        @task(task_id="train", pool=pool, doc_md=TRAIN_DOC)
        def train(plan: dict[str, Any], base_model: str) -> dict[str, Any]:
            return train_locally(TrainingPlan.from_dict(plan), base_model, log).to_dict()

        return train(plan, prepare_training(plan))


def tiny_model_corpus(taxonomy_name: str, prompt: str) -> list[str]:
    """Every text the tiny model must tokenise: the dataset's prompt, each label and each answer."""
    taxonomy = load_taxonomy(taxonomy_name)
    return [prompt, *taxonomy.labels, *(taxonomy.answer(label) for label in taxonomy.labels)]


def prepare_base_model(plan: TrainingPlan) -> str:
    """The base model directory: the one the params name, or a tiny LLaVA-NeXT built into `models/<version>/`.

    Built by the training runtime (torch and transformers live there, not in Airflow's environment)."""
    if plan.base_model:
        return plan.base_model
    out_dir = local_path(plan.model_root) / "base_model"
    corpus = json.dumps(tiny_model_corpus(plan.taxonomy, plan.prompt))
    argv = [runtime_executable("training"), "-m", "tasks.model.tiny_model", str(out_dir), "--corpus-json", corpus]
    run_streaming(argv, {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}, log, what="the tiny model build")
    return str(out_dir)


def training_command(plan: TrainingPlan, base_model: str) -> tuple[list[str], dict[str, str]]:
    """launch.py with explicit paths, as SageMaker would run it, plus the environment that picks the launcher.

    launch.py reads the process count from SM_NUM_GPUS: 0 runs train.py in this process; 2 or more run accelerate
    with the ZeRO-3 config, one CPU process each (DeepSpeed's CPU accelerator, gloo).
    """
    output = local_path(plan.output_uri)
    argv = [
        runtime_executable("training"),
        str(TRAINING_SOURCE_DIR / ENTRY_POINT),
        *("--model_id", base_model),
        *("--dataset_path", str(local_path(plan.dataset_uri))),
        *("--model_dir", str(local_path(plan.model_uri))),
        *("--output_data_dir", str(output)),
        *("--checkpoint_dir", str(local_path(plan.checkpoint_uri))),
        *script_flags(plan.hyperparameters),
    ]
    processes = plan.local_processes if plan.local_processes >= 2 else 0
    env = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["SM_NUM_GPUS"] = str(processes)
    if processes:
        env["DS_ACCELERATOR"] = "cpu"
    return argv, env


def run_streaming(argv: list[str], env: dict[str, str], log: logging.Logger, *, what: str = "training") -> None:
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
            stop_group(proc.pid)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode}; last lines:\n" + "\n".join(tail))


def train_locally(plan: TrainingPlan, base_model: str, log: logging.Logger) -> TrainingOutcome:
    """Train (resuming from the newest checkpoint of an earlier try) and return what it took."""
    argv, env = training_command(plan, base_model)
    log.info("Training %s: %s", plan.version, " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(argv))
    started = time.monotonic()
    run_streaming(argv, env, log)
    wall = time.monotonic() - started
    summary = json.loads(local_path(plan.summary_uri).read_text(encoding="utf-8"))
    return TrainingOutcome(
        job_name=plan.job_name,
        region=LOCAL,
        instance_type=LOCAL,
        instance_count=1,
        spot=False,
        billable_seconds=round(wall, 2),
        price_per_hour_usd=hourly_price(LOCAL, LOCAL, "training"),
        train_seconds=float(summary["train_seconds"]),
        model_uri=plan.model_uri,
        output_uri=plan.output_uri,
    )
