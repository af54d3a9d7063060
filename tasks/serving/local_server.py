"""The local backend's server: one detached vLLM OpenAI-compatible server (vLLM's CPU build, from `.venvs/serving`)
serving the same chat API as production's DJL LMI container, whose pid/port live in a small JSON state file, so any
task can find, reuse or stop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from tasks.common.processes import group_members, stop_group
from tasks.common.runtimes import runtime_executable
from tasks.model.vision_tokens import VisionGeometry, image_tokens


class ServerExited(RuntimeError):
    """The server exited before it was ready. It exits the same way again for the same model and environment (a model
    it cannot load, a broken engine environment), so a retry would only spend another minute of start-up."""


@dataclass(frozen=True)
class ServerInfo:
    """What the state file records about a running local server."""

    pid: int  # also its process group id: the server runs in a session of its own
    port: int
    model_dir: str
    started_at: str
    create_time: float  # the process's start time: a recycled pid is never mistaken for our server
    log_path: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Until the API answers for the model: vLLM takes 49-97 s on 2 cores (engine core and worker processes, a torch.compile
# warm-up, the KV cache); a process that exits fails the wait at once. 600 s leaves a saturated machine room many times
# over; past it the server is stuck, not slow.
READY_DEADLINE_S = 600.0
# vLLM's KV cache on the CPU in GiB (VLLM_CPU_KVCACHE_SPACE: vllm/platforms/cpu.py at v0.32.0 sets
# kv_cache_memory_bytes from it). The tiny model's 2 layers x 128 dims in float32 take 2 KiB a token: 1 GiB holds
# ~500k tokens, far beyond 8 requests at once.
KV_CACHE_GIB = 1
# The label constraint's engine. vLLM's default for a choice (xgrammar) allows any token whose text starts a valid
# continuation, even one no token can finish: the tiny model's word-level vocabulary (no byte fallback) has a bare
# space token (from "[INST] <image>") but no "is", so after "this" + " " nothing is allowed and vLLM answers HTTP 500
# ("grammar rejected tokens", vllm/v1/core/sched/scheduler.py at v0.32.0). Measured on the untrained tiny model,
# 36 images: xgrammar 19 errors, llguidance 36 labels (it allows only tokens the answer can still be finished from).
# Production's Mistral tokenizer has byte fallback, so any continuation can be spelled and xgrammar cannot dead-end.
STRUCTURED_OUTPUTS_BACKEND = "guidance"
# Text tokens beside the image in the longest request: the prompt and chat template (53 with the digits taxonomy's
# prompt on the tiny tokenizer) and the answer (max_tokens, 32). Production-length prompts fit too.
TEXT_TOKENS = 256


def start_local_server(
    model_dir: Path | str, state_path: Path | str, port: int | None = None, *, ready_timeout_s: float = READY_DEADLINE_S
) -> ServerInfo:
    """Ensure a healthy vLLM server for `model_dir` is running; idempotent.

    A healthy server for the same model is reused; one that is dead, unhealthy or serving another model is
    stopped and replaced. vLLM loads its one model before it listens, and never unloads it.
    """
    model_dir, state_path = str(Path(model_dir).resolve()), Path(state_path)
    if not Path(model_dir, "config.json").is_file():
        raise FileNotFoundError(f"no model at {model_dir} (config.json missing)")
    with _locked(state_path):
        current = local_server_status(state_path)
        if current is not None and current.model_dir == model_dir and port in (None, current.port):
            return current
        _stop_locked(state_path)
        return _launch(model_dir, state_path, port or _free_port(), ready_timeout_s)


def local_server_status(state_path: Path | str) -> ServerInfo | None:
    """The recorded server if its process is alive and its API answers for the recorded model, else None."""
    info = _read_state(Path(state_path))
    if info is None or not _alive(info):
        return None
    return info if _serves(info, timeout_s=2.0) else None


def stop_local_server(state_path: Path | str, *, timeout_s: float = 15.0) -> bool:
    """Stop the recorded server's whole process group and forget it; True when a live server was stopped."""
    state_path = Path(state_path)
    with _locked(state_path):
        return _stop_locked(state_path, timeout_s=timeout_s)


