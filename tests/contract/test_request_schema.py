"""The chat-completions body the endpoint client sends, judged by the runtime's vLLM request model: it validates,
and the label constraint reaches the SamplingParams the engine generates with (not kept aside as an unknown field)."""

from __future__ import annotations

import pytest

from tasks.model.taxonomy import load_taxonomy
from tasks.serving.client import EndpointClient, EndpointSpec, build_request, encode_image
from tests.conftest import encode, pattern
from tests.contract.conftest import run_probe

pytestmark = [pytest.mark.contract, pytest.mark.slow]


def test_the_clients_body_validates_and_its_constraint_reaches_sampling(vllm_path):
    spec = EndpointSpec("sagemaker_runtime", endpoint_name="llava-classifier", supports_choice=True)
    client = EndpointClient(spec, load_taxonomy("hotel"))
    jpeg = encode_image(encode(pattern((640, 480))), client.policy)
    body = build_request(client.prompt, jpeg, spec, client.choices)  # exactly what EndpointClient posts
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")

    result = run_probe("request", vllm_path, {"body": body})
    assert result["ignored"] == [], f"vLLM {result['vllm']} keeps but ignores {result['ignored']}"
    assert result["choice"] == client.choices, f"vLLM {result['vllm']}: no label constraint reached SamplingParams"
    assert (result["max_tokens"], result["temperature"]) == (spec.max_tokens, 0)
