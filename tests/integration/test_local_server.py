"""The real `transformers serve` on the tiny LLaVA-NeXT: start, reuse, classify, replace, restart, stop, no orphans."""

from __future__ import annotations

import os
import shutil
import signal
import time

import httpx
import psutil
import pytest

from tasks.model.taxonomy import load_taxonomy
from tasks.model.tiny_model import build_tiny_llava
from tasks.model.vision_tokens import ResizePolicy, VisionGeometry, prepare_image
from tasks.serving.client import EndpointClient, EndpointSpec
from tasks.serving.local_server import ServerInfo, local_server_status, start_local_server, stop_local_server
from tests.conftest import encode, pattern

pytestmark = pytest.mark.slow
TAXONOMY = load_taxonomy("digits")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    corpus = [TAXONOMY.prompt(), *(TAXONOMY.answer(label) for label in TAXONOMY.labels)]
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model", corpus)


def group_gone(info: ServerInfo) -> bool:
    """Neither the server nor anything it started is left running (zombies reaped by their parent count as gone)."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == info.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.Error, ProcessLookupError):
            continue
    return True


def test_local_server_lifecycle(tiny_model, tmp_path):
    state = tmp_path / "run" / "server.json"
    first = start_local_server(tiny_model, state)
    try:
        assert start_local_server(tiny_model, state) == first  # healthy and same model: reused, not restarted
        assert local_server_status(state) == first
        [listed] = httpx.get(f"{first.base_url}/v1/models").json()["data"]
        assert listed["id"] == str(tiny_model) and listed["status"]["value"] == "loaded"

        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(tiny_model)
        policy = ResizePolicy(max_image_tokens=100, geometry=VisionGeometry.from_processor(processor))
        client = EndpointClient(EndpointSpec("openai_http", url=first.base_url, timeout_s=60), TAXONOMY, policy=policy)
        image = pattern((120, 90), seed=1)
        result = client.classify(encode(image, "JPEG"), key="digit.jpg")
        # The tiny model is untrained: any answer will do, but it must come back as a well-formed, parsed response.
        assert result.status in ("ok", "invalid") and isinstance(result.raw_answer, str), result
        # An answer that is not a label is asked once more (a transient bad answer must not become a permanent row).
        assert result.attempts == (1 if result.status == "ok" else 2) and 0 < result.latency_s < 30
        if result.status == "invalid":
            assert result.error.startswith("answer is not a label")
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
