"""How a model version is served: DJL LMI `serving.properties` for SageMaker, a managed `transformers serve` locally.

Production runs vLLM inside AWS's DJL LMI container; its only configuration is `serving.properties`, rendered here
from one typed `ServingConfig` per model version. Locally the same OpenAI-compatible chat API comes from a detached
`transformers serve` process whose pid/port live in a small JSON state file, so any task can find, reuse or stop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from tasks.settings import INCLUDE_DIR

DJL_IMAGE_TABLE = INCLUDE_DIR / "serving" / "djl_lmi_image.json"
SERVING_PROPERTIES_TEMPLATE = INCLUDE_DIR / "serving" / "serving.properties"
# LMI async mode passes vLLM-native request fields through (`structured_outputs`); rolling-batch mode does not.
ASYNC_ENTRYPOINT = "djl_python.lmi_vllm.vllm_async_service"
ARCHIVE_DIR = "code"  # model.tar.gz holds code/serving.properties; SageMaker unpacks it under /opt/ml/model

OptionValue = str | int | float | bool


@dataclass(frozen=True)
class ServingConfig:
    """Everything that goes into `serving.properties` for one model version.

    `enable_prefix_caching=None` leaves vLLM's default: LMI drops `false` booleans instead of passing them on, so
    only `True` is a real setting. `extra_options` are any further vLLM engine args / LMI options (`option.`
    prefix optional) and win over the fields above.
    """

    model_uri: str  # S3 prefix of the promoted model (uncompressed weights + processor)
    tensor_parallel_degree: int | str = "max"
    max_rolling_batch_size: int = 64
    model_loading_timeout_s: int = 600
    max_model_len: int = 7200
    async_mode: bool = False
    enable_prefix_caching: bool | None = None
    limit_mm_per_prompt: Mapping[str, int] | None = None  # e.g. {"image": 1}; vLLM's default is 1 per modality
    extra_options: Mapping[str, OptionValue] = field(default_factory=dict)

    @property
    def supports_choice(self) -> bool:
        """Whether requests may carry `structured_outputs: {"choice": [...]}` (LMI async mode only)."""
        return self.async_mode

    def options(self) -> dict[str, str]:
        """The `option.*` entries, without the prefix, in a stable order."""
        opts: dict[str, OptionValue] = {
            "model_id": self.model_uri,
            "rolling_batch": "disable" if self.async_mode else "vllm",
            "tensor_parallel_degree": self.tensor_parallel_degree,
            "max_rolling_batch_size": self.max_rolling_batch_size,
            "model_loading_timeout": self.model_loading_timeout_s,
            "max_model_len": self.max_model_len,
        }
        if self.async_mode:
            opts |= {"async_mode": True, "entryPoint": ASYNC_ENTRYPOINT}
        if self.enable_prefix_caching:
            opts["enable_prefix_caching"] = True
        if self.limit_mm_per_prompt is not None:
            opts["limit_mm_per_prompt"] = json.dumps(dict(self.limit_mm_per_prompt), separators=(",", ":"))
        opts |= {key.removeprefix("option."): value for key, value in self.extra_options.items()}
        return {key: _property_value(key, value) for key, value in opts.items()}


def _property_value(key: str, value: OptionValue) -> str:
    """Java-properties-safe text: a key or value that would be split or cut short is refused, not escaped."""
    if not key or any(c in key for c in "=: \t\r\n#!\\"):
        raise ValueError(f"invalid serving.properties key {key!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if any(c in text for c in "\r\n\\") or text != text.strip() or not text:
        raise ValueError(f"invalid value for option.{key}: {text!r}")
    return text


def render_serving_properties(config: ServingConfig) -> str:
    """The file's layout lives in the shipped template (include/serving/); its values come from `config`."""
    import jinja2

    template = jinja2.Template(SERVING_PROPERTIES_TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    return template.render(options=config.options())


def package_model_tar(serving_properties: str) -> bytes:
    """model.tar.gz for SageMaker `ModelDataUrl`: `code/serving.properties` only (weights come from model_id).

    Byte-for-byte reproducible (fixed mtimes, no owner names), so the same configuration uploads the same object.
    """
    data = serving_properties.encode("utf-8")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(ARCHIVE_DIR)
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        member = tarfile.TarInfo(f"{ARCHIVE_DIR}/serving.properties")
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def djl_lmi_image_uri(region: str) -> str:
    """The DJL LMI (vLLM) container for `region`, from the committed table (see its `_source`)."""
    from tasks.ecr_images import ecr_image_uri

    return ecr_image_uri(DJL_IMAGE_TABLE, region)


# --- the local backend: one managed `transformers serve` process -------------------------------------------------


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


def start_local_server(
    model_dir: Path | str, state_path: Path | str, port: int | None = None, *, ready_timeout_s: float = 120.0
) -> ServerInfo:
    """Ensure a healthy `transformers serve` for `model_dir` is running; idempotent.

    A healthy server for the same model is reused; one that is dead, unhealthy or serving another model is
    stopped and replaced. The positional model argument pins and preloads the model, which also disables
    `--model-timeout` unloading (transformers' ModelManager sets the timeout to -1 for a pinned model).
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
    log_path = state_path.with_suffix(".log")
    command = [_transformers_cli(), "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
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
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {ready_timeout_s}s"
            )
            _stop_locked(state_path)
            raise RuntimeError(f"transformers serve {reason}; last log lines:\n{_tail(log_path)}")
        time.sleep(0.5)
    return info


def _stop_locked(state_path: Path, timeout_s: float = 15.0) -> bool:
    info = _read_state(state_path)
    stopped = False
    # Members left in the group after the leader died are ours too: Linux never reuses a live group's id as a pid.
    if info is not None and (_alive(info) or _group_members(info.pid)):
        _signal_group(info.pid, signal.SIGTERM)
        if not _wait_gone(info, timeout_s):
            _signal_group(info.pid, signal.SIGKILL)
            _wait_gone(info, timeout_s)
        stopped = True
    state_path.unlink(missing_ok=True)
    return stopped


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(info: ServerInfo, timeout_s: float) -> bool:
    """Wait until no process of the group is left (reaping the leader when it is our own child)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_members(info.pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)
            return True
        time.sleep(0.1)
    return False


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
    return members


def _alive(info: ServerInfo) -> bool:
    try:
        proc = psutil.Process(info.pid)
        return abs(proc.create_time() - info.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serves(info: ServerInfo, timeout_s: float) -> bool:
    """The API answers and lists exactly the recorded model (the pinned model is loaded before it listens)."""
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


def _transformers_cli() -> str:
    """The `transformers` console script of this interpreter's environment (PATH may not include the venv)."""
    found = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if found is None:
        raise FileNotFoundError("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    return found


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
