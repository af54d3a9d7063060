"""The endpoint client against a real misbehaving HTTP server on loopback, and SageMaker through botocore's Stubber."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from airflow.sdk.exceptions import AirflowFailException
from PIL import Image

from tasks.model.calibration import Calibration
from tasks.model.taxonomy import load_taxonomy
from tasks.model.vision_tokens import ResizePolicy
from tasks.serving.client import (
    RETRY_AFTER_MAX_S,
    ClassificationResult,
    EndpointClient,
    EndpointRefuses,
    EndpointSpec,
    EndpointUnavailable,
    build_request,
    encode_image,
    parse_response,
    retry_after_seconds,
)
from tests.fault_server import (
    CLIENT_TIMEOUT_S,
    EXPECTED,
    FAST,
    RETRY_AFTER_S,
    SCRIPTS,
    ScriptedServer,
    ok_body,
    scripted_server,
    sized_image,
    vllm_logprobs,
)

TAXONOMY = load_taxonomy("digits")
NO_BUDGET = ResizePolicy(None)  # small test images pass unchanged, so the server can read their size


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as srv:
        yield srv


def http_client(server: ScriptedServer, breaker: int = 1000, **spec) -> EndpointClient:
    """A client whose breaker stays closed unless a test sets `breaker`: the scripted faults are dense."""
    spec = EndpointSpec("openai_http", url=server.url, **(FAST | spec))
    return EndpointClient(spec, TAXONOMY, policy=NO_BUDGET, max_consecutive_failures=breaker)


async def collect(client: EndpointClient, images, concurrency: int, **kwargs) -> list[ClassificationResult]:
    return [r async for r in client.classify_many(images, concurrency=concurrency, **kwargs)]


def test_every_image_is_accounted_for_once_with_the_right_status(server):
    rng = random.Random(3)
    widths = [rng.choice(list(SCRIPTS)) for _ in range(60)]
    images = {f"img-{i}": (w, 16 + i) for i, w in enumerate(widths)}
    inputs = [(key, sized_image(*size)) for key, size in images.items()]
    inputs.append(("corrupt.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"))

    results = asyncio.run(collect(http_client(server), inputs, concurrency=6))

    assert sorted(r.key for r in results) == sorted(key for key, _ in inputs)
    by_key = {r.key: r for r in results}
    rejected = by_key.pop("corrupt.jpg")
    assert (rejected.status, rejected.attempts) == ("rejected", 0) and "corrupt" in rejected.error
    for key, result in by_key.items():
        size = images[key]
        assert (result.status, result.attempts) == EXPECTED[size[0]], (key, size, result)
        if size[0] not in (43, 49):  # a timed-out request may not have reached the server yet
            assert server.attempts[size] == result.attempts
    assert server.max_in_flight <= 6
    statuses = Counter(r.status for r in results)
    assert statuses["ok"] and statuses["failed"] and statuses["invalid"] and statuses["rejected"] == 1


def test_results_carry_the_answer_tokens_latency_and_reasons(server):
    client = http_client(server)
    ok = client.classify(sized_image(41, 20), key="a")
    assert (ok.status, ok.label, ok.raw_answer) == ("ok", "3", "this is a photo of 3.")
    assert (ok.prompt_tokens, ok.completion_tokens, ok.attempts) == (80, 7, 3)
    assert 0 < ok.latency_s < ok.elapsed_s and ok.error is None

    gave_up = client.classify(sized_image(44, 20))
    assert gave_up.status == "failed" and gave_up.error.startswith("HTTP 503") and "gave up after 3" in gave_up.error
    timed_out = client.classify(sized_image(49, 20))
    assert timed_out.error == f"timeout after {CLIENT_TIMEOUT_S}s (gave up after 3 attempts)"
    garbage = client.classify(sized_image(45, 20))
    assert garbage.error.startswith("malformed response (not JSON): <html>")
    assert client.classify(sized_image(46, 20)).error.startswith("malformed response (no choices)")
    invalid = client.classify(sized_image(47, 20))
    assert invalid.raw_answer == "a cat, probably" and invalid.label is None and invalid.prompt_tokens == 80
    client_error = client.classify(sized_image(48, 20))
    assert client_error.error == 'HTTP 400: {"error": "scripted"}' and client_error.attempts == 1


def test_request_body_is_exactly_the_chat_completions_schema(server):
    http_client(server).classify(sized_image(40, 20))
    http_client(server, model="served-name", supports_choice=True, max_tokens=20).classify(sized_image(40, 21))
    plain, constrained = server.bodies
    assert set(plain) == {"messages", "max_tokens", "temperature"}
    assert (plain["max_tokens"], plain["temperature"]) == (32, 0)
    [message] = plain["messages"]
    assert message["role"] == "user"
    text, image = message["content"]
    assert text == {"type": "text", "text": TAXONOMY.prompt()}
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert set(constrained) == {
        "messages",
        "max_tokens",
        "temperature",
        "model",
        "structured_outputs",
        "logprobs",
        "top_logprobs",
        "return_tokens_as_token_ids",
    }
    assert constrained["model"] == "served-name" and constrained["max_tokens"] == 20
    assert constrained["structured_outputs"] == {"choice": [TAXONOMY.answer(label) for label in TAXONOMY.labels]}
    # every label's alternative at the decision token (10 digits, within vLLM's 20), keyed by token id
    assert (constrained["logprobs"], constrained["top_logprobs"], constrained["return_tokens_as_token_ids"]) == (
        True,
        10,
        True,
    )


DIGIT_TOKENS = {label: 40 + int(label) for label in TAXONOMY.labels}


def test_an_answer_carries_the_calibrated_confidence_of_its_decision_token():
    calibration = Calibration(decision_tokens=DIGIT_TOKENS, temperature=2.0)
    decision = {43: math.log(0.9), 48: math.log(0.08), 45: math.log(0.02)}
    body = ok_body("this is a photo of 3.", vllm_logprobs(decision, chosen=43))
    result = parse_response("k", body, TAXONOMY, calibration)
    sharp = [0.9**0.5, 0.08**0.5, 0.02**0.5]
    assert (result.status, result.label, result.runner_up) == ("ok", "3", "8")
    assert result.confidence == pytest.approx(sharp[0] / sum(sharp))
    assert result.margin == pytest.approx((sharp[0] - sharp[1]) / sum(sharp))
    # without a calibration, log-probabilities, token ids, or with a ranking that contradicts the answer: unknown
    assert parse_response("k", body, TAXONOMY).confidence is None
    assert parse_response("k", ok_body("this is a photo of 3."), TAXONOMY, calibration).confidence is None
    as_text = body.replace(b"token_id:", b"tok")
    assert parse_response("k", as_text, TAXONOMY, calibration).confidence is None
    contradicted = parse_response(
        "k", ok_body("this is a photo of 8.", vllm_logprobs(decision, 43)), TAXONOMY, calibration
    )
    assert (contradicted.label, contradicted.confidence) == ("8", None)


def test_images_are_read_lazily_and_requests_are_bounded(server):
    pulled = 0

    def images():
        nonlocal pulled
        for i in range(30):
            pulled += 1
            yield f"k{i}", sized_image(40, 16 + i)

    seen = 0

    def on_progress(result: ClassificationResult) -> None:
        nonlocal seen
        seen += 1
        assert pulled - seen < 4  # never more than `concurrency` images read ahead of the results

    results = asyncio.run(collect(http_client(server), images(), concurrency=3, on_progress=on_progress))
    assert seen == len(results) == 30 and all(r.status == "ok" for r in results)
    assert 1 < server.max_in_flight <= 3


def test_an_unreachable_server_fails_every_image_without_raising():
    client = EndpointClient(EndpointSpec("openai_http", url="http://127.0.0.1:9", **FAST), TAXONOMY)
    result = client.classify(sized_image(40, 20), key="x")
    assert result.status == "failed" and result.attempts == 3 and result.error.startswith("connection error")


def test_images_are_resized_to_the_budget_before_sending():
    jpeg = encode_image(sized_image(1600, 1200), ResizePolicy(1200))
    assert Image.open(io.BytesIO(jpeg)).size == (336, 336)


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        (b'{"choices": [{"message": {"content": null}}]}', "invalid", "no text answer"),
        (b'{"error": "CUDA out of memory", "code": 424}', "failed", "server error in body: CUDA out of memory"),
        (b"[1, 2]", "failed", "malformed response (no choices): [1, 2]"),
        (b'{"choices": [{"message": {"content": "this is a photo of seven."}}]}', "ok", None),
    ],
)
def test_parse_response_edge_cases(payload, status, error):
    result = parse_response("k", payload, TAXONOMY)
    assert (result.status, result.error) == (status, error)
    if status == "ok":
        assert result.label == "7" and result.prompt_tokens is None


# --- SageMaker runtime, through the Amazon provider's hook with a botocore Stubber on its client ---------------


@pytest.fixture
def stubbed_sagemaker(monkeypatch):
    """Queue responses for the client the hook builds; yields (queue, clients built)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.stub import Stubber

    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {"region_name": "us-east-1"}}
        ),
    )
    queue: list[tuple[str, dict]] = []
    stubbers: list[Stubber] = []
    real_get_conn = AwsBaseHook.get_conn

    def get_conn(self):
        client = real_get_conn(self)
        stubber = Stubber(client)
        for kind, kwargs in queue:
            getattr(stubber, kind)("invoke_endpoint", **kwargs)
        stubber.activate()
        stubbers.append(stubber)
        return client

    monkeypatch.setattr(AwsBaseHook, "get_conn", get_conn)
    yield queue, stubbers
    for stubber in stubbers:
        stubber.assert_no_pending_responses()


