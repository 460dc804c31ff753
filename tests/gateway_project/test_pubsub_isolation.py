"""Two gateways on one Redis server, on different databases, do not hear each
other: pub/sub channels are server-wide, so each carries its database number."""

import time

import redis

from gateway_project.lib.redis_pool import channel
from providers.models import Deployment


def test_breaker_news_from_another_database_is_not_applied(key_client, gateway, api_key, mock_provider, settings):
    deployment = Deployment.objects.get(public_model="gpt-test")
    server = redis.Redis.from_url(settings.REDIS_URL)
    db = server.connection_pool.connection_kwargs.get("db", 0)
    open_for_an_hour = f"{deployment.id}:{time.time() + 3600}"

    # Another deployment of the gateway, on another database, opens "its" deployment with the same id.
    assert channel("breaker") == f"gw:{db}:breaker"
    server.publish(f"gw:{(db + 1) % 16}:breaker", open_for_an_hour)
    time.sleep(0.5)
    assert key_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])

    # The same news on this database's channel is applied by the gateway.
    server.publish(channel("breaker"), open_for_an_hour)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            key_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        except Exception as refused:  # noqa: BLE001 (the SDK's 503)
            assert getattr(refused, "status_code", None) == 503
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the breaker news on this database's channel was not applied")
    server.publish(channel("breaker"), f"{deployment.id}:0")  # closed again for the tests after
