"""The shipped training script, run as SageMaker runs it (a subprocess with string flags) on the tiny model and a
digits drop curated by tasks/curation/curate.py (what finetune_llava trains on).

Trains a few steps, checks what it leaves behind, then runs again with more steps and checks it resumed from the
checkpoint instead of starting over: the managed-spot restart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from datasets import load_from_disk
from safetensors import safe_open

from support.digits import curated_digits, tiny_digits_model
from tasks.common.runtimes import runtime_executable

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "include" / "training" / "train.py"
LAUNCH_SCRIPT = REPO_ROOT / "include" / "training" / "launch.py"
CPU_FLAGS = ["--bf16", "false", "--gradient_checkpointing", "false", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("training")
    return tiny_digits_model(root / "model"), curated_digits(root / "data", 60)


def run_training(model: Path, data: Path, work: Path, *flags: str, script: Path = TRAIN_SCRIPT, **env: str) -> str:
    command = [
        runtime_executable("training"),  # the environment include/training/requirements.txt builds, as the container
        str(script),
        "--model_id",
        str(model),
        "--dataset_path",
        str(data),
        "--model_dir",
        str(work / "model"),
        "--output_data_dir",
        str(work / "output"),
        "--checkpoint_dir",
        str(work / "checkpoints"),
        "--per_device_train_batch_size",
        "8",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        *CPU_FLAGS,
        *flags,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")} | {"HF_HUB_OFFLINE": "1", **env}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def weight_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Weight name -> shape of a saved model: the layout a serving stack loads by name."""
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        return {name: weights.get_slice(name).get_shape() for name in weights.keys()}  # noqa: SIM118


