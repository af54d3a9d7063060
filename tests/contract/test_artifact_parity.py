"""What training saves is what the serving runtime loads: the tiny model trained by include/training/train.py (as
the production job runs it) is read with only the runtime's transformers version - config, processor, weights - and
answers the test images exactly as the training environment's own generation did."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from support.digits import curated_digits, tiny_digits_model
from tests.contract.conftest import run_probe
from tests.integration.test_training_script import run_training

pytestmark = [pytest.mark.contract, pytest.mark.slow]
ROWS = 6  # test images answered by both


def test_the_trained_model_loads_and_answers_alike_in_the_runtimes_transformers(runtime, transformers_path, tmp_path):
    model, data = tiny_digits_model(tmp_path / "base"), curated_digits(tmp_path / "data", 60)
    run_training(model, data, tmp_path, "--max_steps", "4", "--eval_batch_size", "1", "--eval_strategy", "no")
    trained = tmp_path / "model"
    expected = [json.loads(line) for line in (tmp_path / "output" / "eval_predictions.jsonl").read_text().splitlines()]
    test = load_from_disk(str(data))["test"]
    rows = []
    for index in range(ROWS):
        image = tmp_path / f"test-{index}.png"
        test[index]["images"][0].save(image)
        [user] = [message for message in test[index]["messages"] if message["role"] == "user"]
        rows.append({"image": str(image), "prompt": next(c["text"] for c in user["content"] if c["type"] == "text")})
    saved = json.loads((trained / "config.json").read_text())

    result = run_probe("artifact", transformers_path, {"model_dir": str(trained), "rows": rows, "max_new_tokens": 16})
    assert result["transformers"] == runtime.transformers_version
    assert result["model_class"] == "LlavaNextForConditionalGeneration"
    assert result["processor_class"] == "LlavaNextProcessor"
    assert result["missing_keys"] == result["unexpected_keys"] == []
    assert result["rope_theta"] == saved["text_config"]["rope_parameters"]["rope_theta"]
    assert result["answers"] == [row["answer"] for row in expected[:ROWS]]
