"""What LMI does with serving.properties, run with the runtime's vLLM on the path: its djl_python translation
(properties_manager, loaded from the folder given) into vLLM engine args, parsed by that vLLM's own
FlexibleArgumentParser + AsyncEngineArgs (VllmRbProperties.get_engine_args, as the async service calls it).

stdin: {"djl_python": folder, "properties": text, "gpus": n}. stdout (last line): JSON with the engine args, the
options LMI dropped, or the parser's error.
"""

import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

request = json.load(sys.stdin)
folder = Path(request["djl_python"])
for name in ("djl_python", "djl_python.properties_manager"):  # the package shells, without djl_python/__init__.py
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = []
for name in ("properties", "vllm_rb_properties"):
    spec = importlib.util.spec_from_file_location(f"djl_python.properties_manager.{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
VllmRbProperties = sys.modules["djl_python.properties_manager.vllm_rb_properties"].VllmRbProperties

import vllm  # noqa: E402

# The Java front end reads serving.properties, strips "option." and resolves tensor_parallel_degree=max to the GPU
# count (engines/python/src/main/java/ai/djl/python/engine/PyModel.java) before djl_python sees the options.
options, engine = {}, None
for line in request["properties"].splitlines():
    key, _, value = line.partition("=")
    if key == "engine":
        engine = value
    elif key.startswith("option."):
        options[key.removeprefix("option.")] = value
if options.get("tensor_parallel_degree") == "max":
    options["tensor_parallel_degree"] = str(request["gpus"])

result = {"vllm": vllm.__version__}
properties = VllmRbProperties(engine=engine, **options)
passed = properties.get_additional_vllm_engine_args()
result["dropped"] = sorted(set(properties.__pydantic_extra__) - set(passed))
stderr = io.StringIO()
try:
    with contextlib.redirect_stderr(stderr):
        engine_args = properties.get_engine_args(async_engine=True)
except SystemExit as exc:  # argparse refusing a value
    result["error"] = f"vLLM's argument parser exited {exc.code}: {stderr.getvalue().strip()[-800:]}"
else:
    keys = (
        "model",
        "tensor_parallel_size",
        "max_num_seqs",
        "max_model_len",
        "enable_prefix_caching",
        "limit_mm_per_prompt",
        "gpu_memory_utilization",
        "dtype",
    )
    result["engine_args"] = {key: getattr(engine_args, key) for key in keys}
print(json.dumps(result, default=repr))
