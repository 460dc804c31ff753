"""Schemathesis checks for the gateway, loaded by `schemathesis run` through
SCHEMATHESIS_HOOKS=bench.fuzz_checks (see bench/fuzz_api.py).

`gateway_error_shape`: every error from /v1 is in OpenAI's shape, and in
Anthropic's on /v1/messages; never a traceback, never an HTML page.
`gateway_tally`: writes one line per response (method, path, status) to the
file named by FUZZ_TALLY, which is how the runner counts cases and statuses.
`flatmap_body`: now and then gives a generated JSON object body an extra field
nested up to 600 levels deep (schemathesis' client writes no deeper), where
nothing in the schemas would make one.
"""

import json
import os
import threading

import schemathesis
from hypothesis import strategies as st

_lock = threading.Lock()


def openai_error_problem(body) -> str | None:
    """What is wrong with `body` as an OpenAI error, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return 'expected {"error": {"message", "type", "param", "code"}}'
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return "message and type must be non-empty strings"
    if not all(error[name] is None or isinstance(error[name], str) for name in ("param", "code")):
        return "param and code must be strings or null"
    return None


def anthropic_error_problem(body) -> str | None:
    """What is wrong with `body` as an Anthropic error, or None."""
    error = body.get("error") if isinstance(body, dict) else None
    if body.get("type") != "error" if isinstance(body, dict) else True:
        return 'expected {"type": "error", "error": {"type", "message"}}'
    if not isinstance(error, dict) or not isinstance(error.get("type"), str) or not isinstance(
            error.get("message"), str) or not error["message"]:
        return 'expected {"type": "error", "error": {"type", "message"}}'
    return None


def error_problem(path: str, status: int, content_type: str, text: str) -> str | None:
    """What is wrong with an error response from the /v1 API, or None."""
    if status < 400 or not path.startswith("/v1/"):
        return None
    if "Traceback (most recent call last)" in text:  # not "Traceback" alone: a 404 echoes the URL asked for
        return "the body holds a traceback"
    if not content_type.startswith("application/json"):
        return f"content type {content_type!r}, expected application/json"
    try:
        body = json.loads(text)
    except ValueError:
        return "the body is not JSON"
    return (anthropic_error_problem if path.startswith("/v1/messages") else openai_error_problem)(body)


@schemathesis.check
def gateway_error_shape(ctx, response, case):
    if response.status_code < 400:
        return  # a file's content may be any bytes: only errors are read as text
    problem = error_problem(case.operation.path, response.status_code,
                            response.headers.get("content-type", [""])[0], response.text)
    if problem:
        raise AssertionError(f"{case.method} {case.operation.path} answered {response.status_code}: {problem}: "
                             f"{response.text[:500]}")


@schemathesis.check
def gateway_tally(ctx, response, case):
    path = os.environ.get("FUZZ_TALLY")
    if path:
        with _lock, open(path, "a") as tally:
            tally.write(f"{case.method} {case.operation.path} {response.status_code}\n")


def _nest(value, depth: int, bits: int):
    """`value` inside `depth` objects and arrays, which one at each level given by `bits`."""
    for level in range(depth):
        value = {"k": value} if bits >> (level % 32) & 1 else [value]
    return value


@schemathesis.hook
def flatmap_body(ctx, body):
    if not isinstance(body, dict):
        return st.just(body)
    # Around the gateway's limit (64) and orjson's (254), and anywhere up to 600.
    depth = st.one_of(st.sampled_from([63, 64, 65, 253, 254, 255, 600]), st.integers(1, 600))
    deep = st.builds(_nest, st.sampled_from(["x", 1, None]), depth, st.integers(0, 2**32 - 1))
    return st.one_of(st.just(body), deep.map(lambda value: {**body, "x_deep": value}))
