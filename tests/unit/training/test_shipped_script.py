"""What SageMaker hands the shipped scripts: string hyperparameters, SM_* paths, a GPU count, leftover checkpoints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.training import plan, sagemaker

TRAINING_DIR = plan.TRAINING_SOURCE_DIR


def load_script(name: str):
    """The scripts ship as loose files, not as a package: import them the way the container runs them."""
    spec = importlib.util.spec_from_file_location(f"shipped_{name}", TRAINING_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_script("train")
launch = load_script("launch")


def test_the_shipped_script_writes_the_names_the_pipeline_reads():
    """train.py cannot import the package (it ships alone), so its copies of the shared names are checked here."""
    assert (train.PREDICTIONS_FILE, train.SUMMARY_FILE) == (plan.PREDICTIONS_FILE, plan.SUMMARY_FILE)
    assert train.SAGEMAKER_CHECKPOINT_DIR == sagemaker.SAGEMAKER_CHECKPOINT_DIR
    assert train.EVALUATION_DIR == plan.EVALUATION_DIR
    assert train.parse_args(["--dataset_path", "d", "--model_dir", "m"]).model_id == sagemaker.PRODUCTION_BASE_MODEL
    assert train.BASE_MODEL_REVISION == sagemaker.PRODUCTION_BASE_MODEL_REVISION


def test_the_base_model_is_pinned_and_trains_with_the_shipped_chat_template():
    """TRL's assistant-only loss needs the exact template it knows; the shipped file is it, whatever the Hub has."""
    from trl.chat_template_utils import llava_next_chat_template  # what get_training_chat_template compares with

    args = train.parse_args(["--dataset_path", "d", "--model_dir", "m"])
    assert args.model_revision == "52320fb52229c8d942b1dcb8b63b3dc8087bc83b"
    shipped = Path(args.chat_template).read_text(encoding="utf-8")
    assert Path(args.chat_template).parent == TRAINING_DIR and shipped == llava_next_chat_template
    local = train.parse_args(["--dataset_path", "d", "--model_dir", "m", "--model_id", "/models/tiny"])
    assert (local.model_revision, local.chat_template) == (None, None)  # a local model keeps its own template


@pytest.fixture
def sagemaker_env(monkeypatch, tmp_path):
    paths = {
        "SM_CHANNEL_TRAIN": tmp_path / "data",
        "SM_MODEL_DIR": tmp_path / "model",
        "SM_OUTPUT_DATA_DIR": tmp_path / "output",
    }
    for name, path in paths.items():
        monkeypatch.setenv(name, str(path))
    return paths


def test_defaults_are_the_seed_hyperparameters_and_sagemaker_paths(sagemaker_env):
    args = train.parse_args([])
    assert (args.learning_rate, args.num_train_epochs, args.warmup_ratio, args.weight_decay) == (2e-5, 20, 0.03, 0)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.save_steps) == (1, 1, 100)
    assert args.bf16 is True and args.gradient_checkpointing is True
    assert args.model_id == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert args.dataset_path == str(sagemaker_env["SM_CHANNEL_TRAIN"])
    assert args.model_dir == str(sagemaker_env["SM_MODEL_DIR"])
    # Not SM_OUTPUT_DATA_DIR (/opt/ml/output/data, uploaded as one output.tar.gz): under the model dir, uploaded
    # uncompressed with the model (CompressionType NONE), where the pipeline locates it from ModelArtifacts.
    assert args.output_data_dir == str(sagemaker_env["SM_MODEL_DIR"] / "evaluation")
    assert args.checkpoint_dir == "/opt/ml/checkpoints"  # synced to S3 by SageMaker: what spot restarts resume from


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("True", True), ("false", False), ("FALSE", False)])
def test_booleans_parse_from_strings(sagemaker_env, text, expected):
    args = train.parse_args(["--bf16", text, "--gradient_checkpointing", text])
    assert args.bf16 is expected and args.gradient_checkpointing is expected


