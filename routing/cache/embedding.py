"""Vectors for the semantic cache: a local model shipped inside a package, or a tenant's own embedding
deployment called through the gateway's routing (limited and billed like any embeddings call).

The local model is WordLlama's l2_supercat (256 dimensions, static token embeddings: about 25 us of
CPU a text, no GPU, no download; its weights and tokenizer ship in the `wordllama` wheel). Its text
is lowercased first: the model is case-sensitive, and a question's case does not change its answer.
Any failure yields None, which the lookup takes as a miss, never as an error.
"""

import logging
import shutil
from functools import cache
from pathlib import Path

import numpy as np
from django.conf import settings

from gateway_project.lib import errors
from providers.adapters import for_kind
from routing import table, upstream

from ..front import estimates, pipeline
from ..front.call import Call

log = logging.getLogger(__name__)

TOKENIZER = "l2_supercat_tokenizer_config.json"


@cache
def local_model():
    """WordLlama, loaded from its wheel only. (wordllama 0.4 looks for its shipped tokenizer under
    tokenizer/ but ships it in tokenizers/, and would then download it: it is copied where it looks.)"""
    import wordllama  # deferred: a gateway with no semantic policy never loads the model
    from wordllama import WordLlama

    shipped = Path(wordllama.__file__).parent / "tokenizers" / TOKENIZER
    cache_dir = Path(settings.DATA_DIR) / "wordllama"
    (cache_dir / "tokenizers").mkdir(parents=True, exist_ok=True)
    if not (cache_dir / "tokenizers" / TOKENIZER).exists():
        shutil.copy(shipped, cache_dir / "tokenizers" / TOKENIZER)
    return WordLlama.load(cache_dir=cache_dir, disable_download=True)


def embed_locally(text: str) -> np.ndarray | None:
    try:
        return np.asarray(local_model().embed([text.lower()], norm=True)[0], dtype=np.float32)
    except Exception:
        log.exception("local embedding model failed; semantic lookup is a miss")
        return None


async def embed_with_deployment(call: Call, model: str, text: str) -> np.ndarray | None:
    """`text` embedded by the tenant's embedding model `model`, as a call of its own on the caller's key:
    authorized, routed, admitted against the limits and recorded (endpoint "cache.embeddings")."""
    sub = Call(endpoint="cache.embeddings", key=call.key, model=model, body={"model": model, "input": text},
               client_request_id=call.request_id)
    try:
        spec = await table.route_for_key(call.key, model, "embedding")
        targets = spec.targets
        await pipeline.admit(sub, estimates.embeddings, targets)
        attempt = await pipeline.call_upstream(
            sub, spec, targets, lambda adapter, t: adapter.embeddings_request(t, sub.body, sub.request_id))
        _, data = await pipeline.read_json(sub, attempt, allow_list=True)
        target = attempt.target
        answer = upstream.decode(target, for_kind(target.kind).embeddings_response, target, sub.body, data) or data
        vector = np.asarray(answer["data"][0]["embedding"], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else None
    except errors.GatewayError as error:
        sub.failed(error)
        log.warning("cache embedding through %s failed (%s); semantic lookup is a miss", model, error.code)
        return None
    except Exception:
        sub.status, sub.http_status, sub.error_type = "upstream_error", 502, "upstream_bad_response"
        log.warning("cache embedding through %s unreadable; semantic lookup is a miss", model)
        return None
    finally:
        await sub.settle_and_record()
