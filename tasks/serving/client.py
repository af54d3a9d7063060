"""Classify images through a served LLaVA-NeXT: one client, two transports (SageMaker runtime | OpenAI-compatible HTTP).

Both speak the chat-completions schema, so request building, retries and response parsing exist once. Every image
yields exactly one `ClassificationResult` (ok | invalid | rejected | failed): a nightly run can account for each
input, and no bad image, throttled call or garbage body ends a run with an exception.

Retries: throttling, 5xx, timeouts and malformed or truncated 200 bodies are retried with full-jitter backoff, or
after the server's `Retry-After` (capped at RETRY_AFTER_MAX_S); an out-of-taxonomy answer is asked once more before
it is recorded `invalid`. A circuit breaker ends the stream with EndpointUnavailable after `max_consecutive_failures`
failed requests in a row, so a hung endpoint fails a shard in about
ceil(max_consecutive_failures / concurrency) x (timeout_s + backoff_max_s) instead of hours.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import httpx
from airflow.sdk.exceptions import AirflowFailException

from tasks.model.calibration import Calibration
from tasks.model.images import ImageRejected, decode_slot, load_image
from tasks.model.taxonomy import Taxonomy
from tasks.model.vision_tokens import DEFAULT_POLICY, ResizePolicy, prepare_image
from tasks.serving.confidence import served_confidence
from tasks.serving.runtime import serving_runtime

Status = Literal["ok", "invalid", "rejected", "failed"]
JPEG_QUALITY = 90
_RETRYABLE_HTTP = {429, 500, 502, 503, 504}
_RETRYABLE_SAGEMAKER = {"ThrottlingException", "ServiceUnavailable", "InternalFailure", "ModelNotReadyException"}
_END = object()
RETRY_AFTER_MAX_S = 60.0  # a server asking for longer is retried after this (the breaker bounds the total)
DEFAULT_MAX_CONSECUTIVE_FAILURES = 20  # at 20% independent faults, 20 failures in a row happen with p = 1e-14
INVALID_ANSWER_RETRIES = 1  # an out-of-taxonomy answer is asked once more: glitches are transient, models are not


@dataclass(frozen=True)
class EndpointSpec:
    """Where and how to send requests: `url` for an OpenAI-compatible HTTP server, `endpoint_name` for a SageMaker
    endpoint reached through the sagemaker-runtime API."""

    transport: Literal["openai_http", "sagemaker_runtime"]
    url: str | None = None  # base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000
    endpoint_name: str | None = None
    aws_conn_id: str = "aws_default"
    model: str | None = None  # the request's `model` field; LMI and the local vLLM need none
    # The server is the serving runtime's vLLM (LMI's async mode, or the local backend's vLLM): it honours the label
    # constraint and returns the decision token's log-probabilities.
    supports_choice: bool = False
    max_tokens: int = 32  # the longest answer ("this is a photo of …") is ~15 tokens
    timeout_s: float = 60.0  # per attempt (SageMaker's own limit for a real-time invocation is 60 s)
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r}; known: {', '.join(TRANSPORTS)}")
        needed = TRANSPORTS[self.transport].needs
        if not getattr(self, needed):
            raise ValueError(f"transport {self.transport} needs {needed}")


@dataclass(frozen=True)
class ClassificationResult:
    key: str  # the caller's id of the image (e.g. its storage path)
    status: Status  # ok: label parsed | invalid: answer is not a label | rejected: bad image | failed: no answer
    label: str | None = None
    raw_answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None  # the last attempt's round trip
    elapsed_s: float = 0.0  # everything: preparing the image, all attempts, backoff
    attempts: int = 0
    error: str | None = None
    confidence: float | None = None  # calibrated probability of `label` (tasks.serving.confidence); None: not known
    runner_up: str | None = None  # the next most probable label
    margin: float | None = None  # confidence minus the runner-up's probability


class RequestError(Exception):
    """One failed attempt; `retryable` for throttling, server errors, timeouts and malformed bodies. `retry_after`:
    the server's Retry-After in seconds (capped), when it sent one."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.retry_after = retry_after


