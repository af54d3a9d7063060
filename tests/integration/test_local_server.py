"""The real local vLLM on the tiny LLaVA-NeXT: the client's request (label constraint and logprobs) and the server's
lifecycle (start, reuse, classify, replace, restart, stop, no orphans).

vLLM takes about a minute to start on 2 cores, so the module shares one server: the request tests use it, and the
lifecycle test, last, starts from it and ends with every server stopped.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from tasks.model.taxonomy import load_taxonomy
from tasks.model.tiny_model import build_tiny_llava
from tasks.model.vision_tokens import ResizePolicy, VisionGeometry, prepare_image
from tasks.serving.client import EndpointClient, EndpointSpec, build_request
from tasks.serving.local_server import (
    ServerInfo,
    local_server_status,
    max_model_len,
    start_local_server,
    stop_local_server,
)
from tests.conftest import encode, pattern

pytestmark = pytest.mark.slow
TAXONOMY = load_taxonomy("digits")
ANSWERS = [TAXONOMY.answer(label) for label in TAXONOMY.labels]
# What the client asks for beside the label constraint (issue 21: the decision token's logprobs for confidence).
LOGPROBS = {"logprobs": True, "top_logprobs": min(20, len(ANSWERS)), "return_tokens_as_token_ids": True}
# vLLM replaces the logprob of a token the grammar masked with this (vllm/v1/sample/sampler.py, v0.32.0).
MASKED = -9999.0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [TAXONOMY.prompt(), *ANSWERS]
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run") / "server.json"


@pytest.fixture(scope="module")
def server(tiny_model: Path, state: Path) -> Iterator[ServerInfo]:
    info = start_local_server(tiny_model, state)
    yield info
    stop_local_server(state)


@pytest.fixture(scope="module")
def processor(tiny_model: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


def group_gone(info: ServerInfo) -> bool:
    """Neither the server nor anything it started is left running (zombies reaped by their parent count as gone)."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == info.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.Error, ProcessLookupError):
            continue
    return True