def unpadded_label_probabilities(model_dir: Path, row: dict, labels: list[str]) -> list[float]:
    """The probability of each label's answer for one row, from one unpadded forward per label over full logits:
    the plain computation the batched, left-padded, logits-trimmed scoring must agree with."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl.data_utils import prepare_multimodal_messages

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    prompt = [m for m in row["messages"] if m["role"] != "assistant"]

    def ids(messages: list[dict], **kwargs) -> dict:
        return processor.apply_chat_template(
            [prepare_multimodal_messages(messages, images=row["images"])],
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"add_special_tokens": False},
            **kwargs,
        )

    start = ids(prompt, add_generation_prompt=True)["input_ids"].shape[1]
    likelihoods = []
    for label in labels:
        answer = {"role": "assistant", "content": [{"type": "text", "text": f"this is a photo of {label}."}]}
        inputs = ids([*prompt, answer])
        with torch.no_grad():
            logprobs = model(**inputs).logits[0, :-1].log_softmax(-1)
        targets = inputs["input_ids"][0, 1:]
        likelihoods.append(logprobs[start - 1 :].gather(-1, targets[start - 1 :, None]).sum())
    return torch.stack(likelihoods).softmax(-1).tolist()


def check_label_scores(work: Path, data: Path) -> None:
    """Every train and validation row has a probability per label, equal to the plain per-label computation."""
    splits = load_from_disk(str(data))
    scores = [json.loads(line) for line in (work / "output" / "label_scores.jsonl").read_text().splitlines()]
    labels = sorted(set(splits["train"]["label"]))
    for name in ("train", "validation"):
        rows = [row for row in scores if row["split"] == name]
        assert [row["index"] for row in rows] == list(range(len(splits[name])))
        assert [row["sha256"] for row in rows] == splits[name]["sha256"]
        assert [row["label"] for row in rows] == splits[name]["label"]
        assert all(list(row["probabilities"]) == labels for row in rows)
        assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-4 for row in rows)
    written = next(row for row in scores if row["split"] == "validation" and row["index"] == 1)
    expected = unpadded_label_probabilities(work / "model", splits["validation"][1], labels)
    assert list(written["probabilities"].values()) == pytest.approx(expected, abs=1e-4)


def test_trains_writes_model_and_predictions_then_resumes(inputs, tmp_path):
    model, data = inputs
    test_split = load_from_disk(str(data))["test"]

    first_log = run_training(model, data, tmp_path, "--max_steps", "2")
    assert "Starting fresh" in first_log
    assert "INFO train: step 1/2 (50%) · epoch " in first_log and " · ETA " in first_log  # the progress line
    assert "INFO train: step 2/2 (100%) · epoch " in first_log and "ETA 0:00:00" in first_log
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert weight_shapes(tmp_path / "model") == weight_shapes(model)  # the layout serving stacks expect
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "model" / name).is_file(), name
    lines = (tmp_path / "output" / "eval_predictions.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert [row["index"] for row in predictions] == list(range(len(test_split)))
    assert [row["label"] for row in predictions] == test_split["label"]
    assert [row["sha256"] for row in predictions] == test_split["sha256"]
    assert all(isinstance(row["answer"], str) and row["generation_seconds"] >= 0 for row in predictions)
    check_label_scores(tmp_path, data)
    first = json.loads((tmp_path / "output" / "train_summary.json").read_text())
    assert first["global_step"] == 2 and first["resumed_from"] is None and first["final_loss"] > 0
    assert first["args"]["bf16"] is False and first["args"]["assistant_only_loss"] is True

    second_log = run_training(model, data, tmp_path, "--max_steps", "4")
    resumed_from = tmp_path / "checkpoints" / "checkpoint-2"
    assert f"Resuming from {resumed_from}" in second_log
    second = json.loads((tmp_path / "output" / "train_summary.json").read_text())
    assert second["global_step"] == 4 and second["resumed_from"] == str(resumed_from)
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == [1, 2, 3, 4]  # steps 1-2 come from the first run's checkpoint: continued, not restarted


def same_weights(first: Path, second: Path) -> bool:
    """Whether two saved models hold the same tensors under the same names."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_resumed_run_continues_from_the_checkpoint_weights_not_the_base_model(inputs, tmp_path):
    """One step, checkpointed; then the same job again, resumed at that step: it adds no training (at most one more
    step at the linear schedule's zero learning rate: the Trainer checks max_steps only after a step), so the model
    it saves is the checkpoint's. transformers 5.24 saves checkpoints under the Hub's weight names and its resume
    loaded them without converting back: every key missing or unexpected, and the run went on from the base weights.
    """
    model, data = inputs
    flags = ["--max_steps", "1", "--save_steps", "1", "--warmup_ratio", "0", "--eval_strategy", "no"]
    flags += ["--score_splits", "", "--max_new_tokens", "1"]  # no label scores, one-token answers: just faster
    run_training(model, data, tmp_path, *flags)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-1"
    assert not same_weights(checkpoint, model)  # the step trained: the checkpoint is not the base model

    log = run_training(model, data, tmp_path, *flags)
    assert f"Resuming from {checkpoint}" in log
    assert not same_weights(tmp_path / "model", model), "resumed from the base weights, not the checkpoint's"
    assert same_weights(tmp_path / "model", checkpoint)
    assert "missing keys" not in log and "unexpected keys" not in log


@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed JIT-builds a small C++ op on first use")
def test_launcher_runs_deepspeed_zero3_with_two_processes(inputs, tmp_path):
    """The multi-GPU production path (launch.py -> accelerate -> ZeRO-3), with two CPU processes standing in."""
    model, data = inputs
    log = run_training(
        model, data, tmp_path, "--max_steps", "2", script=LAUNCH_SCRIPT, SM_NUM_GPUS="2", DS_ACCELERATOR="cpu"
    )
    assert "accelerate.commands.launch" in log and "--num_processes 2" in log
    summary = json.loads((tmp_path / "output" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's sharded state
    predictions = (tmp_path / "output" / "eval_predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in predictions] == list(range(len(load_from_disk(str(data))["test"])))
    assert weight_shapes(tmp_path / "model") == weight_shapes(model)  # gathered from the shards, same layout
