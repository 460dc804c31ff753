"""What a request may use, reserved against limits before the upstream call.

Two sizes (usage/limits.py, docs/limits.md): the estimate (prompt counted with
tiktoken, once per call: Call.estimated_prompt; completion max_tokens, or
LIMITS_COMPLETION_ESTIMATE without it), which must fit for the call to be
admitted and is reserved while the limit trusts max_tokens, and the largest
answer the call can get (the deployment's maximum output, whatever max_tokens
says), reserved by a limit that has seen an upstream ignore max_tokens.
"""


from gateway_project.lib.settings_cache import conf
from providers.targets import Target
from usage.limits import to_micros


def _worst_cost(targets: list[Target], prompt: int, completion: int) -> int:
    return max(to_micros(t.cost(prompt, completion)) for t in targets)


def chat(body: dict, targets: list[Target], prompt: int) -> tuple[int, int, int, int]:
    """(tokens, micro-dollars) estimated, then the same for the largest answer, for a chat
    call whose prompt counts `prompt` tokens."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = asked if isinstance(asked, int) else conf.LIMITS_COMPLETION_ESTIMATE
    n = max(1, body.get("n") or 1)
    largest = max(t.max_output_tokens for t in targets)
    completion = min(completion, largest) * n
    return (prompt + completion, _worst_cost(targets, prompt, completion),
            prompt + max(largest * n, completion),
            max(to_micros(t.cost(prompt, max(t.max_output_tokens * n, completion))) for t in targets))


def embeddings(body: dict, targets: list[Target], prompt: int) -> tuple[int, int]:
    """(tokens, micro-dollars) to reserve for embedding inputs of `prompt` tokens."""
    return prompt, _worst_cost(targets, prompt, 0)