def test_a_mistyped_boolean_is_an_error_not_a_silent_true(sagemaker_env):
    with pytest.raises(SystemExit):
        train.parse_args(["--bf16", "ture"])


def test_outside_sagemaker_paths_are_required_and_checkpoints_stay_under_the_output(monkeypatch, tmp_path):
    for name in ("SM_CHANNEL_TRAIN", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        train.parse_args([])
    args = train.parse_args(["--dataset_path", "d", "--model_dir", str(tmp_path / "m")])
    assert args.output_data_dir == str(tmp_path / "m")
    assert args.checkpoint_dir == str(tmp_path / "m" / "checkpoints")


def test_resumes_from_the_newest_complete_checkpoint(tmp_path):
    for step, complete in [(50, True), (100, True), (150, False)]:  # 150 was cut short by a spot interruption
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-900-tmp").mkdir()
    assert train.newest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"
    assert train.newest_checkpoint(tmp_path / "missing") is None


def test_one_gpu_runs_train_py_directly():
    assert launch.command(["--bf16", "true"], 1) == [sys.executable, str(TRAINING_DIR / "train.py"), "--bf16", "true"]


def test_several_gpus_go_through_accelerate_with_zero3_config():
    command = launch.command(["--max_steps", "5"], 4)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "4"
    assert Path(command[command.index("--config_file") + 1]) == TRAINING_DIR / "accelerate_zero3.yaml"
    assert Path(command[command.index("--deepspeed_config_file") + 1]) == TRAINING_DIR / "ds_zero3.json"
    assert command[-3:] == [str(TRAINING_DIR / "train.py"), "--max_steps", "5"]


def test_gpu_count_comes_from_sagemaker(monkeypatch):
    monkeypatch.setenv("SM_NUM_GPUS", "8")
    assert launch.process_count() == 8


def test_several_instances_run_one_launcher_per_host_coordinated_by_the_first(monkeypatch):
    monkeypatch.setenv("SM_HOSTS", '["algo-1", "algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    command = launch.command(["--max_steps", "5"], 8, *launch.cluster())
    flags = dict(zip(command[3:-3:2], command[4:-3:2], strict=True))
    assert (flags["--num_processes"], flags["--num_machines"], flags["--machine_rank"]) == ("16", "2", "1")
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("algo-1", "29500")


def test_one_gpu_on_each_of_several_instances_still_goes_through_accelerate():
    command = launch.command([], 1, ["algo-1", "algo-2"], "algo-1")
    assert command[command.index("--num_processes") + 1] == "2" and command[command.index("--machine_rank") + 1] == "0"


def test_intermediate_checkpoints_have_no_gathered_16bit_copy():
    """ds_zero3.json: a checkpoint is DeepSpeed's sharded state only; train.save_final_model gathers for the model."""
    config = json.loads((TRAINING_DIR / "ds_zero3.json").read_text())
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is False


class FakeZeroConfig:
    gather_16bit_weights_on_model_save = False


class FakeEngine:
    """The parts of a DeepSpeed engine the save logic reads (deepspeed/runtime/engine.py:1654-1655)."""

    def __init__(self):
        self._config = SimpleNamespace(zero_config=FakeZeroConfig())

    def zero_gather_16bit_weights_on_model_save(self):
        return self._config.zero_config.gather_16bit_weights_on_model_save


def zero3_trainer(monkeypatch, tmp_path, calls):
    trainer = object.__new__(train.ZeroCheckpointTrainer)  # only the attributes the save logic reads
    trainer.model_wrapped = FakeEngine()
    trainer.is_deepspeed_enabled = True
    trainer.args = SimpleNamespace(save_only_model=False, should_save=True, output_dir=str(tmp_path))
    monkeypatch.setattr(train, "is_deepspeed_zero3_enabled", lambda: True)
    monkeypatch.setattr(trainer, "_save", lambda out, state_dict=None: calls.append(("_save", out, state_dict)))

    def parent_save_model(self, output_dir=None, _internal_call=False):
        gathered = self.model_wrapped.zero_gather_16bit_weights_on_model_save()
        calls.append(("save_model", output_dir, _internal_call, gathered))

    monkeypatch.setattr(train.SFTTrainer, "save_model", parent_save_model)
    return trainer


def test_a_checkpoint_saves_config_and_processor_and_leaves_the_sharded_state_to_one_save_checkpoint(
    monkeypatch, tmp_path
):
    calls = []
    trainer = zero3_trainer(monkeypatch, tmp_path, calls)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "model.safetensors").write_bytes(b"")  # the empty state dict's dummy file
    trainer.save_model(str(tmp_path / "checkpoint-2"), _internal_call=True)  # as _save_checkpoint calls it
    assert calls == [("_save", str(tmp_path / "checkpoint-2"), {})]  # no gather, no engine.save_checkpoint here
    assert not (tmp_path / "checkpoint-2" / "model.safetensors").exists()


def test_the_final_save_alone_gathers_the_16bit_weights(monkeypatch, tmp_path):
    calls = []
    trainer = zero3_trainer(monkeypatch, tmp_path, calls)
    train.save_final_model(trainer, str(tmp_path / "model"))
    assert calls == [("save_model", str(tmp_path / "model"), False, True)]  # gathered during this save
    assert trainer.model_wrapped.zero_gather_16bit_weights_on_model_save() is False  # and off again after


def test_without_zero3_saves_are_transformers_own(monkeypatch, tmp_path):
    calls = []
    trainer = zero3_trainer(monkeypatch, tmp_path, calls)
    trainer.is_deepspeed_enabled = False  # one process or plain DDP: each checkpoint keeps model.safetensors
    trainer.save_model(str(tmp_path / "checkpoint-2"), _internal_call=True)
    train.save_final_model(trainer, str(tmp_path / "model"))
    assert [call[:3] for call in calls] == [
        ("save_model", str(tmp_path / "checkpoint-2"), True),
        ("save_model", str(tmp_path / "model"), False),
    ]


def test_the_training_log_says_step_epoch_loss_and_an_eta():
    """Issue 24: the log showed loss dicts with a fractional epoch only; now each logging step says how far."""
    state = SimpleNamespace(global_step=120, max_steps=600, epoch=3.0, num_train_epochs=15, is_world_process_zero=True)
    line = train.progress_line(state, 0.42101, elapsed_s=90.0)
    assert line == "step 120/600 (20%) · epoch 3.00/15 · loss 0.4210 · 0:01:30 elapsed · ETA 0:06:00"
    # a resumed run paces on its own steps: 20 steps in 90 s since step 100, 480 left
    assert train.progress_line(state, 0.42, 90.0, first_step=100).endswith("ETA 0:36:00")
    assert train.progress_line(SimpleNamespace(**vars(state) | {"global_step": 0}), 1.0, 0.0).endswith("ETA unknown")


def test_the_progress_callback_logs_on_logging_steps_of_the_main_process(caplog):
    ticks = iter([10.0, 40.0])
    callback = train.ProgressLog(clock=lambda: next(ticks))
    state = SimpleNamespace(global_step=0, max_steps=4, epoch=0.0, num_train_epochs=2, is_world_process_zero=True)
    callback.on_train_begin(None, state, None)
    state.global_step, state.epoch = 1, 0.5
    with caplog.at_level("INFO", logger="train"):
        callback.on_log(None, state, None, logs={"learning_rate": 1e-3})  # no loss: not a training log
        callback.on_log(None, state, None, logs={"loss": 2.5, "epoch": 0.5})
        callback.on_log(
            None, SimpleNamespace(**vars(state) | {"is_world_process_zero": False}), None, logs={"loss": 2.5}
        )
    assert [r.getMessage() for r in caplog.records] == [
        "step 1/4 (25%) · epoch 0.50/2 · loss 2.5000 · 0:00:30 elapsed · ETA 0:01:30"
    ]
