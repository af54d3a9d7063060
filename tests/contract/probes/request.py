"""What LMI's async service does with a request body, run with the runtime's vLLM on the path: vLLM's own
ChatCompletionRequest validates it (djl_python/lmi_vllm/vllm_async_service.py fills `model` when absent) and
`to_sampling_params` turns it into the SamplingParams the engine generates with.

stdin: {"body": {...}}. stdout (last line): JSON with the choice constraint that reached SamplingParams, the
fields vLLM kept but ignores (model_extra), max_tokens, temperature, the number of log-probabilities per token the
engine will compute (SamplingParams.logprobs) and whether tokens come back as ids.
"""

import inspect
import json
import sys

try:  # where this vLLM version defines it (0.23: chat_completion/protocol.py; 0.8: openai/protocol.py)
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
except ImportError:
    from vllm.entrypoints.openai.protocol import ChatCompletionRequest
import vllm

body = json.load(sys.stdin)["body"]
req = ChatCompletionRequest(**{"model": "lmi", **body})
accepted = inspect.signature(req.to_sampling_params).parameters
given = {
    "max_tokens": body["max_tokens"],
    "default_max_tokens": body["max_tokens"],
    "logits_processor_pattern": None,
    "default_sampling_params": {},
}
params = req.to_sampling_params(**{key: value for key, value in given.items() if key in accepted})
choice = None
for attribute in ("structured_outputs", "guided_decoding"):  # 0.23 | 0.8
    constraint = getattr(params, attribute, None)
    if constraint is not None:
        choice = constraint.choice
print(
    json.dumps(
        {
            "vllm": vllm.__version__,
            "choice": choice,
            "ignored": sorted(req.model_extra or {}),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "logprobs": params.logprobs,
            "tokens_as_ids": req.return_tokens_as_token_ids,
        }
    )
)
