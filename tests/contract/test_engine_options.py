"""The serving.properties we render, translated by the runtime's LMI (its djl_python) and parsed by the runtime's
vLLM (its own argument parser and AsyncEngineArgs): every option arrives with the value we meant, none is dropped."""

from __future__ import annotations

import pytest

from tasks.serving.config import ServingConfig, render_serving_properties
from tests.contract.conftest import run_probe

pytestmark = [pytest.mark.contract, pytest.mark.slow]
MODEL_URI = "s3://bucket/pipeline/models/v7/model/"
GPUS = 1  # ml.g5.xlarge, the endpoint's default instance


def test_rendered_options_reach_the_runtimes_vllm_engine_args(runtime, vllm_path, djl_python):
    config = ServingConfig(
        MODEL_URI,
        enable_prefix_caching=True,
        limit_mm_per_prompt={"image": 1},
        extra_options={"gpu_memory_utilization": 0.9},
    )
    result = run_probe(
        "engine_args",
        vllm_path,
        {"djl_python": djl_python, "gpus": GPUS, "properties": render_serving_properties(config)},
    )
    assert "error" not in result, f"vLLM {result['vllm']}: {result['error']}"
    assert result["engine_args"] == {
        "model": MODEL_URI,
        "tensor_parallel_size": GPUS,  # LMI's tensor_parallel_degree=max
        "max_num_seqs": config.max_rolling_batch_size,  # LMI's max_rolling_batch_size
        "max_model_len": config.max_model_len,
        "enable_prefix_caching": True,
        "limit_mm_per_prompt": {"image": 1},
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
    }
    # LMI silently drops an option that is not an EngineArgs field: only what its Java side consumes may be missing
    # (and model_id, which becomes `model`).
    assert set(result["dropped"]) <= {"model_id", *runtime.doc["lmi"]["java_options"]}, result["dropped"]