def chat(info: ServerInfo, image: Image.Image | None = None, **extra) -> dict:
    """The client's request body for `image` (a fixed one by default) with the label constraint and `extra` fields,
    answered."""
    spec = EndpointSpec("openai_http", url=info.base_url, supports_choice=True)
    jpeg = encode(image or pattern((32, 32), seed=1), "JPEG")
    body = build_request(TAXONOMY.prompt(), jpeg, spec, ANSWERS) | extra
    response = httpx.post(f"{info.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def token_id(token: str) -> int:
    match = re.fullmatch(r"token_id:(\d+)", token)
    assert match, token
    return int(match[1])


def allowed_mass(position: dict) -> float:
    """The probability of the alternatives vLLM returned at one position that the grammar allowed."""
    return sum(math.exp(top["logprob"]) for top in position["top_logprobs"] if top["logprob"] > MASKED)


def test_the_clients_request_gets_a_label_and_its_decision_logprobs(server: ServerInfo, processor) -> None:
    doc = chat(server, **LOGPROBS)
    [choice] = doc["choices"]
    # Even the untrained model answers a label: the constraint is applied, unlike `transformers serve`'s.
    assert choice["message"]["content"] in ANSWERS
    positions = choice["logprobs"]["content"]
    ids = [token_id(position["token"]) for position in positions]
    assert processor.tokenizer.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
    for position in positions:
        assert len(position["top_logprobs"]) == LOGPROBS["top_logprobs"]
        assert all(token_id(top["token"]) >= 0 for top in position["top_logprobs"])
        assert allowed_mass(position) <= 1 + 1e-4  # logprobs over the allowed tokens only: vLLM masks first
    # The decision: the first token at which the answers' tokens differ; before it, the answer is forced.
    encoded = [processor.tokenizer.encode(answer, add_special_tokens=False) for answer in ANSWERS]
    decision = next(i for i in range(min(map(len, encoded))) if len({ids[i] for ids in encoded}) > 1)
    firsts = {ids[decision] for ids in encoded}
    assert ids[:decision] == encoded[0][:decision] and ids[decision] in firsts
    allowed = {token_id(top["token"]) for top in positions[decision]["top_logprobs"] if top["logprob"] > MASKED}
    assert allowed & firsts, allowed


def test_with_every_allowed_token_returned_the_decision_distribution_sums_to_one(server: ServerInfo) -> None:
    """20 alternatives (vLLM's max_logprobs) cover every token the grammar allows at each position of a digits
    answer (ten digits plus the tiny tokenizer's bare space, which spells the same labels in two tokens), so the
    allowed probabilities add up to 1: confidence can be read off the response."""
    doc = chat(server, **(LOGPROBS | {"top_logprobs": 20}))
    for position in doc["choices"][0]["logprobs"]["content"]:
        assert allowed_mass(position) == pytest.approx(1.0, abs=1e-3), position


def test_the_context_fits_the_largest_image_and_the_prompt(server: ServerInfo, processor) -> None:
    [listed] = httpx.get(f"{server.base_url}/v1/models").json()["data"]
    assert listed["max_model_len"] == max_model_len(server.model_dir)
    largest = pattern((64, 64), seed=2)  # the tiny model's largest pinpoint: its most image tokens
    doc = chat(server, largest)
    messages = [{"role": "user", "content": [{"type": "text", "text": TAXONOMY.prompt()}, {"type": "image"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(text=text, images=largest, add_special_tokens=False)
    assert doc["usage"]["prompt_tokens"] == len(expected["input_ids"][0])
    assert doc["usage"]["prompt_tokens"] + EndpointSpec("openai_http", url="-").max_tokens <= listed["max_model_len"]


def test_local_server_lifecycle(server: ServerInfo, tiny_model: Path, state: Path, processor, tmp_path) -> None:
    first = server
    try:
        assert start_local_server(tiny_model, state) == first  # healthy and same model: reused, not restarted
        assert local_server_status(state) == first
        [listed] = httpx.get(f"{first.base_url}/v1/models").json()["data"]
        assert listed["id"] == str(tiny_model)

        policy = ResizePolicy(max_image_tokens=100, geometry=VisionGeometry.from_processor(processor))
        spec = EndpointSpec("openai_http", url=first.base_url, timeout_s=60, supports_choice=True)
        client = EndpointClient(spec, TAXONOMY, policy=policy)
        image = pattern((120, 90), seed=1)
        result = client.classify(encode(image, "JPEG"), key="digit.jpg")
        # The tiny model is untrained, but the label constraint makes every answer a label, at the first attempt.
        assert result.status == "ok" and result.attempts == 1 and 0 < result.latency_s < 30, result
        # The server saw exactly the prepared image: its prompt tokens are what the processor makes of it.
        messages = [{"role": "user", "content": [{"type": "text", "text": client.prompt}, {"type": "image"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        expected = processor(text=text, images=prepare_image(image, policy), add_special_tokens=False)
        assert result.prompt_tokens == len(expected["input_ids"][0])
        assert 0 < result.completion_tokens <= client.spec.max_tokens
        tokens = f"{result.prompt_tokens}+{result.completion_tokens}"
        print(f"\nlocal request: {result.latency_s * 1000:.0f} ms, {tokens} tokens")

        # A different model in the state file's place: the old server is replaced, not reused.
        other = shutil.copytree(tiny_model, tmp_path / "other-model")
        second = start_local_server(other, state)
        assert second.pid != first.pid and second.model_dir == str(other)
        assert group_gone(first)

        # A server that died (killed -9) is noticed and restarted.
        os.kill(second.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while local_server_status(state) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert local_server_status(state) is None
        third = start_local_server(other, state)
        assert third.pid not in (first.pid, second.pid) and local_server_status(state) == third
    finally:
        stopped = stop_local_server(state)
    assert stopped and not state.exists() and local_server_status(state) is None
    assert group_gone(third) and not psutil.pid_exists(third.pid)
    # Nothing left in the temp folder it was given; only the compile cache stays, beside the state file.
    assert sorted(path.name for path in state.parent.iterdir()) == ["server.json.lock", "server.log", "vllm-cache"]
