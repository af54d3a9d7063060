"""The calibrated confidence of one served answer, from vLLM's chat-completion log-probabilities.

The request asks for `logprobs`, `top_logprobs` and `return_tokens_as_token_ids` (include/serving/runtime.json),
so each generated token comes back as `{"token": "token_id:<id>", "logprob": …, "top_logprobs": [...]}`
(vLLM 0.23 `vllm/entrypoints/openai/chat_completion/serving.py`, `_create_chat_logprobs`; LMI's vLLM handler passes
the body through unchanged). Under the label constraint vLLM masks the logits before it computes them
(`v1/worker/gpu_model_runner.py` applies the grammar bitmask, then `v1/sample/sampler.py` takes `raw_logprobs`), so
they are a distribution over the allowed tokens only. The decision is the first generated token that is one of the
labels' decision tokens; its alternatives that are decision tokens too are the other labels. Token ids, not token
text, tie an alternative to its label: two labels' first tokens can print alike.

Up to `top_logprobs` (≤ 20 in vLLM) alternatives come back: for a taxonomy with more labels the least likely ones
are missing and count as probability 0, which overstates a low confidence by at most their share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.model.calibration import Calibration, Ranked

TOKEN_ID_PREFIX = "token_id:"


def token_id(token: Any) -> int | None:
    """The id in vLLM's `token_id:<id>` form; None for any other token text."""
    if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
        return None
    try:
        return int(token[len(TOKEN_ID_PREFIX) :])
    except ValueError:
        return None


def decision_logprobs(logprobs: Any, decision_tokens: Mapping[str, int]) -> dict[str, float] | None:
    """label -> log-probability at the decision token, from a choice's `logprobs`; None when the body has no
    decision token (no log-probabilities, or tokens not as ids)."""
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return None
    label_of = {token: label for label, token in decision_tokens.items()}
    for entry in content:
        if not isinstance(entry, Mapping) or token_id(entry.get("token")) not in label_of:
            continue
        found: dict[str, float] = {}
        for alternative in [entry, *(entry.get("top_logprobs") or [])]:
            label = label_of.get(token_id(alternative.get("token")) if isinstance(alternative, Mapping) else None)
            value = alternative.get("logprob") if label is not None else None
            if isinstance(value, int | float) and label not in found:
                found[label] = float(value)
        return found
    return None


def served_confidence(choice: Mapping[str, Any], calibration: Calibration | None) -> Ranked | None:
    """The calibrated ranking of one response choice; None without a calibration or without a decision token."""
    if calibration is None:
        return None
    found = decision_logprobs(choice.get("logprobs"), calibration.decision_tokens)
    return calibration.rank(found) if found else None
