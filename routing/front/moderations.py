"""OpenAI's moderations (POST /v1/moderations) on deployments of mode "moderation".

Served like embeddings: the request as the client sent it (model renamed) to a deployment
whose kind has a moderation API, its answer relayed, the input billed at the deployment's
input price.
"""

from gateway_project.lib import errors

from . import estimates, validation
from .endpoint import front_view
from .pipeline import Front, json_response, read_json


def parse(request) -> dict:
    body = validation.json_body(request)
    if not isinstance(body.get("model"), str) or not body["model"]:
        body["model"] = "omni-moderation-latest"  # OpenAI's default when none is named
    value = body.get("input")
    if not ((isinstance(value, str) and value) or (isinstance(value, list) and value
                                                   and all(isinstance(v, str) for v in value))):
        raise errors.bad_request("'input' must be a non-empty string or an array of strings.", param="input",
                                 code="invalid_value")
    return body


def build(adapter, target, body: dict, call):
    if not hasattr(adapter, "moderations_request"):
        raise errors.bad_request(f"The model '{call.model}' offers no moderation.", param="model",
                                 code="model_not_supported")
    return adapter.moderations_request(target, body, call.request_id)


async def answer(call, attempt, body: dict):
    # Moderation answers report no tokens: the input is counted by the gateway (marked as estimated).
    raw, _ = await read_json(call, attempt, parse_usage=lambda data: None)
    return json_response(raw)


FRONT = Front("moderations", "POST", "moderation", parse, build, answer, estimates.embeddings)
moderations = front_view(FRONT)
