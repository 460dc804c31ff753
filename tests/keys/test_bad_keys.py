"""10,000 bad keys, of every kind, all get the same 401: nothing in the answer tells
an attacker which keys exist, were revoked, expired or belong to a suspended tenant."""

import asyncio
import random
import string
from collections import Counter
from datetime import timedelta

import httpx
from django.utils import timezone

from keys import hashing
from keys import services as key_services
from tests.conftest import Server, wait_until

TOTAL = 10_000


def bad_keys(revoked: str, expired: str, suspended: str) -> list[tuple[str, str]]:
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits
    kinds = {
        "unknown, well formed": lambda: hashing.generate_key(),
        "wrong checksum": lambda: hashing.generate_key()[:-1] + rng.choice("ABC"),
        "truncated": lambda: hashing.generate_key()[: rng.randint(6, 45)],
        "random text": lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))),
        "other vendor's": lambda: "sk-proj-" + "".join(rng.choice(alphabet) for _ in range(48)),
        "revoked": lambda: revoked,
        "expired": lambda: expired,
        "suspended tenant's": lambda: suspended,
        "one character off": lambda: revoked[:10] + ("a" if revoked[10] != "a" else "b") + revoked[11:],
    }
    names = list(kinds)
    return [(name := names[i % len(names)], kinds[name]()) for i in range(TOTAL)]


async def try_all(url: str, attempts: list[tuple[str, str]]) -> list[tuple[str, int, bytes, str]]:
    queue = iter(attempts)
    answers = []

    async def worker(client):
        for kind, key in queue:
            response = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                         json={"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]})
            answers.append((kind, response.status_code, response.content, response.headers.get("content-type")))

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(32)))
    return answers


def test_ten_thousand_bad_keys_all_get_the_same_401(gateway_env, mock_provider, tenant, other_tenant):
    _, good = key_services.issue(tenant, "good")
    revoked_row, revoked = key_services.issue(tenant, "revoked")
    revoked_row.revoked_at = timezone.now()
    revoked_row.save()
    expired_row, expired = key_services.issue(tenant, "expired")
    expired_row.expires_at = timezone.now() - timedelta(minutes=1)
    expired_row.save()
    _, suspended = key_services.issue(other_tenant, "suspended")
    other_tenant.is_active = False
    other_tenant.save()
    # The failed-key slowdown (tested on its own) would make this run take hours from one address.
    server = Server(["manage.py", "serve", "--port", "{port}", "--log-level", "warning"],
                    env={**gateway_env, "AUTH_FAILURES_PER_MINUTE": "1000000"}, ready_path="/v1/models")
    try:
        assert wait_until(lambda: httpx.post(server.url + "/v1/chat/completions",
                                             headers={"authorization": f"Bearer {good}"},
                                             json={"model": "gpt-test", "messages": [{"role": "user",
                                                                                      "content": "x"}]},
                                             timeout=10).status_code == 200, timeout=10)
        answers = asyncio.run(try_all(server.url, bad_keys(revoked, expired, suspended)))
    finally:
        server.stop()
    assert len(answers) == TOTAL
    assert Counter(status for _, status, _, _ in answers) == {401: TOTAL}
    bodies = Counter(body for _, _, body, _ in answers)
    assert len(bodies) == 1, bodies.most_common(3)  # byte for byte the same answer, whatever the key
    assert len({kind for kind, _, _, _ in answers}) == 9
    body = next(iter(bodies))
    assert b'"code":"invalid_api_key"' in body.replace(b" ", b"")
    for secret in (revoked, expired, suspended, good):
        assert secret.encode() not in body
