"""Hugging Face: TGI's Messages API (POST /v1/chat/completions, in openai.py's
TGI dialect), Text Embeddings Inference's POST /embed, and GET /info."""

from .openai import MAX_DIMENSIONS, dimensions, vector
from .openai import chat as openai_chat
from .openai import user_text as chat_user_text
from .server import Request, send_json, sse


def user_text(body: dict) -> str:
    inputs = body.get("inputs")
    return inputs if isinstance(inputs, str) else chat_user_text(body)


def error_body(status: int, key: str = "", message: str | None = None) -> dict:
    kinds = {400: "validation", 401: "authentication", 404: "not_found", 429: "overloaded"}
    message = message or ("Authorization header is correct, but the token seems invalid" if status == 401 else
                          f"Mock TGI failed with {status}.")
    return {"error": message, "error_type": kinds.get(status, "generation")}


def stream_error(message: str) -> bytes:
    return sse({"error": message, "error_type": "generation"})


async def chat(req: Request) -> None:
    await openai_chat(req, "huggingface")


async def embed(req: Request) -> None:
    value = req.body.get("inputs")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        await send_json(req.send, 422, {"error": "Input validation error: `inputs` cannot be empty",
                                        "error_type": "Validation"})
        return
    dims = dimensions(req.body.get("dimensions"), 384)
    if dims is None:
        await send_json(req.send, 422, {"error": f"Input validation error: `dimensions` must be at most {MAX_DIMENSIONS}",
                                        "error_type": "Validation"})
        return
    await send_json(req.send, 200, [vector(str(t).encode(), dims) for t in texts])


async def info(req: Request) -> None:
    await send_json(req.send, 200, {"model_id": "mock/mock-tgi", "model_sha": "0" * 40, "model_dtype": "torch.float16",
                                    "model_device_type": "cuda", "max_input_tokens": 4095, "max_total_tokens": 4096,
                                    "router": "text-generation-router", "version": "3.2.1"})