def sagemaker_ok(expected_params: dict | None = None) -> tuple[str, dict]:
    from botocore.response import StreamingBody

    body = ok_body()
    response = {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}
    return "add_response", {"service_response": response, "expected_params": expected_params}


def sagemaker_error(code: str, status: int, **modeled) -> tuple[str, dict]:
    kwargs = {"service_error_code": code, "service_message": f"scripted {code}", "http_status_code": status}
    return "add_client_error", kwargs | ({"modeled_fields": modeled} if modeled else {})


def sagemaker_client() -> EndpointClient:
    spec = EndpointSpec("sagemaker_runtime", endpoint_name="llava-v3", **FAST)
    return EndpointClient(spec, TAXONOMY)


def test_sagemaker_success_sends_the_exact_body(stubbed_sagemaker):
    queue, stubbers = stubbed_sagemaker
    image = sized_image(800, 600)
    client = sagemaker_client()
    body = build_request(client.prompt, encode_image(image, client.policy), client.spec, client.choices)
    queue.append(
        sagemaker_ok(
            {
                "EndpointName": "llava-v3",
                "ContentType": "application/json",
                "Accept": "application/json",
                "Body": json.dumps(body).encode(),
            }
        )
    )
    result = client.classify(image, key="s3://bucket/a.jpg")
    assert (result.status, result.label, result.attempts, result.prompt_tokens) == ("ok", "3", 1, 80)
    config = stubbers[0].client.meta.config
    assert config.retries["total_max_attempts"] == 1 and config.read_timeout == CLIENT_TIMEOUT_S


