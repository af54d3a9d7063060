"""Lets PyPI's torchvision import beside torch's CPU build, in the local engine's environment (.venvs/serving).

PyPI's torchvision 0.28.0 is CUDA-linked: beside `torch==2.13.0+cpu` its C extension does not load, and
torchvision/_meta_registrations.py (v0.28.0) then calls `torch.library.register_fake("torchvision::nms")` (and
`qnms`) without the `extension._has_ops()` guard its other fakes have, so `import torchvision` fails with
"operator torchvision::nms does not exist". vLLM's LLaVA-NeXT path imports torchvision (vllm/model_executor/models/
llava.py → pixtral.py → transformers' pixtral image processor), so the server cannot start without it.

The Makefile copies this file into the environment's site-packages with a `.pth` line that imports it, so every
process vLLM starts has it. It defines the two op schemas (no kernels: the LLaVA path never calls nms) just before
that module runs, and only when the extension did not load; with torchvision's own CPU build it does nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType

# The schemas torchvision's C extension defines (torchvision/csrc/ops/nms.cpp, v0.28.0).
SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_libraries: list = []  # a torch.library.Library drops its definitions when collected


class _DefineMissingOps(importlib.abc.MetaPathFinder):
    """Runs once, as torchvision imports its meta registrations; the normal finders then import the module."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if name == "torchvision._meta_registrations":
            sys.meta_path.remove(self)
            _define_schemas()


def _define_schemas() -> None:
    from torchvision import extension  # torchvision/__init__.py imports it (and tries its C extension) first

    if extension._has_ops():
        return
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in SCHEMAS:
        library.define(schema)
    _libraries.append(library)


sys.meta_path.insert(0, _DefineMissingOps())
