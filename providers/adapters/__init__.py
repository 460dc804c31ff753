"""One module per upstream API, all behind the contract in base.py.

A new provider kind is one new module and one line in ADAPTERS.
"""

from types import ModuleType

from . import anthropic, azure, cohere, gemini, huggingface, ollama, openai

ADAPTERS: dict[str, ModuleType] = {
    "openai": openai,
    "azure": azure,
    "anthropic": anthropic,
    "gemini": gemini,
    "cohere": cohere,
    "ollama": ollama,
    "huggingface": huggingface,
    "openai_compatible": openai,
}


def for_kind(kind: str) -> ModuleType:
    return ADAPTERS[kind]
