"""What a request may use, reserved against limits before the upstream call.

The estimate bounds the real usage when the client sets max_tokens (prompt
counted with tiktoken, once per call: Call.estimated_prompt; completion at
most max_tokens): then a budget is never
overshot. Without max_tokens, LIMITS_COMPLETION_ESTIMATE completion tokens are
reserved and the settlement corrects it.
"""

from django.conf import settings

from providers.targets import Target
from usage.limits import to_micros


def _worst_cost(targets: list[Target], prompt: int, completion: int) -> int:
    return max(to_micros(t.cost(prompt, completion)) for t in targets)


def chat(body: dict, targets: list[Target], prompt: int) -> tuple[int, int]:
    """(tokens, micro-dollars) to reserve for a chat call whose prompt counts `prompt` tokens."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = asked if isinstance(asked, int) else settings.LIMITS_COMPLETION_ESTIMATE
    completion = min(completion, max(t.max_output_tokens for t in targets)) * max(1, body.get("n") or 1)
    return prompt + completion, _worst_cost(targets, prompt, completion)


def embeddings(body: dict, targets: list[Target], prompt: int) -> tuple[int, int]:
    """(tokens, micro-dollars) to reserve for embedding inputs of `prompt` tokens."""
    return prompt, _worst_cost(targets, prompt, 0)
