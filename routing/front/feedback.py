"""POST /v1/feedback: what a client says of one of its calls, for the experiments' figures.

`{"request_id": ..., "score": number?, "label": string?, "comment": string?}` with the key that made
the call, or another key of its tenant: a request id of another tenant is a 404, as is one the
gateway never served. A second feedback on the same call replaces the first. Nothing is billed.
The usage record is written behind (usage/recorder.py); feedback sent the moment an answer ends,
before the record is written, drains one batch of the buffer (as any drainer does) and looks again.
"""

import orjson

from gateway_project.lib import errors
from gateway_project.lib.orm_thread import run_orm
from usage import recorder
from usage.experiments import feedback_record
from usage.models import Feedback

from . import validation
from .endpoint import endpoint
from .pipeline import json_response, key_of

FIELDS = frozenset({"request_id", "score", "label", "comment"})


def _checked(body: dict) -> dict:
    for name in body:
        if name not in FIELDS:
            raise errors.bad_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 100:
        raise errors.bad_request("'request_id' is the x-request-id of the answer.", param="request_id",
                                 code="missing_required_parameter")
    score, label, comment = body.get("score"), body.get("label"), body.get("comment", "")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                              or not -1e6 <= score <= 1e6):
        raise errors.bad_request("'score' must be a number.", param="score", code="invalid_value")
    if label is not None and (not isinstance(label, str) or not 0 < len(label) <= 64):
        raise errors.bad_request("'label' must be a string of 1 to 64 characters.", param="label",
                                 code="invalid_value")
    if not isinstance(comment, str) or len(comment) > 4000:
        raise errors.bad_request("'comment' must be a string of at most 4000 characters.", param="comment",
                                 code="invalid_value")
    if score is None and label is None:
        raise errors.bad_request("Send a 'score', a 'label' or both.", param="score",
                                 code="missing_required_parameter")
    return {"request_id": request_id, "score": score, "label": label or "", "comment": comment}


def _store(key, given: dict) -> dict | None:
    record = feedback_record(key.tenant_id, given["request_id"])
    if record is None:
        recorder.drain()  # one batch of what is buffered, as any drainer would: the call may be in it
        record = feedback_record(key.tenant_id, given["request_id"])
    if record is None:
        return None
    Feedback.objects.update_or_create(
        tenant_id=key.tenant_id, request_id=record.request_id,
        defaults={"api_key_id": key.id, "score": given["score"], "label": given["label"],
                  "comment": given["comment"]})
    return {"object": "feedback", "request_id": record.request_id, "score": given["score"],
            "label": given["label"] or None, "variant": record.variant or None}


@endpoint("feedback", "POST")
async def feedback(request, call):
    given = _checked(validation.json_body(request))
    key = await key_of(request)
    stored = await run_orm(_store, key, given)
    if stored is None:
        raise errors.GatewayError(404, f"No request '{given['request_id']}' of yours.", param="request_id",
                                  code="request_not_found")
    return json_response(orjson.dumps(stored))
