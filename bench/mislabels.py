"""Mislabel flags on the demo data: curate the 1,797 digits, flip 3% of the training labels on purpose, fine-tune
the tiny LLaVA-NeXT with the local backend's hyperparameters (include/training/train.py, as finetune_llava runs it),
flag likely mislabels from its label scores and print precision and recall against the flipped rows.

Usage: python -m bench.mislabels [WORK_DIR] [--flip-fraction 0.03] [--seed 0]
Takes ~2-4 min on 2 idle cores (training dominates); far longer on a loaded machine.

Measured 2 December 2026 on a loaded machine, from this bench's trained model (its step-600 checkpoint, scored by
train.py; 1,259 train rows, 38 flipped; 15 epochs, 96.9% held-out accuracy): 11 flagged, all
flipped (precision 1.00, recall 0.29, each suggestion the true digit); 1 of 179 validation rows (none flipped)
flagged. The low recall is memorisation: the train rows are scored by the model that trained on their flipped
labels (median given-label probability of a flipped row 0.32). Out-of-fold scores (the rule's textbook input) give
0.80 / 0.76 on the same data (tests/unit/training/test_mislabels.py, k-NN).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support.digits import curated_digits, tiny_digits_model
from tasks.model.taxonomy import load_taxonomy
from tasks.training.local import LOCAL_HYPERPARAMETERS
from tasks.training.mislabels import SCORES_FILE, flag_mislabels
from tasks.training.plan import TRAINING_SOURCE_DIR, script_flags


def flip_labels(dataset: Path, out: Path, fraction: float, seed: int) -> set[str]:
    """Copy the DatasetDict with `fraction` of its training rows given another label (answer text too); returns
    the flipped rows' sha256."""
    from datasets import load_from_disk

    taxonomy = load_taxonomy("digits")
    splits = load_from_disk(str(dataset))
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(splits["train"])), round(len(splits["train"]) * fraction)))
    wrong = {
        i: rng.choice([label for label in taxonomy.labels if label != splits["train"][i]["label"]]) for i in flipped
    }

    def relabel(row: dict, index: int) -> dict:
        if index not in wrong:
            return row
        messages = row["messages"]
        messages[-1]["content"][0]["text"] = taxonomy.answer(wrong[index])
        return {**row, "label": wrong[index], "messages": messages}

    splits["train"] = splits["train"].map(relabel, with_indices=True)
    splits.save_to_disk(str(out))
    return {splits["train"][i]["sha256"] for i in flipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work_dir", nargs="?", type=Path)
    parser.add_argument("--flip-fraction", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-mislabels-"))
    curated = curated_digits(work / "curated", 1797)
    flipped = flip_labels(curated, work / "flipped", args.flip_fraction, args.seed)
    model = tiny_digits_model(work / "base_model")
    command = [
        sys.executable,
        str(TRAINING_SOURCE_DIR / "train.py"),
        "--model_id",
        str(model),
        "--dataset_path",
        str(work / "flipped"),
        "--model_dir",
        str(work / "model"),
        "--output_data_dir",
        str(work / "output"),
        "--checkpoint_dir",
        str(work / "checkpoints"),
        *script_flags(LOCAL_HYPERPARAMETERS),
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, cwd=work)
    wall = time.perf_counter() - started
    scores = [json.loads(line) for line in (work / "output" / SCORES_FILE).read_text().splitlines()]
    flags = flag_mislabels(scores)
    summary = json.loads((work / "output" / "train_summary.json").read_text())
    train_flags = {flag["sha256"] for flag in flags if flag["split"] == "train"}
    hits = len(train_flags & flipped)
    print(
        f"train rows {sum(row['split'] == 'train' for row in scores)}, flipped {len(flipped)} "
        f"({args.flip_fraction:.0%}), flagged {len(train_flags)}"
    )
    print(
        f"precision {hits / max(len(train_flags), 1):.3f} ({hits}/{len(train_flags)}), "
        f"recall {hits / len(flipped):.3f} ({hits}/{len(flipped)})"
    )
    validation = [flag for flag in flags if flag["split"] == "validation"]
    print(f"validation (no flips): {len(validation)} flagged of {sum(r['split'] == 'validation' for r in scores)}")
    print(
        f"train {summary['train_seconds']} s, scoring {summary['scoring_seconds']} s "
        f"({summary['scored_rows']} rows), whole script {wall:.0f} s; work dir {work}"
    )


if __name__ == "__main__":
    main()