class EndpointUnavailable(RuntimeError):
    """The circuit breaker opened: the endpoint failed too many requests in a row. Ends the shard early; the task's
    own retries (minutes apart) give a recovering endpoint another chance."""


class EndpointRefuses(AirflowFailException):
    """The breaker opened on errors that retrying cannot fix (e.g. 4xx for every request): fail without retries."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP-date) as seconds to wait, within [0, RETRY_AFTER_MAX_S]."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


class Transport(Protocol):
    async def post(self, body: bytes) -> bytes: ...  # raises RequestError
    async def aclose(self) -> None: ...


def encode_image(data: bytes, policy: ResizePolicy) -> bytes:
    """Decode (or raise ImageRejected), resize to the token budget, and re-encode as JPEG; inside a decode slot, so
    at most DECODE_SLOTS full-size images exist per process whatever the request concurrency."""
    buf = io.BytesIO()
    with decode_slot():
        prepare_image(load_image(data), policy).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def build_request(prompt: str, jpeg: bytes, spec: EndpointSpec, choices: list[str] | None = None) -> dict[str, Any]:
    """The chat-completions body; where the server supports it, `choices` constrain the answer and the decision
    token's log-probabilities come back with it."""
    image_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}],
            }
        ],
        "max_tokens": spec.max_tokens,
        "temperature": 0,
    }
    if spec.model:
        body["model"] = spec.model
    if choices and spec.supports_choice:
        runtime = serving_runtime()  # the fields that runtime's vLLM honours
        body |= runtime.label_constraint(choices) | runtime.confidence_request(len(choices))
    return body


