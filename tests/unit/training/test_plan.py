"""Training plans, job names and the SageMaker CreateTrainingJob request: pure functions of (settings, params, run)."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import tarfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.runs import run_identity
from tasks.common.sagemaker_jobs import s3_uri
from tasks.common.settings import load_settings
from tasks.common.storage import ContainmentError
from tasks.model.vision_tokens import PRODUCTION_GEOMETRY, TINY_GEOMETRY
from tasks.records.dataset import DatasetRelease
from tasks.training.local import LOCAL_HYPERPARAMETERS, run_streaming
from tasks.training.plan import (
    MAX_RUN_SECONDS,
    find_dataset,
    ledger_entry,
    model_version,
    plan_training,
    training_job_name,
)
from tasks.training.sagemaker import (
    PRODUCTION_BASE_MODEL,
    PRODUCTION_BASE_MODEL_REVISION,
    create_training_job_request,
    outcome_from_description,
    source_tarball,
    training_image_uri,
)
from tasks.training.steps import training_backend

RUN_AFTER = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
DATASET = DatasetRelease(
    dataset="s3://bucket/pipe/datasets/hotel-1",
    taxonomy="hotel",
    prompt="Which?",
    fingerprint="f",
    splits={"train": 800, "validation": 100, "test": 100},
    max_image_tokens=1200,
    vision_tile_size=PRODUCTION_GEOMETRY.tile_size,
)
LOCAL_DATASET = replace(DATASET, vision_tile_size=TINY_GEOMETRY.tile_size)
PARAMS = {
    "base_model": None,
    "hyperparameters": {"num_train_epochs": 3, "max_steps": 50},
    "instance_type": "ml.g5.48xlarge",
    "instance_count": 1,
    "spot": True,
    "max_run_seconds": 3600,
    "max_wait_seconds": 7200,
    "local_processes": 1,
}
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
SAGEMAKER_ENV = {
    "PIPELINE_BACKEND": "sagemaker",
    "PIPELINE_STORAGE_URI": "s3://bucket/pipe",
    "PIPELINE_REGION": "eu-west-1",
}


def sagemaker_plan(env: dict | None = None, **params):
    settings = load_settings(SAGEMAKER_ENV | (env or {}))
    return plan_training(
        training_backend(settings),
        settings,
        PARAMS | params,
        DATASET,
        dag_id="finetune_llava",
        run_key="manual__x",
        run_time=RUN_AFTER,
    )


def request(**params) -> dict:
    plan = sagemaker_plan(**params)
    source = f"{plan.model_root}/source/sourcedir.tar.gz"
    return create_training_job_request(plan, role_arn=ROLE, image_uri="IMAGE", source_uri=source)


@pytest.mark.parametrize(
    "run_key",
    ["2026-11-01T12:30:00+00:00", "asset_triggered__2026-11-01T12:30:00.123456+00:00_Ab3dE9xZ", "x" * 300],
)
def test_job_names_are_deterministic_valid_and_short(run_key):
    name = training_job_name("finetune_llava", run_key)
    assert name == training_job_name("finetune_llava", run_key)
    assert len(name) <= 63 and re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9])*", name)
    assert name.startswith("finetune-llava-")


def test_runs_that_share_a_long_prefix_get_different_job_names():
    base = "asset_triggered__2026-11-01T12:30:00.123456+00:00_" + "a" * 40
    assert training_job_name("finetune_llava", base + "1") != training_job_name("finetune_llava", base + "2")


def test_a_run_is_its_logical_date_even_when_recreated_under_a_new_run_id():
    first = run_identity("manual__2026-11-25T14:00:00+00:00", RUN_AFTER, RUN_AFTER + timedelta(days=1))
    recreated = run_identity("manual__2026-11-25T15:00:00+00:00", RUN_AFTER, RUN_AFTER + timedelta(days=2))
    assert first == recreated == (RUN_AFTER.isoformat(), RUN_AFTER)
    asset_run = run_identity("asset_triggered__x", None, RUN_AFTER)  # no logical date
    assert asset_run == ("asset_triggered__x", RUN_AFTER)


def test_versions_sort_by_run_time_and_are_unique_per_run():
    first = model_version("hotel", "finetune_llava", "run-1", RUN_AFTER)
    assert first.startswith("hotel-20261101T123000-")
    assert first != model_version("hotel", "finetune_llava", "run-2", RUN_AFTER)
    assert first < model_version("hotel", "finetune_llava", "run-1", RUN_AFTER + timedelta(days=1))


def test_local_plan_keeps_everything_under_the_version_and_uses_cpu_hyperparameters(tmp_path):
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    plan = plan_training(
        training_backend(settings),
        settings,
        PARAMS,
        LOCAL_DATASET,
        dag_id="finetune_llava",
        run_key="r",
        run_time=RUN_AFTER,
    )
    root = f"{tmp_path.as_uri()}/models/{plan.version}"
    assert (plan.model_root, plan.model_uri, plan.output_uri) == (root, f"{root}/model", root)
    assert plan.predictions_uri == f"{root}/eval_predictions.jsonl"
    assert plan.base_model == "" and plan.instance_type == "local" and plan.spot is False
    assert plan.hyperparameters == LOCAL_HYPERPARAMETERS | {"num_train_epochs": 3, "max_steps": 50}


def test_sagemaker_plan_points_at_the_job_output_and_the_production_base_model():
    plan = sagemaker_plan()
    prefix = f"s3://bucket/pipe/models/{plan.version}/{plan.job_name}/output"
    assert (plan.model_uri, plan.output_uri) == (f"{prefix}/model/", f"{prefix}/model/evaluation")  # expected only
    assert plan.base_model == PRODUCTION_BASE_MODEL and plan.region == "eu-west-1"
    assert plan.hyperparameters["learning_rate"] == 2e-5 and plan.hyperparameters["max_steps"] == 50
    assert plan == type(plan).from_dict(json.loads(json.dumps(plan.to_dict())))  # survives XCom


def test_create_training_job_request():
    plan = sagemaker_plan()
    req = request()
    assert req["TrainingJobName"] == plan.job_name and req["RoleArn"] == ROLE
    assert req["AlgorithmSpecification"] == {"TrainingImage": "IMAGE", "TrainingInputMode": "File"}
    hp = req["HyperParameters"]
    assert all(isinstance(value, str) for value in hp.values())  # SageMaker's contract
    assert hp["sagemaker_program"] == "launch.py"
    assert hp["sagemaker_submit_directory"] == f"s3://bucket/pipe/models/{plan.version}/source/sourcedir.tar.gz"
    assert (hp["model_id"], hp["learning_rate"], hp["bf16"], hp["max_steps"]) == (
        PRODUCTION_BASE_MODEL,
        "2e-05",
        "true",
        "50",
    )
    assert hp["model_revision"] == PRODUCTION_BASE_MODEL_REVISION  # the Hub's later commits never reach a job
    assert hp["output_data_dir"] == "/opt/ml/model/evaluation"  # uploaded uncompressed with the model
    assert hp["save_steps"] == "300"  # derived: ~30 min of 6 s steps
    assert req["InputDataConfig"] == [
        {
            "ChannelName": "train",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": "s3://bucket/pipe/datasets/hotel-1/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
    ]
    root = f"s3://bucket/pipe/models/{plan.version}"
    assert req["OutputDataConfig"] == {"S3OutputPath": root, "CompressionType": "NONE"}
    assert req["CheckpointConfig"] == {"S3Uri": s3_uri(plan.checkpoint_uri), "LocalPath": "/opt/ml/checkpoints"}
    assert re.fullmatch(r"s3://bucket/pipe/models/checkpoints/hotel-[0-9a-f]{16}", plan.checkpoint_uri)
    assert req["ResourceConfig"] == {"InstanceType": "ml.g5.48xlarge", "InstanceCount": 1, "VolumeSizeInGB": 300}
    assert req["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert req["EnableManagedSpotTraining"] is True
    assert {"Key": "model_version", "Value": plan.version} in req["Tags"]
    assert req == request()  # a pure function: a retry sends the same request


def test_on_demand_has_no_wait_and_spot_waits_at_least_the_run_time():
    assert request(spot=False)["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    assert request(spot=False)["EnableManagedSpotTraining"] is False
    assert request(max_wait_seconds=60)["StoppingCondition"]["MaxWaitTimeInSeconds"] == 3600


def test_a_base_model_on_s3_becomes_an_input_channel():
    req = request(env={"PIPELINE_INPUT_ROOTS": "s3://bucket/base"}, base_model="s3://bucket/base/llava-7b/")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req["InputDataConfig"]}
    assert channels["base_model"] == "s3://bucket/base/llava-7b/"
    assert req["HyperParameters"]["model_id"] == "/opt/ml/input/data/base_model"
    assert "model_revision" not in req["HyperParameters"]


@pytest.mark.parametrize(
    "base_model", ["s3://bucket/base/llava-7b/", "s3://other/x", "s3://bucket/pipe/../base", "/etc", "file:///etc/"]
)
def test_a_base_model_outside_the_storage_and_input_roots_is_refused(base_model):
    with pytest.raises(ContainmentError, match="param base_model="):
        sagemaker_plan(base_model=base_model)


def test_a_hub_id_base_model_needs_no_root():
    assert sagemaker_plan(base_model="llava-hf/llava-v1.6-mistral-7b-hf").base_model.startswith("llava-hf/")


def test_the_request_refuses_local_storage_and_a_missing_role(tmp_path):
    settings = load_settings({"PIPELINE_BACKEND": "sagemaker", "PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    plan = plan_training(
        training_backend(settings), settings, PARAMS, DATASET, dag_id="d", run_key="r", run_time=RUN_AFTER
    )
    with pytest.raises(ValueError, match="S3 only"):
        create_training_job_request(plan, role_arn=ROLE, image_uri="I", source_uri=f"{tmp_path.as_uri()}/s.tar.gz")
    with pytest.raises(ValueError, match="PIPELINE_SAGEMAKER_ROLE_ARN"):
        create_training_job_request(sagemaker_plan(), role_arn="", image_uri="I", source_uri="s3://b/s.tar.gz")


def test_source_tarball_is_the_script_directory_at_the_root_and_reproducible():
    archive = source_tarball()
    assert archive == source_tarball()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = set(tar.getnames())
    assert {"launch.py", "train.py", "requirements.txt", "accelerate_zero3.yaml", "ds_zero3.json"} <= names
    assert not any("__pycache__" in name for name in names)


@pytest.mark.parametrize(
    ("region", "uri"),
    [
        ("us-east-1", "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"),
        ("cn-north-1", "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-training:2.8.0-gpu-py312"),
    ],
)
def test_training_image_is_resolved_for_the_region(region, uri):
    assert training_image_uri(region) == uri


def description(**extra) -> dict:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return {
        "TrainingJobName": "job",
        "ResourceConfig": {"InstanceType": "ml.g5.48xlarge", "InstanceCount": 2},
        "TrainingStartTime": start,
        "TrainingEndTime": start + timedelta(seconds=1000),
        "TrainingTimeInSeconds": 1000,
        "ModelArtifacts": {"S3ModelArtifacts": "s3://bucket/pipe/models/v/job/output/model/"},
        **extra,
    }


def test_spot_billable_seconds_already_carry_the_saving_so_they_are_priced_on_demand():
    outcome = outcome_from_description(
        description(EnableManagedSpotTraining=True, BillableTimeInSeconds=300), "us-east-1"
    )
    assert (outcome.billable_seconds, outcome.price_per_hour_usd, outcome.spot) == (300, 20.36, True)
    assert (outcome.train_seconds, outcome.instance_count) == (1000, 2)


def test_without_billable_seconds_wall_time_is_priced_at_the_spot_rate():
    outcome = outcome_from_description(description(EnableManagedSpotTraining=True), "us-east-1")
    assert outcome.billable_seconds == 1000 and outcome.price_per_hour_usd == pytest.approx(20.36 * 0.3)


def test_ledger_entry_costs_billable_time_of_every_instance():
    outcome = outcome_from_description(description(BillableTimeInSeconds=1800), "us-east-1")
    entry = ledger_entry(sagemaker_plan(), outcome, run_id="manual__x")
    assert (entry.kind, entry.key, entry.model_version) == ("training", "job", sagemaker_plan().version)
    assert entry.cost_usd == pytest.approx(0.5 * 20.36 * 2)


def curated(root, name: str, test: int = 5, max_image_tokens: int = 1200) -> str:
    """A dataset folder with a curation report as curate_dataset writes it (tests.unit.curation: a real one)."""
    options = {"max_image_tokens": max_image_tokens, "vision_tile_size": 32}
    report = {"taxonomy": "digits", "prompt": "P", "fingerprint": name, "splits": {"train": 10, "test": test}}
    report |= {"schema_version": 1, "options": options}
    (root / "datasets" / name).mkdir(parents=True)
    (root / "datasets" / name / "curation_report.json").write_text(json.dumps(report))
    return f"{root.as_uri()}/datasets/{name}"


def test_find_dataset_prefers_the_param_then_the_triggering_event_then_the_newest(tmp_path):
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    old, new = curated(tmp_path, "old"), curated(tmp_path, "new")
    (tmp_path / "datasets" / "incomplete").mkdir()  # no report: curation did not finish
    assert find_dataset(old, [{"dataset_uri": new}], settings).dataset == "datasets/old"
    assert find_dataset("", [{"dataset_uri": new}, {"dataset_uri": old}], settings).fingerprint == "old"
    assert find_dataset("", [], settings) == DatasetRelease(
        dataset="datasets/new",
        taxonomy="digits",
        prompt="P",
        fingerprint="new",
        splits={"train": 10, "test": 5},
        max_image_tokens=1200,
        vision_tile_size=32,
    )


def test_find_dataset_explains_what_is_missing(tmp_path):
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    with pytest.raises(AirflowFailException, match=r"no curated dataset under .* run curate_dataset"):
        find_dataset("", [], settings)
    with pytest.raises(AirflowFailException, match="not a complete curated dataset"):
        find_dataset(f"{tmp_path.as_uri()}/datasets/nothing", [], settings)
    with pytest.raises(AirflowFailException, match="no held-out test split"):
        find_dataset(curated(tmp_path, "no-test", test=0), [], settings)
    broken = tmp_path / "datasets" / "broken" / "curation_report.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"taxonomy": "digits", "prompt": "P", "splits": {"test": 1}}))
    with pytest.raises(AirflowFailException, match=r"broken/curation_report.json: field 'fingerprint' is missing"):
        find_dataset(f"{tmp_path.as_uri()}/datasets/broken", [], settings)


def test_the_local_runner_streams_each_line_and_fails_with_the_last_ones(caplog):
    log = logging.getLogger("test.local_training")
    script = "import sys; print('step 1', flush=True); print('boom', file=sys.stderr); sys.exit(3)"
    with caplog.at_level(logging.INFO, logger=log.name), pytest.raises(RuntimeError, match="exited with 3") as err:
        run_streaming([sys.executable, "-c", script], {}, log)
    assert [r.getMessage() for r in caplog.records] == ["step 1", "boom"]
    assert err.value.args[0].endswith("step 1\nboom")


def test_max_run_seconds_is_bounded_by_the_api_limit_in_the_plan_and_the_dag_param():
    from dags.finetune_llava import finetune_llava

    assert MAX_RUN_SECONDS == 2_419_200  # 28 days
    assert request(max_run_seconds=MAX_RUN_SECONDS)["StoppingCondition"]["MaxRuntimeInSeconds"] == MAX_RUN_SECONDS
    with pytest.raises(ValueError, match="28 days"):
        sagemaker_plan(max_run_seconds=MAX_RUN_SECONDS + 1)
    assert finetune_llava().params.get_param("max_run_seconds").schema["maximum"] == MAX_RUN_SECONDS
