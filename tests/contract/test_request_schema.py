"""The chat-completions body the endpoint client sends, judged by the runtime's vLLM request model: it validates,
and the label constraint and the log-probability request reach the SamplingParams the engine generates with (not
kept aside as unknown fields); and a response built by that vLLM's own code parses to the confidence the
calibration gives for those log-probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.model.calibration import Calibration
from tasks.model.taxonomy import load_taxonomy
from tasks.serving.client import EndpointClient, EndpointSpec, build_request, encode_image, parse_response
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
    # the decision token's alternatives: one per label up to vLLM's default max_logprobs (20), as token ids
    assert (result["logprobs"], result["tokens_as_ids"]) == (min(len(client.choices), 20), True)


def test_a_response_built_by_vllm_parses_to_the_calibrated_confidence(vllm_path):
    taxonomy = load_taxonomy("digits")
    tokens = {label: 40 + int(label) for label in taxonomy.labels}
    calibration = Calibration(decision_tokens=tokens, temperature=1.6)
    decision = {tokens["7"]: math.log(0.7), tokens["1"]: math.log(0.25), tokens["9"]: math.log(0.05)}
    forced = [{"5": 0.0}, {"6": 0.0}]  # "this is a photo of" under the constraint; masked alternatives dropped
    steps = [*forced, {str(t): lp for t, lp in decision.items()}, {"2": 0.0}]
    body = run_probe(
        "response",
        vllm_path,
        {"answer": taxonomy.answer("7"), "token_ids": [5, 6, tokens["7"], 2], "logprobs": steps, "top_logprobs": 10},
    )
    result = parse_response("img", json.dumps(body).encode(), taxonomy, calibration)
    expected = calibration.rank({"7": math.log(0.7), "1": math.log(0.25), "9": math.log(0.05)})
    assert (result.status, result.label, result.runner_up) == ("ok", "7", "1")
    assert (result.confidence, result.margin) == pytest.approx((expected.confidence, expected.margin))


def test_the_local_endpoints_response_rebuilt_by_the_runtimes_vllm_parses_to_the_same_confidence(vllm_path):
    """The local vLLM (0.32) and production's (0.23) return the same logprob schema: a recorded local answer, its
    token ids and log-probabilities fed through vLLM 0.23's own response code, parses to the same confidence."""
    recorded = json.loads((Path(__file__).parent / "data" / "local_vllm_response.json").read_text())
    taxonomy, calibration = load_taxonomy("digits"), Calibration.from_dict(recorded["calibration"])
    local = recorded["response"]
    content = local["choices"][0]["logprobs"]["content"]
    steps = [{t["token"].removeprefix("token_id:"): t["logprob"] for t in e["top_logprobs"]} for e in content]
    rebuilt = run_probe(
        "response",
        vllm_path,
        {
            "answer": local["choices"][0]["message"]["content"],
            "token_ids": [int(e["token"].removeprefix("token_id:")) for e in content],
            "logprobs": steps,
            "top_logprobs": len(content[0]["top_logprobs"]),
        },
    )
    served = parse_response("local", json.dumps(local).encode(), taxonomy, calibration)
    production = parse_response("lmi", json.dumps(rebuilt).encode(), taxonomy, calibration)
    assert served.label == production.label == recorded["label"] and served.confidence is not None
    assert (production.confidence, production.runner_up, production.margin) == pytest.approx(
        (served.confidence, served.runner_up, served.margin)
    )