def test_sagemaker_throttling_and_overloaded_model_are_retried(stubbed_sagemaker):
    queue, _ = stubbed_sagemaker
    queue += [
        sagemaker_error("ThrottlingException", 400),
        sagemaker_error("ModelError", 424, OriginalStatusCode=503, OriginalMessage="busy"),
        sagemaker_ok(),
    ]
    result = sagemaker_client().classify(sized_image(64, 48))
    assert (result.status, result.attempts) == ("ok", 3)


def test_sagemaker_model_error_from_a_bad_request_is_not_retried(stubbed_sagemaker):
    queue, _ = stubbed_sagemaker
    queue.append(sagemaker_error("ModelError", 424, OriginalStatusCode=424, OriginalMessage="Input parsing failed"))
    result = sagemaker_client().classify(sized_image(64, 48))
    assert (result.status, result.attempts) == ("failed", 1)
    assert result.error == "ModelError (model returned 424): Input parsing failed"


def test_sagemaker_gives_up_after_the_retry_budget(stubbed_sagemaker):
    queue, _ = stubbed_sagemaker
    queue += [sagemaker_error("ThrottlingException", 400)] * 3
    result = sagemaker_client().classify(sized_image(64, 48))
    assert (result.status, result.attempts) == ("failed", 3)
    assert result.error == "ThrottlingException: scripted ThrottlingException (gave up after 3 attempts)"


