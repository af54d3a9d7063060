"""deploy_endpoint and teardown_endpoint on the local backend through `bin/airflow dags test`: a really trained tiny
model is served and passes the smoke test; a killed server comes back on the recorded URL; a model the server cannot
load fails the deploy at once (no retries) and the previous server comes back on that URL too; teardown leaves no
process behind. (An untrained model no longer fails the smoke test: vLLM's label constraint makes it answer a label.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from support.digits import digits_dataset_dict, tiny_digits_model
from support.registry import register
from tasks.common.settings import load_settings
from tasks.common.storage import MODELS, SERVING, storage_path
from tasks.model.taxonomy import load_taxonomy
from tasks.serving.deployment import current_endpoint, endpoint_spec, resize_policy, smoke_image, smoke_test
from tasks.serving.local import LocalServing
from tasks.serving.local_server import local_server_status
from tests.integration.conftest import AirflowRunner
from tests.integration.test_local_server import group_gone

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
TAXONOMY = load_taxonomy("digits")
TRAIN_STEPS = "30"  # enough for the tiny model to answer "this is a photo of <digit>." (right or not)


@pytest.fixture(scope="module")
def runner(local_airflow: AirflowRunner, tmp_path_factory) -> AirflowRunner:
    """The session's Airflow, with a storage root of our own: the fine-tuning tests own the shared one's registry."""
    storage = tmp_path_factory.mktemp("deploy-storage")
    return AirflowRunner({**local_airflow.env, "PIPELINE_STORAGE_URI": storage.as_uri()})


@pytest.fixture(scope="module")
def storage(runner: AirflowRunner) -> Path:
    return Path(storage_path(runner.env["PIPELINE_STORAGE_URI"]).path)


@pytest.fixture(scope="module")
def models(storage: Path, tmp_path_factory) -> dict[str, Path]:
    """A tiny model trained for a few dozen steps with the shipped script, and a copy of the untrained one whose
    weights file was cut short (an interrupted copy)."""
    work = tmp_path_factory.mktemp("deploy-training")
    base, data = tiny_digits_model(work / "base"), digits_dataset_dict(work / "data", count=100)
    trained = storage / MODELS / "trained" / "model"
    command = [
        sys.executable,
        str(REPO_ROOT / "include" / "training" / "train.py"),
        "--model_id",
        str(base),
        "--dataset_path",
        str(data),
        "--model_dir",
        str(trained),
        "--output_data_dir",
        str(work / "out"),
        "--checkpoint_dir",
        str(work / "checkpoints"),
        "--max_steps",
        TRAIN_STEPS,
        "--eval_strategy",
        "no",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--save_steps",
        "1000",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")} | {"HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    broken = shutil.copytree(base, storage / MODELS / "broken" / "model")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    return {"trained": trained, "broken": broken}


def promote(storage: Path, version: str, model_dir: Path) -> None:
    """Registered as finetune_llava registers it: the model named relative to the storage root."""
    models = storage_path((storage / MODELS).as_uri())
    register(models, version, str(model_dir.relative_to(storage)), metrics={"accuracy": 1.0})


def servers_of(model_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if str(model_dir) in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


# Four vLLM start-ups (deploy, restart after kill -9, the broken model's failed one, rollback), about a minute each on
# 2 idle cores and three on a saturated machine: past the suite's 900 s default.
@pytest.mark.timeout(1800)
def test_deploy_serves_rolls_back_and_tears_down_without_orphans(runner, storage, models):
    state = storage / SERVING / "local_server.json"
    serving = storage_path((storage / SERVING).as_uri())
    promote(storage, "trained", models["trained"])
    try:
        deployed = runner.dags_test("deploy_endpoint")
        assert deployed.succeeded, deployed.output[-6000:]
        record = current_endpoint(serving)
        first = local_server_status(state)
        assert record.model_version == "trained" and record.url == first.base_url
        assert first.model_dir == str(models["trained"])
        # The record is all a caller needs: the same spec, policy and prompt answer with a label.
        image, _ = smoke_image("", load_settings({}))
        spec, policy = endpoint_spec(record, "aws_default"), resize_policy(record)
        assert smoke_test(spec, TAXONOMY, image, prompt=record.prompt, policy=policy) in TAXONOMY.labels
        # A server that died after the deploy comes back on the recorded URL for the next caller.
        os.kill(first.pid, signal.SIGKILL)
        LocalServing(load_settings(runner.env)).ensure_serving(record)
        first = local_server_status(state)
        assert first.base_url == record.url
        assert first.model_dir == str(models["trained"])

        promote(storage, "broken", models["broken"])
        failed = runner.dags_test("deploy_endpoint")
        assert not failed.succeeded and "state=failed, run_type" in failed.output, failed.output[-6000:]
        assert "before it was ready; last log lines" in failed.output and "AirflowFailException" in failed.output
        assert "serving " + str(models["trained"]) + " again" in failed.output
        back = local_server_status(state)
        assert back.model_dir == str(models["trained"]) and back.base_url == record.url  # the record stays true
        assert current_endpoint(serving) == record and not servers_of(models["broken"])
        assert group_gone(first)

        torn = runner.dags_test("teardown_endpoint")
        assert torn.succeeded, torn.output[-6000:]
    finally:
        from tasks.serving.local_server import stop_local_server

        stop_local_server(state)  # never leave a server behind, even when an assertion above failed
    assert current_endpoint(serving) is None and not state.exists()
    assert group_gone(back) and not servers_of(models["trained"]) and not servers_of(models["broken"])


def test_a_copied_storage_root_deploys_from_the_copy(runner, storage, models, tmp_path):
    """The registry and the endpoint record name the model relative to the storage root: a backup or a moved root
    serves its own copy of the model, with no record rewritten by hand."""
    promote(storage, "trained", models["trained"])
    copy = shutil.copytree(storage, tmp_path / "restored", ignore=shutil.ignore_patterns("local_server.json"))
    moved = AirflowRunner({**runner.env, "PIPELINE_STORAGE_URI": copy.as_uri()})
    state = copy / SERVING / "local_server.json"
    try:
        deployed = moved.dags_test("deploy_endpoint")
        assert deployed.succeeded, deployed.output[-6000:]
        record = current_endpoint(storage_path((copy / SERVING).as_uri()))
        assert record.model == "models/trained/model"
        assert local_server_status(state).model_dir == str(copy / MODELS / "trained" / "model")
    finally:
        from tasks.serving.local_server import stop_local_server

        stop_local_server(state)
