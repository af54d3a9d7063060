"""A chat completion built by the runtime's own vLLM response code, with the vLLM path on sys.path: the logprobs
go through `OpenAIServingChat._create_chat_logprobs` (chat_completion/serving.py), the body through the
`ChatCompletionResponse` pydantic model, as the server returns it (LMI's vLLM handler passes it through).

stdin: {"answer": str, "token_ids": [int], "logprobs": [{"<id>": logprob, ...}], "top_logprobs": k}: per generated
token, the log-probabilities vLLM's sampler produced (the generated token's included). stdout (last line): the
response body as JSON.
"""

import json
import sys

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
)
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.entrypoints.openai.engine.protocol import UsageInfo
from vllm.logprobs import Logprob

given = json.load(sys.stdin)
steps = []
for step in given["logprobs"]:
    ranked = sorted(step.items(), key=lambda item: -item[1])
    steps.append({int(t): Logprob(logprob=lp, rank=rank, decoded_token=None) for rank, (t, lp) in enumerate(ranked, 1)})
server = object.__new__(OpenAIServingChat)  # only its logprob formatting is used: no engine, no model
server.return_tokens_as_token_ids = False
logprobs = server._create_chat_logprobs(
    token_ids=given["token_ids"],
    top_logprobs=steps,
    tokenizer=None,
    num_output_top_logprobs=given["top_logprobs"],
    return_as_token_id=True,
)
choice = ChatCompletionResponseChoice(
    index=0, message=ChatMessage(role="assistant", content=given["answer"]), logprobs=logprobs, finish_reason="stop"
)
usage = UsageInfo(
    prompt_tokens=80, completion_tokens=len(given["token_ids"]), total_tokens=80 + len(given["token_ids"])
)
response = ChatCompletionResponse(model="lmi", choices=[choice], usage=usage)
print(response.model_dump_json())
