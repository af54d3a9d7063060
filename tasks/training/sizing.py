"""How long a SageMaker fine-tuning takes and what its checkpoints weigh, from the dataset and a declared speed per
instance type: the plan is refused before anything is uploaded or paid for when it cannot finish in MaxRuntime.

A job that reaches MaxRuntimeInSeconds ends `Stopped` with no model (StoppingCondition docs), so this estimate is
what decides whether a run is worth starting at all. Its numbers are ASSUMPTIONS until measured on a real job (the
train log prints each logging step's time; replace the table's value with it):

- `step_seconds`: one optimizer step of LLaVA-NeXT 7B (7.57 B params), bf16, gradient checkpointing, ZeRO-3 across
  the instance's GPUs, at per-device batch 1 and ~1.2k image + ~0.1k text tokens per sample. On ml.g5.48xlarge
  (8x A10G, PCIe, no NVLink): ~8 FLOPs/param/token with recomputation = 1.4e14 FLOPs per GPU per step, ~3 s at
  ~45 TFLOPS; plus ZeRO-3's all-gathers (forward, recomputed forward) and gradient reduce-scatter, ~3 x 15 GB of
  bf16 per step over PCIe at an assumed ~8-10 GB/s bus bandwidth, only partly overlapped: 6 s. A100/H100 rows
  scale the same arithmetic with NVLink. Time per step is taken as linear in samples per GPU (batch x accumulation).
- `forward_seconds`: one forward pass of test-split generation; under ZeRO-3 each new token gathers every layer
  again, so it is communication-bound (15 GB all-gathered per pass).
- `score_seconds`: one row of train.py's label scoring (mislabel flags and calibration over `--score_splits`,
  every split by default), per GPU: its prompt + image run once, forward only, 2 FLOPs/param/token x ~1.3k tokens = 2e13
  FLOPs, ~0.45 s at ~45 TFLOPS on an A10G: 0.5 s; each label's own answer tokens (~`LABEL_TOKENS`) then run on
  the repeated cache. Each scoring batch pays two forwards' ZeRO-3 gathers (`forward_seconds`).
- `write_gb_per_s`: writing a checkpoint to the instance's local NVMe (all ranks together), which blocks training;
  SageMaker then uploads /opt/ml/checkpoints to S3 in the background.
- Fixed costs: container start, pip install of requirements.txt, ~15 GB hub download and the sharded load
  (`LOAD_SECONDS`); gathering the 16-bit weights for the final save (`GATHER_SECONDS`) plus writing them.
Several instances are assumed to step as fast as one (inter-node all-gathers over EFA are slower: an optimistic
assumption, stated so).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

PARAMS = 7.57e9  # llava-hf/llava-v1.6-mistral-7b-hf; any base model is sized as this one
GB = 1e9
# ZeRO-3 checkpoint (DeepSpeed save_checkpoint, summed over ranks): fp32 master weights 4 B + Adam's two moments
# 8 B = 12 B/param of optimizer state, plus the bf16 parameter partition 2 B/param. The gathered 16-bit copy
# (2 B/param more) is written only by the final save (include/training/ds_zero3.json, train.py).
CHECKPOINT_BYTES_PER_PARAM = 12 + 2
FINAL_MODEL_BYTES_PER_PARAM = 2
MODEL_STATE_BYTES_PER_PARAM = 18  # DeepSpeed's ZeRO-3 rule without offload: weights, grads, optimizer (÷ GPUs)
LOAD_SECONDS = 1200
GATHER_SECONDS = 120
CHECKPOINT_EVERY_SECONDS = 1800  # of training: a Stopped or interrupted job loses at most ~30 min of steps
DEFAULT_INSTANCE_TYPE = "ml.g5.48xlarge"
# The seed's 8 h: 10,000 curated images of the 26-label hotel taxonomy need ~5.6 h with the default 3 epochs
# (`llava-pipelines plan-training --images 10000`), headroom for a declared speed that proves optimistic.
DEFAULT_MAX_RUN_SECONDS = 8 * 3600
DEFAULT_MAX_WAIT_SECONDS = 16 * 3600  # managed spot: waiting for capacity + running; at least MaxRuntime
PROMPT_TOKENS, LABEL_TOKENS = 1300, 4  # per scored row: its prompt + image, and each label's own answer tokens
# train.py's defaults, used when the hyperparameters do not set them
SCRIPT_DEFAULTS = {
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": -1,
    "num_train_epochs": 20,
    "eval_batch_size": 8,
    "max_new_tokens": 16,
    "score_splits": "train,validation,test",
    "score_batch_size": 8,
}


@dataclass(frozen=True)
class InstanceSpeed:
    gpus: int
    gpu_memory_gib: float
    step_seconds: float
    forward_seconds: float
    score_seconds: float
    write_gb_per_s: float


INSTANCE_SPEEDS: dict[str, InstanceSpeed] = {
    "ml.g5.48xlarge": InstanceSpeed(8, 24, 6.0, 2.0, 0.5, 1.0),
    "ml.p4d.24xlarge": InstanceSpeed(8, 40, 1.5, 0.3, 0.15, 2.0),
    "ml.p4de.24xlarge": InstanceSpeed(8, 80, 1.5, 0.3, 0.15, 2.0),
    "ml.p5.48xlarge": InstanceSpeed(8, 80, 0.8, 0.2, 0.08, 4.0),
}


@dataclass(frozen=True)
class TrainingSize:
    """The sized plan, logged by `plan` and kept in the TrainingPlan."""

    instance_type: str
    instance_count: int
    train_examples: int
    test_examples: int
    global_batch: int
    steps: int
    step_seconds: float
    save_steps: int
    checkpoints: int
    checkpoint_gb: float
    final_model_gb: float
    model_states_per_gpu_gb: float
    estimated_seconds: int
    max_run_seconds: int
    parts: dict[str, int]  # where the estimated seconds go

    @property
    def estimated_hours(self) -> float:
        return self.estimated_seconds / 3600

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {seconds / 3600:.2f} h" for name, seconds in self.parts.items())
        return (
            f"{self.steps:,} steps ({self.train_examples:,} train examples, global batch {self.global_batch}) on "
            f"{self.instance_count} x {self.instance_type} at {self.step_seconds:g} s/step (declared): "
            f"~{self.estimated_hours:.1f} h of max_run_seconds={self.max_run_seconds} "
            f"({self.max_run_seconds / 3600:.1f} h) [{parts}]; checkpoints of {self.checkpoint_gb:.0f} GB "
            f"(optimizer state + bf16 partition, no gathered copy) every {self.save_steps} steps "
            f"(~{self.save_steps * self.step_seconds / 60:.0f} min), {self.checkpoints} in all; final model "
            f"{self.final_model_gb:.1f} GB; model states {self.model_states_per_gpu_gb:.1f} GB per GPU"
        )


def _int(hyperparameters: dict[str, Any], key: str) -> int:
    return int(float(hyperparameters.get(key, SCRIPT_DEFAULTS[key])))


def size_training(
    hyperparameters: dict[str, Any],
    *,
    instance_type: str,
    instance_count: int,
    train_examples: int,
    test_examples: int,
    max_run_seconds: int,
    splits: dict[str, int] | None = None,
    labels: int = 0,
) -> TrainingSize:
    """Steps, time, checkpoint size and interval of a training; AirflowFailException (one line: what would fit) when
    it cannot finish inside `max_run_seconds` or the instance type has no declared speed. `splits` (example count
    per split) and `labels` (the taxonomy's) size train.py's label-scoring pass over `score_splits`."""
    speed = INSTANCE_SPEEDS.get(instance_type)
    if speed is None:
        raise AirflowFailException(
            f"no declared seconds-per-step for {instance_type} (declared: {', '.join(INSTANCE_SPEEDS)}): add a "
            "measured row to INSTANCE_SPEEDS in tasks/training/sizing.py before training on it"
        )
    if train_examples <= 0:
        raise AirflowFailException("the dataset has no training examples")
    gpus = speed.gpus * instance_count
    per_device, accumulation = (
        _int(hyperparameters, "per_device_train_batch_size"),
        _int(hyperparameters, "gradient_accumulation_steps"),
    )
    global_batch = per_device * gpus * accumulation
    epochs = float(hyperparameters.get("num_train_epochs", SCRIPT_DEFAULTS["num_train_epochs"]))
    max_steps = _int(hyperparameters, "max_steps")
    steps_per_epoch = math.ceil(train_examples / global_batch)
    steps = max_steps if max_steps > 0 else math.ceil(epochs * steps_per_epoch)
    step_seconds = speed.step_seconds * per_device * accumulation
    save_steps = int(hyperparameters.get("save_steps") or max(1, round(CHECKPOINT_EVERY_SECONDS / step_seconds)))
    checkpoint_gb = CHECKPOINT_BYTES_PER_PARAM * PARAMS / GB
    final_gb = FINAL_MODEL_BYTES_PER_PARAM * PARAMS / GB
    write_seconds = checkpoint_gb / speed.write_gb_per_s
    checkpoints = steps // save_steps + (steps % save_steps != 0)  # the Trainer also saves at the last step
    batches = math.ceil(test_examples / (_int(hyperparameters, "eval_batch_size") * gpus))
    parts = {
        "load": LOAD_SECONDS,
        "train": round(steps * step_seconds),
        "checkpoints": round(checkpoints * write_seconds),
        "final save": round(GATHER_SECONDS + final_gb / speed.write_gb_per_s),
        "test generation": round(batches * (_int(hyperparameters, "max_new_tokens") + 1) * speed.forward_seconds),
    }
    scored_splits = str(hyperparameters.get("score_splits", SCRIPT_DEFAULTS["score_splits"])).split(",")
    scored = sum((splits or {}).get(name.strip(), 0) for name in scored_splits)
    if scored and labels:
        per_gpu = math.ceil(scored / gpus)
        gathers = math.ceil(per_gpu / _int(hyperparameters, "score_batch_size")) * 2 * speed.forward_seconds
        per_row = speed.score_seconds * (1 + labels * LABEL_TOKENS / PROMPT_TOKENS)
        parts["label scoring"] = round(per_gpu * per_row + gathers)
    size = TrainingSize(
        instance_type=instance_type,
        instance_count=instance_count,
        train_examples=train_examples,
        test_examples=test_examples,
        global_batch=global_batch,
        steps=steps,
        step_seconds=step_seconds,
        save_steps=save_steps,
        checkpoints=checkpoints,
        checkpoint_gb=round(checkpoint_gb, 1),
        final_model_gb=round(final_gb, 1),
        model_states_per_gpu_gb=round(MODEL_STATE_BYTES_PER_PARAM * PARAMS / gpus / GB, 1),
        estimated_seconds=sum(parts.values()),
        max_run_seconds=max_run_seconds,
        parts=parts,
    )
    if size.estimated_seconds > max_run_seconds:
        raise AirflowFailException(refusal(size, steps_per_epoch, write_seconds / save_steps))
    return size


def refusal(size: TrainingSize, steps_per_epoch: int, checkpoint_seconds_per_step: float) -> str:
    """One line: why the plan cannot finish, and what would (the most epochs or steps, or the max_run_seconds)."""
    from tasks.training.plan import MAX_RUN_SECONDS

    fixed = sum(seconds for name, seconds in size.parts.items() if name not in ("train", "checkpoints"))
    fitting_steps = max(
        0, math.floor((size.max_run_seconds - fixed) / (size.step_seconds + checkpoint_seconds_per_step))
    )
    fitting_epochs = fitting_steps // steps_per_epoch
    fits = [f"num_train_epochs <= {fitting_epochs}" if fitting_epochs else f"max_steps <= {fitting_steps}"]
    needed = math.ceil(size.estimated_seconds / 60) * 60
    if needed <= MAX_RUN_SECONDS:
        fits.append(f"max_run_seconds >= {needed}")
    scoring = size.parts.get("label scoring", 0)
    if scoring >= size.estimated_seconds - size.max_run_seconds:  # without the scoring pass it would fit
        fits.append(f"fewer --score_splits rows (label scoring is ~{scoring / 3600:.1f} h of it)")
    return (
        f"training plan refused before any job was created: {size.steps:,} steps on {size.instance_count} x "
        f"{size.instance_type} at {size.step_seconds:g} s/step need ~{size.estimated_hours:.1f} h, more than "
        f"max_run_seconds={size.max_run_seconds} ({size.max_run_seconds / 3600:.1f} h); what fits: " + " or ".join(fits)
    )
