"""A real misbehaving chat-completions server on loopback, shared by the endpoint client and classification tests.

An image's width picks its script (what the server answers on each attempt), so a test knows each image's fate.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

# The client's timeout must outlast a normal answer on a saturated machine (0.3 s did not: an "ok" came late and was
# asked a third time; 1.0 s did not either, beside two test workers and a vLLM start), and a "sleep" answer must
# outlast the timeout by as much again.
CLIENT_TIMEOUT_S = 2.0
SLOW_S = 6.0  # a "sleep" answer arrives after the client has given up
FAST = {"timeout_s": CLIENT_TIMEOUT_S, "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05}


def ok_body(answer: str = "this is a photo of 3.", logprobs: dict | None = None) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
    return json.dumps(
        {
            "object": "chat.completion",
            "choices": [choice | ({"logprobs": logprobs} if logprobs else {})],
            "usage": {"prompt_tokens": 80, "completion_tokens": 7, "total_tokens": 87},
        }
    ).encode()


def vllm_logprobs(decision: dict[int, float], chosen: int, forced: tuple[int, ...] = (5, 6, 7)) -> dict:
    """A choice's `logprobs` as vLLM returns them with `return_tokens_as_token_ids` under the label constraint
    (chat_completion/serving.py `_create_chat_logprobs`): forced tokens at log-probability 0 (their masked
    alternatives clamped to -9999.0), then the decision token with its alternatives, most likely first."""

    def entry(token: int, logprob: float, top: list[tuple[int, float]]) -> dict:
        alternatives = [{"token": f"token_id:{t}", "logprob": lp, "bytes": []} for t, lp in top]
        return {"token": f"token_id:{token}", "logprob": logprob, "bytes": [], "top_logprobs": alternatives}

    ranked = sorted(decision.items(), key=lambda item: -item[1])
    content = [entry(t, 0.0, [(t, 0.0), (t + 100, -9999.0)]) for t in forced]
    return {"content": [*content, entry(chosen, decision[chosen], ranked), entry(2, 0.0, [(2, 0.0)])]}


# An image's width picks its script: what the server answers on the 1st, 2nd, ... attempt (the last step repeats).
SCRIPTS: dict[int, list[str]] = {
    40: ["ok"],
    41: ["429", "429", "ok"],
    42: ["500", "ok"],
    43: ["sleep", "ok"],
    44: ["503"],
    45: ["garbage"],
    46: ["no_choices"],
    47: ["bad_answer"],
    48: ["400"],
    49: ["sleep"],
    50: ["truncated", "ok"],
    51: ["bad_answer", "ok"],
    52: ["503_retry_after", "ok"],
}
# width -> (status, attempts); the client makes at most 1 + max_retries = 3 attempts
EXPECTED = {
    40: ("ok", 1),
    41: ("ok", 3),
    42: ("ok", 2),
    43: ("ok", 2),
    44: ("failed", 3),
    45: ("failed", 3),  # a malformed 200 is a server fault: retried like a 5xx
    46: ("failed", 3),
    47: ("invalid", 2),  # an out-of-taxonomy answer is asked once more before it is recorded
    48: ("failed", 1),
    49: ("failed", 3),
    50: ("ok", 2),
    51: ("ok", 2),
    52: ("ok", 2),
}
RETRY_AFTER_S = 0.4  # what a "503_retry_after" answer asks for


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.lock = threading.Lock()
        self.attempts: Counter[tuple[int, int]] = Counter()
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        url = body["messages"][0]["content"][1]["image_url"]["url"]
        size = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
        with srv.lock:
            srv.bodies.append(body)
            srv.attempts[size] += 1
            script = SCRIPTS[size[0]]
            step = script[min(srv.attempts[size], len(script)) - 1]
        # A "sleep" request outlives the client's timeout: the client has moved on, so it is not counted in flight.
        counted = step != "sleep"
        with srv.lock:
            srv.in_flight += counted
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            time.sleep(0.02)  # long enough for requests to overlap
            self._answer(step)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and hung up
        finally:
            with srv.lock:
                srv.in_flight -= counted

    def _answer(self, step: str) -> None:
        if step == "sleep":
            time.sleep(SLOW_S)
            step = "ok"
        status, payload = {
            "ok": (200, ok_body()),
            "bad_answer": (200, ok_body("a cat, probably")),
            "garbage": (200, b"<html>upstream proxy error</html>"),
            "no_choices": (200, b'{"object": "chat.completion", "choices": []}'),
            "truncated": (200, ok_body()[:40]),
        }.get(step, (int(step) if step.isdigit() else 500, b'{"error": "scripted"}'))
        self.send_response(503 if step == "503_retry_after" else status)
        if step == "503_retry_after":
            self.send_header("Retry-After", str(RETRY_AFTER_S))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def sized_image(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (width, 2 * height % 256, 99)).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