def parse_response(
    key: str, payload: bytes, taxonomy: Taxonomy, calibration: Calibration | None = None
) -> ClassificationResult:
    """Strictly parse a chat.completion body. A malformed body is `failed`; an answer that is not exactly one of
    the taxonomy's answers is `invalid` (the same parser as evaluation, so "invalid" means one thing). An `ok`
    answer carries its calibrated confidence when the body has the decision token's log-probabilities and the
    ranking agrees with the answer."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return ClassificationResult(key, "failed", error=f"malformed response (not JSON): {_snippet(payload)}")
    try:
        message = doc["choices"][0]["message"]
        usage = doc.get("usage") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        detail = doc.get("error") if isinstance(doc, dict) else None
        reason = (
            f"server error in body: {detail}" if detail else f"malformed response (no choices): {_snippet(payload)}"
        )
        return ClassificationResult(key, "failed", error=reason)
    answer = message.get("content") if isinstance(message, dict) else None
    tokens = {
        "prompt_tokens": _int_or_none(usage.get("prompt_tokens")),
        "completion_tokens": _int_or_none(usage.get("completion_tokens")),
    }
    if not isinstance(answer, str):
        return ClassificationResult(key, "invalid", error="no text answer", **tokens)
    label = taxonomy.parse_answer(answer)
    if label is None:
        finish = doc["choices"][0].get("finish_reason")
        return ClassificationResult(
            key, "invalid", raw_answer=answer, error=f"answer is not a label (finish_reason={finish})", **tokens
        )
    ranked = served_confidence(doc["choices"][0], calibration)
    if ranked is None or ranked.label != label:
        return ClassificationResult(key, "ok", label=label, raw_answer=answer, **tokens)
    confidence = {"confidence": ranked.confidence, "runner_up": ranked.runner_up, "margin": ranked.margin}
    return ClassificationResult(key, "ok", label=label, raw_answer=answer, **tokens, **confidence)


class EndpointClient:
    """Classify image bytes through one endpoint; see `classify` (one image) and `classify_many` (a stream)."""

    def __init__(
        self,
        spec: EndpointSpec,
        taxonomy: Taxonomy,
        *,
        policy: ResizePolicy = DEFAULT_POLICY,
        prompt: str | None = None,
        calibration: Calibration | None = None,
        max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    ) -> None:
        if max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be >= 1")
        self.spec, self.taxonomy, self.policy, self.calibration = spec, taxonomy, policy, calibration
        self.prompt = prompt if prompt is not None else taxonomy.prompt()
        self.choices = [taxonomy.answer(label) for label in taxonomy.labels]
        self.max_consecutive_failures = max_consecutive_failures
        self._failures: list[RequestError] = []  # the current run of consecutive failed requests

    def classify(self, image: bytes, key: str = "") -> ClassificationResult:
        """One image, synchronously (smoke tests, ad-hoc checks); never raises for a bad image or endpoint."""

        async def once() -> ClassificationResult:
            transport = self._transport(concurrency=1)
            try:
                return await self._classify(transport, key, image)
            finally:
                await transport.aclose()

        return asyncio.run(once())

    async def classify_many(
        self,
        images: Iterable[tuple[str, bytes]],
        *,
        concurrency: int = 8,
        on_progress: Callable[[ClassificationResult], None] | None = None,
    ) -> AsyncIterator[ClassificationResult]:
        """Yield one result per (key, image bytes), in completion order, with at most `concurrency` requests in
        flight. `images` is read lazily (in a thread, so a blocking reader does not stall the loop): at most
        `concurrency` images are held in memory at once."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        transport = self._transport(concurrency)
        source = iter(images)
        in_flight: set[asyncio.Task[ClassificationResult]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < concurrency:
                    item = await asyncio.to_thread(next, source, _END)
                    if item is _END:
                        exhausted = True
                    else:
                        in_flight.add(asyncio.create_task(self._classify(transport, *item)))
                if not in_flight:
                    return
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    result = task.result()
                    if on_progress is not None:
                        on_progress(result)
                    yield result
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await transport.aclose()

    async def _classify(self, transport: Transport, key: str, image: bytes) -> ClassificationResult:
        started = time.monotonic()
        try:
            result = await self._request(transport, key, image)
        except (EndpointUnavailable, EndpointRefuses):
            raise  # the breaker ends the stream; everything else is this image's problem
        except Exception as exc:  # a per-image bug must not end the run: it is recorded instead
            result = ClassificationResult(key, "failed", error=f"internal error: {type(exc).__name__}: {exc}")
        return replace(result, elapsed_s=round(time.monotonic() - started, 4))

    async def _request(self, transport: Transport, key: str, image: bytes) -> ClassificationResult:
        try:
            jpeg = await asyncio.to_thread(encode_image, image, self.policy)
        except ImageRejected as exc:
            return ClassificationResult(key, "rejected", error=str(exc))
        del image  # the original bytes are not needed while waiting on the endpoint
        body = json.dumps(build_request(self.prompt, jpeg, self.spec, self.choices)).encode("utf-8")
        spec = self.spec
        invalid_retries = INVALID_ANSWER_RETRIES
        for attempt in range(1, spec.max_retries + 2):
            sent = time.monotonic()
            try:
                payload = await transport.post(body)
                latency = round(time.monotonic() - sent, 4)
                result = replace(
                    parse_response(key, payload, self.taxonomy, self.calibration), latency_s=latency, attempts=attempt
                )
                if result.status == "failed":  # a 200 with a malformed or truncated body: a server fault
                    raise RequestError(result.error or "malformed response", retryable=True)
            except RequestError as exc:
                latency = round(time.monotonic() - sent, 4)
                self._failed(exc)
                if not exc.retryable or attempt > spec.max_retries:
                    gave_up = f" (gave up after {attempt} attempts)" if exc.retryable else ""
                    return ClassificationResult(
                        key, "failed", latency_s=latency, attempts=attempt, error=f"{exc}{gave_up}"
                    )
                await asyncio.sleep(self._backoff(exc, attempt))
                continue
            self._failures.clear()  # the endpoint answered: the breaker closes
            if result.status == "invalid" and invalid_retries and attempt <= spec.max_retries:
                invalid_retries -= 1
                continue
            return result
        raise AssertionError("unreachable: the last attempt always returns")

    def _backoff(self, exc: RequestError, attempt: int) -> float:
        """The server's Retry-After when it sent one; else full jitter, which spreads the retries of many throttled
        requests instead of synchronising them."""
        if exc.retry_after is not None:
            return exc.retry_after
        spec = self.spec
        return random.uniform(0, min(spec.backoff_max_s, spec.backoff_base_s * 2 ** (attempt - 1)))

    def _failed(self, exc: RequestError) -> None:
        """Count a failed request; open the breaker after `max_consecutive_failures` in a row."""
        self._failures.append(exc)
        if len(self._failures) < self.max_consecutive_failures:
            return
        failures, self._failures = self._failures, []
        message = (
            f"circuit breaker: the endpoint failed {len(failures)} requests in a row (last: {failures[-1]}); "
            "stopping this shard instead of waiting out every image"
        )
        if not any(f.retryable for f in failures):
            raise EndpointRefuses(message + " — every one was refused (not retryable): fix the endpoint or request")
        raise EndpointUnavailable(message)

    def _transport(self, concurrency: int) -> Transport:
        return TRANSPORTS[self.spec.transport](self.spec, concurrency)


class HttpTransport:
    """POST {url}/v1/chat/completions with httpx; `timeout_s` bounds each attempt end to end."""

    needs = "url"

    def __init__(self, spec: EndpointSpec, concurrency: int) -> None:
        self.spec = spec
        self.client = httpx.AsyncClient(
            base_url=str(spec.url).rstrip("/"),
            timeout=spec.timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )

    async def post(self, body: bytes) -> bytes:
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                response = await self.client.post("/v1/chat/completions", content=body)
        except (TimeoutError, httpx.TimeoutException):
            raise RequestError(f"timeout after {self.spec.timeout_s}s", retryable=True) from None
        except httpx.TransportError as exc:
            raise RequestError(f"connection error: {type(exc).__name__}: {exc}", retryable=True) from None
        if response.status_code != 200:
            retryable = response.status_code in _RETRYABLE_HTTP
            raise RequestError(
                f"HTTP {response.status_code}: {_snippet(response.content)}",
                retryable=retryable,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")) if retryable else None,
            )
        return response.content

    async def aclose(self) -> None:
        await self.client.aclose()


class SageMakerTransport:
    """`invoke_endpoint` through the Amazon provider's hook, in a thread pool sized to the concurrency (the
    default executor has only cpu+4 threads). botocore's own retries are off: retries happen once, here."""

    needs = "endpoint_name"

    def __init__(self, spec: EndpointSpec, concurrency: int) -> None:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
        from botocore.config import Config

        config = Config(
            retries={"total_max_attempts": 1},
            read_timeout=spec.timeout_s,
            connect_timeout=min(10.0, spec.timeout_s),
            max_pool_connections=concurrency,
        )
        hook = AwsBaseHook(aws_conn_id=spec.aws_conn_id, client_type="sagemaker-runtime", config=config)
        self.client = hook.get_conn()
        self.endpoint_name = spec.endpoint_name
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="invoke-endpoint")

    async def post(self, body: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._invoke, body)

    def _invoke(self, body: bytes) -> bytes:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

        try:
            response = self.client.invoke_endpoint(
                EndpointName=self.endpoint_name, ContentType="application/json", Accept="application/json", Body=body
            )
            return response["Body"].read()
        except ClientError as exc:
            raise _sagemaker_error(exc) from None
        except (ConnectionError, HTTPClientError) as exc:  # timeouts and connection failures
            raise RequestError(f"connection error: {type(exc).__name__}: {exc}", retryable=True) from None

    async def aclose(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


TRANSPORTS: dict[str, type[HttpTransport] | type[SageMakerTransport]] = {
    "openai_http": HttpTransport,
    "sagemaker_runtime": SageMakerTransport,
}


def _sagemaker_error(exc: Any) -> RequestError:
    """Throttling, 5xx and a model container answering 429/5xx are retried; a 4xx from the model is not."""
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", "")
    http_status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ModelError":
        original = _int_or_none(exc.response.get("OriginalStatusCode")) or 0
        detail = exc.response.get("OriginalMessage") or message
        retryable = original == 429 or original >= 500
        return RequestError(f"ModelError (model returned {original}): {_snippet(str(detail))}", retryable=retryable)
    retryable = code in _RETRYABLE_SAGEMAKER or http_status >= 500
    return RequestError(f"{code or 'ClientError'}: {_snippet(message)}", retryable=retryable)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _snippet(data: bytes | str, limit: int = 200) -> str:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"
