"""The text of chat messages and prompts, one reading for every module that needs it
(token counts, prompt logs, routing rules, provider adapters)."""

TEXT_PARTS = ("text", "input_text")


def content_text(content, joiner: str = " ", name_other_parts: bool = False) -> str:
    """The text of a message's `content` (a string or a list of parts): text parts joined by `joiner`;
    other parts (images, files) left out, or named as "[type]" when `name_other_parts`."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str) and part.get("type", "text") in TEXT_PARTS:
            texts.append(text)
        elif name_other_parts:
            texts.append(f"[{part.get('type', 'part')}]")
    return joiner.join(texts)


def prompt_inputs(body: dict | None) -> tuple[list | None, list[str], int]:
    """What a request asks the model to read: (chat messages or None, prompt or input texts, how many tokens
    arrive already tokenized). One of a chat, legacy completions or embeddings body."""
    body = body or {}
    if "messages" in body:  # chat, and Anthropic messages once translated
        messages = body.get("messages") or []
        return (messages if isinstance(messages, list) else []), [], 0
    value = body.get("input", body.get("prompt"))
    if isinstance(value, str):
        return None, [value], 0
    texts = [v for v in value or () if isinstance(v, str)] if isinstance(value, list) else []
    if value and not texts and isinstance(value, list):  # token arrays
        return None, [], sum(len(v) if isinstance(v, list) else 1 for v in value)
    return None, texts, 0


def prompt_text(body: dict | None) -> str:
    """The prompt of a chat, completion or embeddings request as plain text, one line per message."""
    messages, texts, _ = prompt_inputs(body)
    if messages is not None:
        return "\n".join(f"{m.get('role', '')}: {content_text(m.get('content'), name_other_parts=True)}"
                         for m in messages if isinstance(m, dict))
    return "\n".join(texts)
