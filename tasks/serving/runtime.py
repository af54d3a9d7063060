"""The serving runtime: the DJL LMI container production endpoints run, and the vLLM and transformers inside it.

One declared file (include/serving/runtime.json, every fact with its `_source`) decides the image, the LMI mode's
`serving.properties` options, the syntax of options whose format changed between vLLM versions, and the request field
that carries the label constraint. Changing the runtime is an edit of that file plus a run of tests/contract/, which
check those facts against the runtime's own vLLM and transformers code. `PIPELINE_SERVING_RUNTIME` points at another
file (to check a candidate runtime before committing it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tasks.common.settings import INCLUDE_DIR

RUNTIME_FILE = INCLUDE_DIR / "serving" / "runtime.json"
OPTION_FORMATS = {"json", "key=value"}  # how vLLM parses a dict-valued engine flag such as limit_mm_per_prompt


@dataclass(frozen=True)
class ServingRuntime:
    path: Path
    doc: dict[str, Any]

    @property
    def tag(self) -> str:
        return self.doc["tag"]

    @property
    def vllm_version(self) -> str:
        return self.doc["vllm"]["version"]

    @property
    def transformers_version(self) -> str:
        return self.doc["transformers"]["version"]

    @property
    def mode_options(self) -> dict[str, str]:
        """The `option.*` entries that select the LMI mode (async: vLLM's own request schema)."""
        return dict(self.doc["lmi"]["mode_options"])

    def format_mapping(self, mapping: dict[str, int]) -> str:
        """A dict-valued engine flag in the syntax this vLLM version parses."""
        style = self.doc["lmi"]["limit_mm_per_prompt"]
        if style not in OPTION_FORMATS:
            raise ValueError(f"{self.path}: lmi.limit_mm_per_prompt must be one of {sorted(OPTION_FORMATS)}")
        if style == "json":
            return json.dumps(mapping, separators=(",", ":"))
        return ",".join(f"{key}={value}" for key, value in mapping.items())

    def label_constraint(self, choices: list[str]) -> dict[str, Any]:
        """The request field(s) that make this vLLM version generate one of `choices` (in the LMI mode declared)."""
        constraint = self.doc["request"]["label_constraint"]
        key = constraint.get("key")
        return {constraint["field"]: {key: list(choices)} if key else list(choices)}

    def confidence_request(self, labels: int) -> dict[str, Any]:
        """The request fields that return the decision token's log-probabilities with every label's alternative
        (as many as this vLLM returns: `top_logprobs` is capped by its `max_logprobs`)."""
        confidence = self.doc["request"]["confidence"]
        return dict(confidence["fields"]) | {"top_logprobs": min(labels, int(confidence["max_top_logprobs"]))}

    def image_uri(self, region: str) -> str:
        """The container for `region`, from the file's `accounts` (see its `_image_source`)."""
        from tasks.common.aws_images import ecr_image_uri

        return ecr_image_uri(self.path, region)


@cache
def _load(path: str) -> ServingRuntime:
    resolved = Path(path)
    return ServingRuntime(resolved, json.loads(resolved.read_text(encoding="utf-8")))


def serving_runtime() -> ServingRuntime:
    """The declared runtime (include/serving/runtime.json, or the file `PIPELINE_SERVING_RUNTIME` names)."""
    return _load(os.environ.get("PIPELINE_SERVING_RUNTIME") or str(RUNTIME_FILE))


def djl_lmi_image_uri(region: str) -> str:
    """The DJL LMI (vLLM) container for `region`."""
    return serving_runtime().image_uri(region)
