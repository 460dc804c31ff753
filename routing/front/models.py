"""The models a key may call (GET /v1/models), and this API's OpenAPI schema (GET /v1/openapi.json)."""

import functools
from pathlib import Path

import orjson
import yaml

from routing import table

from .endpoint import endpoint
from .pipeline import json_response, key_of


@endpoint("models", "GET")
async def models(request, call):
    key = await key_of(request)
    routing_table = await table.current()
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": owner}
        for name, created, owner in routing_table.models_for(key.tenant_id)
        if key.may_use(name)
    ]
    return json_response(orjson.dumps({"object": "list", "data": data}))


@functools.cache
def _schema() -> bytes:
    return orjson.dumps(yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text()))


@endpoint("openapi", "GET")
async def openapi(request, call):
    """This API's OpenAPI schema (routing/openapi.yaml): public, like /api/schema/."""
    return json_response(_schema())
