"""Sizing a SageMaker training from the dataset and the declared seconds per step; refusing what cannot finish."""

from __future__ import annotations

from dataclasses import replace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tasks.common.settings import load_settings
from tasks.training.plan import plan_training
from tasks.training.sagemaker import SAGEMAKER_HYPERPARAMETERS
from tasks.training.sizing import DEFAULT_INSTANCE_TYPE, DEFAULT_MAX_RUN_SECONDS, size_training
from tasks.training.steps import training_backend
from tests.unit.training.test_plan import DATASET, LOCAL_DATASET, PARAMS, RUN_AFTER, SAGEMAKER_ENV

# 10,000 curated images at curation's default fractions (test 0.2, validation 0.1)
TEN_THOUSAND = {"train": 7000, "validation": 1000, "test": 2000}


HOTEL_LABELS = 26


def default_size(splits=TEN_THOUSAND, max_run_seconds=DEFAULT_MAX_RUN_SECONDS, labels=HOTEL_LABELS, **hyperparameters):
    return size_training(
        {**SAGEMAKER_HYPERPARAMETERS, **hyperparameters},
        instance_type=DEFAULT_INSTANCE_TYPE,
        instance_count=1,
        train_examples=splits["train"],
        test_examples=splits["test"],
        max_run_seconds=max_run_seconds,
        splits=splits,
        labels=labels,
    )


def test_the_defaults_finish_on_ten_thousand_images_inside_the_default_max_runtime():
    size = default_size()
    assert (size.global_batch, size.steps) == (8, 2625)  # 3 epochs x 7,000 / (batch 1 x 8 GPUs x 1 x accumulation 1)
    assert size.save_steps == 300 and size.checkpoints == 9  # ~30 min of 6 s steps; the last step saves too
    assert size.checkpoint_gb == 106.0  # 14 B/param: optimizer state + bf16 partition, no gathered copy
    assert size.final_model_gb == 15.1
    assert size.estimated_seconds < DEFAULT_MAX_RUN_SECONDS == 8 * 3600 and 5.5 < size.estimated_hours < 6
    assert set(size.parts) == {"load", "train", "checkpoints", "final save", "test generation", "label scoring"}
    # all 10,000 rows (train/validation for mislabels, validation/test for calibration) / 8 GPUs: one prompt forward
    # each (0.5 s, +8% for 26 labels x 4 answer tokens), plus two gathers per batch of 8 rows per GPU
    assert size.parts["label scoring"] == round(1250 * 0.5 * (1 + 26 * 4 / 1300) + 157 * 2 * 2.0)
    without_scoring = default_size(score_splits="")
    assert "label scoring" not in without_scoring.parts and 5 < without_scoring.estimated_hours < 5.5
    # even when all 10,000 are training examples
    assert default_size({"train": 10_000, "validation": 1000, "test": 2000}).estimated_seconds < 8 * 3600


def test_steps_follow_epochs_examples_batch_gpus_instances_and_accumulation():
    size = size_training(
        {"num_train_epochs": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4},
        instance_type="ml.p4d.24xlarge",
        instance_count=2,
        train_examples=12_800,
        test_examples=100,
        max_run_seconds=DEFAULT_MAX_RUN_SECONDS,
    )
    assert size.global_batch == 2 * 8 * 2 * 4 and size.steps == 2 * 12_800 // 128
    assert size.step_seconds == 1.5 * 2 * 4
    assert (
        size_training(
            {"max_steps": 50},
            instance_type="ml.p5.48xlarge",
            instance_count=1,
            train_examples=10,
            test_examples=1,
            max_run_seconds=3600,
        ).steps
        == 50
    )


def test_a_set_save_steps_is_kept():
    assert default_size(save_steps=100).save_steps == 100 and default_size(save_steps=100).checkpoints == 27


def test_a_plan_that_cannot_finish_is_refused_with_what_fits():
    with pytest.raises(AirflowFailException) as refused:
        default_size(num_train_epochs=20)  # the seed's 20 epochs
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("training plan refused before any job was created: 17,500 steps on 1 x ml.g5.48xlarge")
    assert "num_train_epochs <= 4" in message and "max_run_seconds >= " in message
    needed = int(message.split("max_run_seconds >= ", 1)[1].split(" ", 1)[0])
    assert default_size(num_train_epochs=4).estimated_seconds <= DEFAULT_MAX_RUN_SECONDS  # what it says fits, fits
    with pytest.raises(AirflowFailException):
        default_size(num_train_epochs=5)
    assert default_size(num_train_epochs=20, max_run_seconds=needed).steps == 17_500


def test_when_no_whole_epoch_fits_the_refusal_names_max_steps():
    with pytest.raises(AirflowFailException, match=r"what fits: max_steps <= \d+ or max_run_seconds >= \d+$"):
        default_size({"train": 1_000_000, "test": 10}, score_splits="")


def test_an_instance_type_without_a_declared_speed_is_refused():
    with pytest.raises(AirflowFailException, match=r"no declared seconds-per-step for ml\.g5\.12xlarge"):
        size_training(
            {},
            instance_type="ml.g5.12xlarge",
            instance_count=1,
            train_examples=10,
            test_examples=1,
            max_run_seconds=3600,
        )


def test_plan_training_refuses_before_anything_is_uploaded_and_keeps_the_size_otherwise():
    settings = load_settings(SAGEMAKER_ENV)
    backend = training_backend(settings)
    big = replace(DATASET, splits=TEN_THOUSAND)
    params = PARAMS | {"hyperparameters": {"num_train_epochs": 20}, "max_run_seconds": DEFAULT_MAX_RUN_SECONDS}
    with pytest.raises(AirflowFailException, match="training plan refused"):
        plan_training(backend, settings, params, big, dag_id="d", run_key="r", run_time=RUN_AFTER)
    plan = plan_training(
        backend,
        settings,
        PARAMS | {"hyperparameters": {}, "max_run_seconds": DEFAULT_MAX_RUN_SECONDS},
        big,
        dag_id="d",
        run_key="r",
        run_time=RUN_AFTER,
    )
    assert plan.sizing["steps"] == 2625 and plan.hyperparameters["save_steps"] == 300


def test_the_local_backend_is_not_sized(tmp_path):
    settings = load_settings({"PIPELINE_STORAGE_URI": tmp_path.as_uri()})
    plan = plan_training(
        training_backend(settings),
        settings,
        PARAMS,
        replace(LOCAL_DATASET, splits=TEN_THOUSAND),
        dag_id="d",
        run_key="r",
        run_time=RUN_AFTER,
    )
    assert plan.sizing is None and "save_steps" not in PARAMS["hyperparameters"]
    assert plan.checkpoint_uri == f"{plan.model_root}/checkpoints"  # per version, as before


def test_the_cli_prints_the_plan_or_the_refusal(capsys):
    from tasks.cli import main

    main(["plan-training", "--images", "10000"])
    out = capsys.readouterr().out
    assert "train 7,000, validation 1,000, test 2,000" in out and out.splitlines()[1].startswith("2,625 steps")
    with pytest.raises(SystemExit, match=r"plan-training: error: training plan refused .* num_train_epochs <= 4"):
        main(["plan-training", "--images", "10000", "--epochs", "20"])
