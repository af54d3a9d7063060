"""`serving.properties` for the DJL LMI container, rendered from one typed `ServingConfig` per model version, and the
`model.tar.gz` that carries it.

Production runs vLLM inside AWS's DJL LMI container; its only configuration is `serving.properties`. The LMI mode's
options and the syntax of flags whose format changed between vLLM versions come from the declared serving runtime
(tasks/serving/runtime.py). LMI silently drops an `option.X` that is neither its own nor a vLLM EngineArgs field;
tests/contract/ checks that none of the rendered ones is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tasks.common.archives import reproducible_tar_gz
from tasks.common.settings import INCLUDE_DIR
from tasks.serving.runtime import serving_runtime

SERVING_PROPERTIES_TEMPLATE = INCLUDE_DIR / "serving" / "serving.properties"
ARCHIVE_DIR = "code"  # model.tar.gz holds code/serving.properties; SageMaker unpacks it under /opt/ml/model

OptionValue = str | int | float | bool


@dataclass(frozen=True)
class ServingConfig:
    """Everything that goes into `serving.properties` for one model version.

    `tensor_parallel_degree` and `max_rolling_batch_size` are LMI's names (it resolves `max` to the GPU count and
    passes them to vLLM as tensor_parallel_size and max_num_seqs). `enable_prefix_caching=None` leaves vLLM's
    default. `extra_options` are any further vLLM engine args / LMI options (`option.` prefix optional) and win over
    the fields above.
    """

    model_uri: str  # S3 prefix of the promoted model (uncompressed weights + processor)
    tensor_parallel_degree: int | str = "max"
    max_rolling_batch_size: int = 64
    # LMI's own default: the image sets MODEL_LOADING_TIMEOUT=1200 (djl-serving 0.36.0-lmi27-dlc,
    # serving/docker/lmi.Dockerfile), read by PyModel.java as the Python worker's load timeout. Loading ~15 GB,
    # vLLM's compile and CUDA-graph capture on a 4-vCPU ml.g5.xlarge need it; 600 s halved it. It bounds
    # Batch Transform's start-up too, and SageMaker's health-check and download timeouts follow it (+300 s).
    model_loading_timeout_s: int = 1200
    max_model_len: int = 7200
    enable_prefix_caching: bool | None = None
    limit_mm_per_prompt: Mapping[str, int] | None = None  # e.g. {"image": 1}; vLLM's default is 1 per modality
    extra_options: Mapping[str, OptionValue] = field(default_factory=dict)

    def options(self) -> dict[str, str]:
        """The `option.*` entries, without the prefix, in a stable order."""
        runtime = serving_runtime()
        opts: dict[str, OptionValue] = {
            "model_id": self.model_uri,
            **runtime.mode_options,
            "tensor_parallel_degree": self.tensor_parallel_degree,
            "max_rolling_batch_size": self.max_rolling_batch_size,
            "model_loading_timeout": self.model_loading_timeout_s,
            "max_model_len": self.max_model_len,
        }
        if self.enable_prefix_caching:
            opts["enable_prefix_caching"] = True
        if self.limit_mm_per_prompt is not None:
            opts["limit_mm_per_prompt"] = runtime.format_mapping(dict(self.limit_mm_per_prompt))
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
    files = [(f"{ARCHIVE_DIR}/serving.properties", serving_properties.encode("utf-8"))]
    return reproducible_tar_gz(files, directories=[ARCHIVE_DIR])