def _launch(model_dir: str, state_path: Path, port: int, ready_timeout_s: float) -> ServerInfo:
    log_path, tmp_dir = state_path.with_suffix(".log"), _tmp_dir(state_path)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    python = runtime_executable("serving")  # the engine's own environment, not Airflow's
    # `vllm serve` fails in vllm-cpu (its console script looks up the distribution "vllm"): the module is the same
    # server (vllm/entrypoints/openai/api_server.py, v0.32.0).
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    command += ["--max-model-len", str(max_model_len(model_dir)), "--limit-mm-per-prompt", '{"image": 1}']
    command += ["--structured-outputs-config", json.dumps({"backend": STRUCTURED_OUTPUTS_BACKEND})]
    cache = state_path.parent / "vllm-cache"  # kept across starts: a restart reuses the compiled model
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB),
        "VLLM_CACHE_ROOT": str(cache),  # else ~/.cache/vllm
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),  # else $TMPDIR/torchinductor_$USER
        "TMPDIR": str(tmp_dir),  # vLLM leaves a vllm_dist_* file per start there
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    info = ServerInfo(
        pid=proc.pid,
        port=port,
        model_dir=model_dir,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        create_time=psutil.Process(proc.pid).create_time(),
        log_path=str(log_path),
    )
    _write_state(state_path, info)  # recorded first, so a failed start can still be cleaned up
    deadline = time.monotonic() + ready_timeout_s
    while not _serves(info, timeout_s=2.0):
        if proc.poll() is not None:
            _stop_locked(state_path)
            why = f"vLLM exited with {proc.returncode} before it was ready"
            raise ServerExited(f"{why}; last log lines:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            _stop_locked(state_path)
            raise RuntimeError(f"vLLM not ready in {ready_timeout_s}s; last log lines:\n{_tail(log_path)}")
        time.sleep(0.5)
    return info


def _stop_locked(state_path: Path, timeout_s: float = 15.0) -> bool:
    info = _read_state(state_path)
    stopped = False
    # Members left in the group after the leader died are ours too: Linux never reuses a live group's id as a pid.
    if info is not None and (_alive(info) or group_members(info.pid)):
        stop_group(info.pid, grace_s=timeout_s)
        stopped = True
    state_path.unlink(missing_ok=True)
    shutil.rmtree(_tmp_dir(state_path), ignore_errors=True)
    return stopped


def model_geometry(model_dir: Path | str) -> VisionGeometry:
    """The vision geometry a LLaVA-NeXT model directory's config.json describes (CLIP: one CLS token)."""
    config = _config(model_dir)
    vision = config["vision_config"]
    return VisionGeometry(
        tile_size=vision["image_size"],
        patch_size=vision["patch_size"],
        grid_pinpoints=tuple(tuple(pin) for pin in config["image_grid_pinpoints"]),
        feature_select_strategy=config["vision_feature_select_strategy"],
    )


def max_model_len(model_dir: Path | str) -> int:
    """The longest request the model can get: its largest image (the biggest pinpoint) plus TEXT_TOKENS, within the
    model's own context length. vLLM allows `max_model_len // largest image's tokens` images a request
    (vllm/multimodal/encoder_budget.py at v0.32.0): a shorter context would admit no image at all."""
    geometry = model_geometry(model_dir)
    largest = max(image_tokens(w, h, geometry) for h, w in geometry.grid_pinpoints)
    return min(largest + TEXT_TOKENS, _config(model_dir)["text_config"]["max_position_embeddings"])


def _config(model_dir: Path | str) -> dict:
    return json.loads(Path(model_dir, "config.json").read_text(encoding="utf-8"))


def _tmp_dir(state_path: Path) -> Path:
    """The server's TMPDIR, emptied at each start and removed at stop: one per state file, in the system's temp folder
    with a short name, because vLLM puts its ZeroMQ sockets there (`VLLM_RPC_BASE_PATH` defaults to it,
    vllm/utils/network_utils.py at v0.32.0) and a socket path must stay under 108 bytes: one beside a deep storage
    root's state file is too long."""
    digest = hashlib.sha256(str(state_path.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llava-vllm-{digest}"


def _alive(info: ServerInfo) -> bool:
    try:
        proc = psutil.Process(info.pid)
        return abs(proc.create_time() - info.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serves(info: ServerInfo, timeout_s: float) -> bool:
    """The API answers and lists exactly the recorded model (vLLM loads it before it listens; the model id is the
    `--model` path)."""
    try:
        response = httpx.get(f"{info.base_url}/v1/models", timeout=timeout_s)
        models = [m.get("id") for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return response.status_code == 200 and models == [info.model_dir]


def _read_state(state_path: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(state_path.read_text(encoding="utf-8")))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _write_state(state_path: Path, info: ServerInfo) -> None:
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_path)


@contextlib.contextmanager
def _locked(state_path: Path) -> Iterator[None]:
    """One start/stop at a time per state file, across processes (two tasks must not both launch a server)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(state_path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
