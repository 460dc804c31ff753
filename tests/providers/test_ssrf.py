"""Provider base URLs cannot reach private networks unless staff allow it: every
address form refused when saved, names checked again on every connection
(DNS rebinding), redirects never followed."""

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import httpx
import openai
import pytest
from django.core.exceptions import ValidationError

from providers import netguard
from providers.connection import check_connection
from providers.models import Deployment, Provider
from tests.conftest import PROVIDER_SECRET, wait_until

# Decimal, octal, hexadecimal and short IPv4 forms: Django's URL field already
# refuses them when saved; the guard reads them as the resolver does.
ODD_FORMS = ["http://2130706433/v1", "http://0177.0.0.1/v1", "http://0x7f.0.0.1/v1", "http://127.1/v1", "http://0/v1"]
PRIVATE_FORMS = [
    "http://127.0.0.1/v1", "http://localhost:8000/v1", "http://[::1]/v1", "http://[::ffff:127.0.0.1]/v1",
    "http://[::ffff:7f00:1]/v1", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/v1",
    "http://10.0.0.5/v1", "http://172.16.3.4/v1", "http://192.168.1.1/v1", "http://100.64.0.1/v1",
    "http://[fd00:ec2::254]/v1", "http://[2002:7f00:1::]/v1", "http://224.0.0.1/v1",
    *[f"http://[{address}]/v1" for address in (
        "::127.0.0.1", "::7f00:1", "::a9fe:a9fe", "::8.8.8.8",  # IPv4-compatible (deprecated, never public)
        "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1",  # NAT64, well-known prefix
        "64:ff9b:1::a00:1", "64:ff9b:1::808:808",  # NAT64, local-use prefix (never public)
        "::ffff:0:7f00:1", "::ffff:0:a9fe:a9fe",  # IPv4-translated (SIIT)
    )],
]


@pytest.mark.parametrize("url", PRIVATE_FORMS)
def test_private_addresses_in_every_form_are_refused_unless_allowed(url, db):
    provider = Provider(name="p", kind="openai", base_url=url)
    with pytest.raises(ValidationError) as refused:
        provider.full_clean()
    assert "private" in str(refused.value.message_dict["base_url"])
    Provider(name="p", kind="openai", base_url=url, allow_private_network=True).full_clean()


ALLOWED_BY = ('"Allow private network"', "allow_private_network: true", "add_provider --allow-private-network")


def test_a_loopback_provider_is_refused_with_where_staff_allow_it(db, tmp_path):
    """A local Ollama: the admin's form, add_provider and apply_config each say which field or flag allows it."""
    import io

    from django.core.management import CommandError, call_command

    with pytest.raises(ValidationError) as refused:
        Provider(name="ollama", kind="ollama", base_url="http://127.0.0.1:11434").full_clean()
    assert all(way in refused.value.message_dict["base_url"][0] for way in ALLOWED_BY)

    with pytest.raises(CommandError) as cli:
        call_command("add_provider", "ollama", "--kind", "ollama", "--base-url", "http://localhost:11434",
                     "--model", "llama3", stdout=io.StringIO())
    assert all(way in str(cli.value) for way in ALLOWED_BY)
    call_command("add_provider", "ollama", "--kind", "ollama", "--base-url", "http://localhost:11434",
                 "--model", "llama3", "--allow-private-network", stdout=io.StringIO())
    assert Provider.objects.get(name="ollama").allow_private_network

    config = tmp_path / "gateway.yaml"
    config.write_text("providers:\n  - name: local\n    kind: ollama\n    base_url: http://[::1]:11434\n")
    with pytest.raises(CommandError) as applied:
        call_command("apply_config", str(config), stdout=io.StringIO())
    assert "line 4: providers[0].base_url:" in str(applied.value)
    assert all(way in str(applied.value) for way in ALLOWED_BY)


@pytest.mark.parametrize("url", ODD_FORMS)
def test_odd_ipv4_forms_are_refused_by_the_form_and_by_the_guard(url, db):
    with pytest.raises(ValidationError):
        Provider(name="p", kind="openai", base_url=url).full_clean()
    with pytest.raises(netguard.UnsafeAddress, match="private"):
        netguard.check_url(url, allow_private=False)
    netguard.check_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["https://8.8.8.8/v1", "https://[2001:4860:4860::8888]/v1",
                                 "https://[64:ff9b::808:808]/v1", "https://api.openai.example/v1"])
def test_public_addresses_and_names_are_accepted(url, db):
    Provider(name="p", kind="openai", base_url=url).full_clean()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@api.example.com/v1"])
def test_other_schemes_and_credentials_in_urls_are_refused(url, db):
    with pytest.raises(ValidationError):
        Provider(name="p", kind="openai", base_url=url, allow_private_network=True).full_clean()


def sneaked_in(name: str, base_url: str) -> Provider:
    """A provider whose URL resolved to a public address when saved and no longer does
    (DNS rebinding), or was written straight to the database: saved without validation."""
    provider = Provider(name=name, kind="openai_compatible", base_url=base_url)
    provider.set_api_key(PROVIDER_SECRET)
    provider.save()
    Deployment.objects.create(provider=provider, public_model=f"chat-{name}", upstream_model="mock-gpt")
    return provider


@pytest.fixture()
def client(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "2130706433", "[::1]", "[::127.0.0.1]",
                                  "[64:ff9b::7f00:1]"])
def test_calls_to_private_addresses_are_refused_at_connection_time(host, client, mock):
    port = mock.url.rsplit(":", 1)[1]
    sneaked_in("rebound", f"http://{host}:{port}/v1")
    assert wait_until(lambda: "chat-rebound" in [m.id for m in client.models.list()])
    before = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="chat-rebound", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502 and refused.value.body["code"] == "upstream_address_refused"
    assert "Allow private network" in refused.value.body["message"]  # what an admin changes to allow it
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == before  # nothing reached it
    result = check_connection(Provider.objects.get(name="rebound"))
    assert not result.ok and "private" in result.error


@pytest.mark.parametrize("address", ["::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "::ffff:0:a00:1"])
def test_names_resolving_to_ipv4_carried_in_ipv6_are_refused_on_connection(address, monkeypatch):
    async def resolved(self, host, port=0, family=0):
        return [{"hostname": host, "host": address, "port": port, "family": 10, "proto": 6, "flags": 0}]

    async def connect():
        return await netguard.PublicOnlyResolver().resolve("rebound.example", 443)

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", resolved)
    with pytest.raises(netguard.UnsafeAddress, match="non-public"):
        asyncio.run(connect())


def test_redirects_from_an_upstream_are_not_followed(client, mock, api_key):
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.send_response(307)
            self.send_header("location", mock.url + "/v1/chat/completions")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        provider = Provider(name="redirecting", kind="openai_compatible",
                            base_url=f"http://127.0.0.1:{server.server_port}/v1", allow_private_network=True)
        provider.set_api_key(PROVIDER_SECRET)
        provider.full_clean()
        provider.save()
        Deployment.objects.create(provider=provider, public_model="chat-redirecting", upstream_model="mock-gpt")
        assert wait_until(lambda: "chat-redirecting" in [m.id for m in client.models.list()])
        before = httpx.get(mock.url + "/_mock/stats").json()["requests"]
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="chat-redirecting", messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 502 and "'redirecting'" in failed.value.body["message"]
        assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == before
    finally:
        server.shutdown()
