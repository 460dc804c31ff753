"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs.

The provider's base URL is the resource endpoint (https://NAME.openai.azure.com),
a deployment's upstream model is the Azure deployment name, the API version
comes from the provider's `api_version` setting, and the key travels in an
`api-key` header. Bodies and streams are OpenAI's, so they pass through.
"""

from urllib.parse import quote

from . import base, openai
from .base import UpstreamRequest, mapped_error

STREAM_FRAMING = "sse"
EMBEDDINGS = True


def _url(target, operation: str) -> str:
    deployment = quote(target.upstream_model, safe="")
    version = quote(target.settings.get("api_version", ""), safe="")
    return f"{target.base_url}/openai/deployments/{deployment}/{operation}?api-version={version}"


def _headers(target, request_id: str) -> dict[str, str]:
    return base.request_headers(target, request_id, key_header="api-key", key_prefix="",
                                id_header="x-ms-client-request-id")


def chat_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(_url(target, "chat/completions"), _headers(target, request_id),
                           openai.chat_payload(target, body))


def completions_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(_url(target, "completions"), _headers(target, request_id), openai.chat_payload(target, body))


def embeddings_request(target, body: dict, request_id: str) -> UpstreamRequest:
    return UpstreamRequest(_url(target, "embeddings"), _headers(target, request_id),
                           openai.plain_payload(target, body))


def responses_request(target, body: dict, request_id: str) -> UpstreamRequest:
    """Azure's v1 API: one path for every deployment, the deployment named as the model."""
    return UpstreamRequest(f"{target.base_url}/openai/v1/responses", _headers(target, request_id),
                           openai.plain_payload(target, body))


def models_request(target) -> UpstreamRequest:
    version = quote(target.settings.get("api_version", ""), safe="")
    return UpstreamRequest(f"{target.base_url}/openai/models?api-version={version}",
                           _headers(target, "connection-test"), None, method="GET")


chat_response = openai.chat_response
embeddings_response = openai.embeddings_response
chat_stream = openai.chat_stream
verbatim_read = openai.verbatim_read
parse_usage = openai.parse_usage
responses_usage = openai.responses_usage
responses_stream = openai.responses_stream
parse_models = openai.parse_models
map_error = mapped_error
