"""Train the tiny LLaVA-NeXT on all scikit-learn digits with the shipped training script; print accuracy and time.

Usage: python -m bench.tiny_digits_training [WORK_DIR] [-- extra train.py flags]
Accuracy is measured on the held-out test split through tasks.model.taxonomy's answer parser (the project's one parser).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from support.digits import digits_dataset_dict, tiny_digits_model
from tasks.common.runtimes import runtime_executable
from tasks.model.taxonomy import load_taxonomy

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO_ROOT / "include" / "training" / "train.py"
# Settings that reach >= 0.95 on 2 CPU cores in a few minutes (fp32: bf16 is >2x slower on CPU).
CPU_FLAGS = [
    "--bf16",
    "false",
    "--gradient_checkpointing",
    "false",
    "--learning_rate",
    "1e-3",
    "--per_device_train_batch_size",
    "32",
    "--num_train_epochs",
    "10",
    "--warmup_ratio",
    "0.03",
    "--save_steps",
    "1000",
    "--eval_batch_size",
    "64",
]


def main(argv: list[str]) -> None:
    work = Path(argv[0] if argv and argv[0] != "--" else ".data/bench/tiny_digits").resolve()
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    if not (work / "data").exists():
        digits_dataset_dict(work / "data")
    model = tiny_digits_model(work / "model")
    out = work / "run"
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # measure a fresh run, not a resumed one
    command = [runtime_executable("training"), str(TRAIN_SCRIPT), "--model_id", str(model)]  # as local training
    command += ["--dataset_path", str(work / "data"), "--model_dir", str(out)]
    command += ["--checkpoint_dir", str(work / "checkpoints"), *CPU_FLAGS, *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started

    taxonomy = load_taxonomy("digits")
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    correct = sum(taxonomy.parse_answer(row["answer"]) == row["label"] for row in rows)
    invalid = sum(taxonomy.parse_answer(row["answer"]) is None for row in rows)
    summary = json.loads((out / "train_summary.json").read_text())
    seconds, steps = summary["train_seconds"], summary["global_step"]
    print(
        f"accuracy {correct / len(rows):.4f} ({correct}/{len(rows)}, {invalid} invalid) | "
        f"train {seconds:.1f} s, {steps} steps, {seconds / max(steps, 1):.3f} s/step | "
        f"generation {summary['generation_seconds']:.1f} s | wall {wall:.1f} s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