def test_a_bug_on_one_image_is_recorded_not_raised(server):
    inputs = [("fine", sized_image(40, 20)), ("not-bytes", "a str where bytes belong")]
    results = {r.key: r for r in asyncio.run(collect(http_client(server), inputs, concurrency=2))}
    assert results["fine"].status == "ok"
    assert results["not-bytes"].status == "failed" and results["not-bytes"].error.startswith("internal error: ")


# --- issue 9: retries that make sense, Retry-After, the circuit breaker ------------------------------------------


@pytest.mark.parametrize(
    ("width", "expected"),
    [(50, ("ok", 2)), (51, ("ok", 2)), (47, ("invalid", 2)), (45, ("failed", 3)), (46, ("failed", 3))],
)
def test_malformed_200s_are_retried_and_invalid_answers_asked_once_more(server, width, expected):
    result = http_client(server).classify(sized_image(width, 20), key="x")
    assert (result.status, result.attempts) == expected, result


def test_retry_after_is_honoured(server):
    started = time.monotonic()
    result = http_client(server).classify(sized_image(52, 20), key="x")
    assert (result.status, result.attempts) == ("ok", 2)
    assert time.monotonic() - started >= RETRY_AFTER_S  # jittered backoff alone would be <= 0.05 s


def test_retry_after_parsing():
    now = 1_800_000_000.0
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds("86400") == RETRY_AFTER_MAX_S  # capped
    assert retry_after_seconds(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7.0)
    assert retry_after_seconds(email.utils.formatdate(now - 7, usegmt=True), now=now) == 0.0
    assert (
        retry_after_seconds("soon") is None and retry_after_seconds(None) is None and retry_after_seconds("nan") is None
    )


@contextlib.contextmanager
def hung_endpoint() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers: a hung endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_hung_endpoint_fails_the_shard_within_the_stated_bound():
    timeout_s, backoff_max_s, concurrency, breaker = 0.2, 0.05, 4, 8
    bound = math.ceil(breaker / concurrency) * (timeout_s + backoff_max_s)  # the module docstring's formula
    with hung_endpoint() as url:
        spec = EndpointSpec(
            "openai_http", url=url, timeout_s=timeout_s, max_retries=4, backoff_base_s=0.01, backoff_max_s=backoff_max_s
        )
        client = EndpointClient(spec, TAXONOMY, policy=NO_BUDGET, max_consecutive_failures=breaker)
        images = [(f"img-{i}", sized_image(40, 16 + i % 40)) for i in range(500)]
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable, match=r"failed 8 requests in a row.*timeout"):
            asyncio.run(collect(client, images, concurrency=concurrency))
        elapsed = time.monotonic() - started
    # Slack for a loaded machine (two test workers, a vLLM start); without the breaker: 500/4 x 5 x 0.2 s = 125 s
    assert elapsed < bound + 5.0, (elapsed, bound)


def test_an_endpoint_refusing_every_request_fails_without_retries(server):
    images = [(f"img-{i}", sized_image(48, 16 + i)) for i in range(30)]  # width 48: HTTP 400
    with pytest.raises(EndpointRefuses, match="not retryable") as info:
        asyncio.run(collect(http_client(server, breaker=5), images, concurrency=2))
    assert isinstance(info.value, AirflowFailException)


def test_the_breaker_closes_when_the_endpoint_answers(server):
    widths = [44, 40] * 20  # each 503-image fails 3 requests, then an ok image answers
    images = [(f"img-{i}", sized_image(w, 16 + i)) for i, w in enumerate(widths)]
    # No scripted sleep here: a generous timeout, so a loaded machine cannot turn an ok answer into a 4th failure.
    results = asyncio.run(collect(http_client(server, breaker=4, timeout_s=30.0), images, concurrency=1))
    assert Counter(r.status for r in results) == {"failed": 20, "ok": 20}
