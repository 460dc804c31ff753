"""The floor: `python -m uvicorn bench.floor_app:application` relays to UPSTREAM_URL."""

import os

import aiohttp
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.floor_settings"  # never the gateway's settings

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001/v1")
_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200))
    return _session


@csrf_exempt
async def relay(request, endpoint: str):
    response = await session().post(f"{UPSTREAM}/{endpoint}", data=request.body,
                                    headers={"content-type": "application/json"})
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        async def chunks():
            async for chunk in response.content.iter_any():
                yield chunk
            response.release()

        return StreamingHttpResponse(chunks(), content_type="text/event-stream")
    body = await response.read()
    return HttpResponse(body, status=response.status, content_type="application/json")


urlpatterns = [path("v1/<path:endpoint>", relay)]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
