"""Issue 16, the providers' part, tried as a tenant admin would: what a provider may read
from the gateway's environment (finding 1), what a staff grant of private networks
survives (finding 2), and headers that used to make every call a 500 (finding 10b).
IPv4 carried in IPv6 addresses (finding 11) is in test_ssrf.py."""

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from providers.models import Deployment, Provider
from tests.conftest import PROVIDER_SECRET, user_in, wait_until

CRLF_HEADERS = {"x-team": "acme\r\nx-injected: 1"}


@pytest.fixture()
def tenant_admin(client, tenant, django_user_model):
    client.force_login(user_in(tenant, "admin"))
    return client


@pytest.fixture()
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only"))
    return client


def api(client, method: str, path: str, body: dict):
    return getattr(client, method)(path, body, content_type="application/json")


def granted(tenant, base_url: str, name: str = "acme-local", **fields) -> Provider:
    """A tenant's provider that staff allowed onto private networks, for `base_url`."""
    provider = Provider(name=name, kind="openai_compatible", base_url=base_url, tenant=tenant,
                        allow_private_network=True, **fields)
    provider.set_api_key(PROVIDER_SECRET)
    provider.full_clean()
    provider.save()
    Deployment.objects.create(provider=provider, public_model=f"chat-{name}", upstream_model="mock-gpt")
    return provider


def saved_unchecked(tenant, base_url: str, name: str, **fields) -> Provider:
    """A row as an older release let it be saved (or as written straight to the database)."""
    provider = Provider(name=name, kind="openai_compatible", base_url=base_url, tenant=tenant,
                        allow_private_network=True, **fields)
    if "api_key_env" not in fields:
        provider.set_api_key(PROVIDER_SECRET)
    provider.save()
    Deployment.objects.create(provider=provider, public_model=f"chat-{name}", upstream_model="mock-gpt")
    return provider


def listed(client, model: str) -> bool:
    return wait_until(lambda: model in [m.id for m in client.models.list()])


@pytest.fixture()
def sdk(gateway, api_key):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)


class Recorder:
    """An upstream on loopback that answers every chat call and keeps the Authorization headers it got."""

    def __init__(self) -> None:
        seen = self.authorizations = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("content-length") or 0))
                seen.append(self.headers.get("authorization", ""))
                body = json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def recorder():
    upstream = Recorder()
    yield upstream
    upstream.server.shutdown()


# --- Finding 1: secrets only from the environment variables staff allowed ------------------


@pytest.mark.parametrize("variable", ["DATABASE_URL", "REDIS_URL", "GATEWAY_PROVIDER_KEY_SHARED"])
def test_a_tenant_admin_cannot_point_a_provider_at_the_gateways_environment(tenant_admin, tenant, variable):
    created = api(tenant_admin, "post", "/api/manage/providers/", {
        "name": "exfil", "kind": "openai", "base_url": "https://collector.example/v1", "api_key_env": variable})
    assert created.status_code == 400 and "api_key_env" in created.json(), created.content
    assert "staff" in created.json()["api_key_env"][0]
    own = Provider.objects.create(name="acme-own", kind="openai", base_url="https://api.example.com/v1",
                                  tenant=tenant)
    patched = api(tenant_admin, "patch", f"/api/manage/providers/{own.id}/", {"api_key_env": variable})
    assert patched.status_code == 400 and "api_key_env" in patched.json()
    own.refresh_from_db()
    assert own.api_key_env == "" and not Provider.objects.filter(name="exfil").exists()


def test_a_tenant_admin_sees_no_environment_field_in_the_admin(tenant_admin, tenant):
    own = Provider.objects.create(name="acme-own", kind="openai", base_url="https://api.example.com/v1",
                                  tenant=tenant)
    url = reverse("admin:providers_provider_change", args=[own.id])
    assert 'name="api_key_env"' not in tenant_admin.get(url).content.decode()
    response = tenant_admin.post(url, {
        "name": "acme-own", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "",
        "api_key_env": "DATABASE_URL", "extra_headers": "{}", "settings": "{}", "tenant": tenant.id,
        "is_active": "on", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"})
    assert response.status_code == 302
    own.refresh_from_db()
    assert own.api_key_env == ""  # the field is not the tenant admin's to send


@pytest.mark.parametrize("variable", ["DATABASE_URL", "SECRET_KEY_FILE", "OPENAI_API_KEY", "BAD NAME"])
def test_staff_may_only_name_variables_the_settings_allow(staff, variable):
    refused = api(staff, "post", "/api/manage/providers/", {
        "name": "shared", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key_env": variable})
    assert refused.status_code == 400, refused.content
    assert "api_key_env" in refused.json()
    page = staff.post(reverse("admin:providers_provider_add"), {
        "name": "shared", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key_env": variable,
        "extra_headers": "{}", "settings": "{}", "is_active": "on",
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"})
    assert page.status_code == 200 and page.context["adminform"].form.errors["api_key_env"]
    assert not Provider.objects.filter(name="shared").exists()


def test_staff_name_a_prefixed_or_listed_variable(staff, settings, monkeypatch):
    refused = api(staff, "post", "/api/manage/providers/", {
        "name": "listed", "kind": "openai", "base_url": "https://api.example.com/v1",
        "api_key_env": "OPENAI_API_KEY"}).json()["api_key_env"][0]
    assert "GATEWAY_PROVIDER_KEY_" in refused and "PROVIDER_KEY_ENV_ALLOW" in refused  # the rule, named
    monkeypatch.setenv("GATEWAY_PROVIDER_KEY_OPENAI", "sk-from-the-environment-1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-2")
    settings.PROVIDER_KEY_ENV_ALLOW = ["OPENAI_API_KEY"]
    for name, variable in (("prefixed", "GATEWAY_PROVIDER_KEY_OPENAI"), ("listed", "OPENAI_API_KEY")):
        created = api(staff, "post", "/api/manage/providers/", {
            "name": name, "kind": "openai", "base_url": "https://api.example.com/v1", "api_key_env": variable})
        assert created.status_code == 201, created.content
        assert created.json()["api_key_set"] is True
    assert Provider.objects.get(name="prefixed").get_api_key() == "sk-from-the-environment-1"
    assert Provider.objects.get(name="listed").get_api_key() == "sk-from-the-environment-2"
    settings.PROVIDER_KEY_ENV_ALLOW = ["DATABASE_URL"]  # the gateway's own: never, even when listed
    assert Provider(name="x", kind="openai", api_key_env="DATABASE_URL").get_api_key() == ""


def test_a_row_that_names_database_url_sends_nothing_upstream(tenant, sdk, recorder):
    # The gateway process has DATABASE_URL set (conftest's gateway_env).
    saved_unchecked(tenant, recorder.url, "dburl", api_key_env="DATABASE_URL")
    saved_unchecked(tenant, recorder.url, "fine")
    assert listed(sdk, "chat-dburl") and listed(sdk, "chat-fine")
    for model in ("chat-dburl", "chat-fine"):
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert recorder.authorizations == ["", f"Bearer {PROVIDER_SECRET}"]


def test_add_provider_keeps_to_the_allowed_variables(db, monkeypatch):
    with pytest.raises(CommandError, match="api_key_env"):
        call_command("add_provider", "cli", "--kind", "openai", "--base-url", "https://api.example.com/v1",
                     "--api-key-env", "DATABASE_URL")
    assert not Provider.objects.filter(name="cli").exists()
    monkeypatch.setenv("GATEWAY_PROVIDER_KEY_CLI", "sk-cli-secret-1")
    call_command("add_provider", "cli", "--kind", "openai", "--base-url", "https://api.example.com/v1",
                 "--api-key-env", "GATEWAY_PROVIDER_KEY_CLI", stdout=io.StringIO())
    assert Provider.objects.get(name="cli").get_api_key() == "sk-cli-secret-1"


# --- Finding 2: the private-network grant is bound to the URL it was granted for -----------


def test_a_tenant_admin_cannot_move_a_granted_provider_onto_another_private_host(tenant_admin, tenant, mock):
    provider = granted(tenant, mock.url + "/v1")
    url = f"/api/manage/providers/{provider.id}/"
    port = mock.url.rsplit(":", 1)[1]
    for target in ("http://169.254.169.254/latest/meta-data/", f"http://localhost:{port}/v1",
                   "http://10.0.0.5:5432/", "https://127.0.0.1/v1"):
        refused = api(tenant_admin, "patch", url, {"base_url": target})
        assert refused.status_code == 400 and "private" in refused.json()["base_url"][0], (target, refused.content)
        provider.refresh_from_db()
        assert provider.base_url == mock.url + "/v1" and provider.allow_private_network  # nothing changed
    put = api(tenant_admin, "put", url, {"name": provider.name, "kind": "openai_compatible",
                                         "base_url": "http://169.254.169.254/", "tenant": tenant.id})
    assert put.status_code == 400 and "base_url" in put.json()


def test_a_path_change_on_the_granted_host_keeps_the_grant(tenant_admin, tenant, mock):
    provider = granted(tenant, mock.url + "/v1")
    moved = api(tenant_admin, "patch", f"/api/manage/providers/{provider.id}/",
                {"base_url": mock.url + "/knobs/latency=0/v1"})
    assert moved.status_code == 200 and moved.json()["allow_private_network"] is True


def test_a_provider_moved_to_a_public_host_loses_the_grant_for_good(tenant_admin, tenant, mock, sdk):
    provider = granted(tenant, mock.url + "/v1", api_key_env="GATEWAY_PROVIDER_KEY_ACME")
    moved = api(tenant_admin, "patch", f"/api/manage/providers/{provider.id}/",
                {"base_url": "https://upstream.invalid/v1", "api_key": PROVIDER_SECRET})
    assert moved.status_code == 200, moved.content
    assert moved.json()["allow_private_network"] is False and moved.json()["api_key_env"] == ""
    # The name now resolves to loopback (DNS rebinding, simulated in the row, saved
    # unchecked): the gateway calls it through the public-only resolver and refuses.
    port = mock.url.rsplit(":", 1)[1]
    provider.refresh_from_db()
    provider.base_url = f"http://localhost:{port}/v1"
    provider.save()
    Deployment.objects.create(provider=provider, public_model="chat-rebound", upstream_model="mock-gpt")
    assert listed(sdk, "chat-rebound")  # the gateway has the row as it is now
    before = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.chat.completions.create(model="chat-rebound", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 502 and refused.value.body["code"] == "upstream_address_refused"
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == before  # nothing reached it


def test_staff_moving_a_provider_keep_its_grant(staff, tenant, mock):
    provider = granted(tenant, mock.url + "/v1")
    port = mock.url.rsplit(":", 1)[1]
    kept = api(staff, "patch", f"/api/manage/providers/{provider.id}/", {"base_url": f"http://localhost:{port}/v1"})
    assert kept.status_code == 200 and kept.json()["allow_private_network"] is True


def admin_post(client, provider, base_url: str):
    return client.post(reverse("admin:providers_provider_change", args=[provider.id]), {
        "name": provider.name, "kind": provider.kind, "base_url": base_url, "api_key": "", "extra_headers": "{}",
        "settings": "{}", "tenant": provider.tenant_id, "is_active": "on",
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"})


def test_the_admin_form_drops_the_grant_when_a_tenant_admin_moves_the_provider(tenant_admin, tenant, mock):
    provider = granted(tenant, mock.url + "/v1")
    refused = admin_post(tenant_admin, provider, "http://169.254.169.254/latest/meta-data/")
    assert refused.status_code == 200
    assert "private" in str(refused.context["adminform"].form.errors["base_url"])
    provider.refresh_from_db()
    assert provider.base_url == mock.url + "/v1" and provider.allow_private_network
    assert admin_post(tenant_admin, provider, "https://upstream.invalid/v1").status_code == 302
    provider.refresh_from_db()
    assert provider.base_url == "https://upstream.invalid/v1" and not provider.allow_private_network


# --- Finding 10b: headers that cannot be sent are refused, and old rows fail cleanly --------


@pytest.mark.parametrize("field, value", [
    ("extra_headers", CRLF_HEADERS),
    ("extra_headers", {"x-team": "acme\n"}),
    ("extra_headers", {"x-team": "a\x00b"}),
    ("extra_headers", {"x-team": "café"}),
    ("extra_headers", {"bad name": "v"}),
    ("extra_headers", {"x-team\r\nx-injected": "v"}),
    ("extra_headers", {"Content-Length": "0"}),
    ("extra_headers", {"Transfer-Encoding": "chunked"}),
    ("extra_headers", {"x-team": 7}),
    ("extra_headers", ["x-team"]),
    ("api_key", "sk-first\r\nx-injected: 1"),
    ("settings", {"anthropic_version": "2023-06-01\r\nx-injected: 1"}),
    ("settings", {"anthropic_version": 20230601}),
])
def test_headers_that_cannot_be_sent_are_refused_on_save(tenant_admin, field, value):
    created = api(tenant_admin, "post", "/api/manage/providers/", {
        "name": "acme-bad", "kind": "anthropic", "base_url": "https://api.example.com", field: value})
    assert created.status_code == 400 and field in created.json(), created.content
    assert "x-injected: 1" not in created.content.decode()
    assert not Provider.objects.filter(name="acme-bad").exists()


def test_the_admin_form_refuses_a_header_with_a_line_break(tenant_admin, tenant):
    page = tenant_admin.post(reverse("admin:providers_provider_add"), {
        "name": "acme-bad", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "",
        "extra_headers": json.dumps(CRLF_HEADERS), "settings": "{}", "tenant": tenant.id, "is_active": "on",
        "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"})
    assert page.status_code == 200
    assert "line breaks" in str(page.context["adminform"].form.errors["extra_headers"])


def test_good_headers_still_reach_the_upstream(tenant_admin):
    created = api(tenant_admin, "post", "/api/manage/providers/", {
        "name": "acme-good", "kind": "openai", "base_url": "https://api.example.com/v1",
        "extra_headers": {"HTTP-Referer": "https://acme.example/app?x=1", "X-Title": "Acme\tbot"}})
    assert created.status_code == 201, created.content


def test_a_row_saved_with_a_line_break_in_a_header_fails_its_calls_cleanly(tenant, sdk, mock, gateway, api_key,
                                                                         admin_client):
    # One row per call below: each call's failures count against its deployment's breaker.
    rows = [saved_unchecked(tenant, mock.url + "/v1", name, extra_headers=CRLF_HEADERS)
            for name in ("crlf", "crlf-stream", "crlf-messages")]
    assert listed(sdk, "chat-crlf-messages")
    before = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    with pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(model="chat-crlf", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_misconfigured"
    assert "x-team" in failed.value.body["message"] and "x-injected" not in failed.value.body["message"]
    streamed = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {api_key[1]}"},
                          json={"model": "chat-crlf-stream", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
    assert streamed.status_code == 502 and streamed.json()["error"]["code"] == "upstream_misconfigured"
    anthropic_shape = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": api_key[1]}, timeout=20,
                                 json={"model": "chat-crlf-messages", "max_tokens": 10,
                                       "messages": [{"role": "user", "content": "hi"}]})
    assert anthropic_shape.status_code == 502 and anthropic_shape.json()["type"] == "error"
    assert "x-team" in anthropic_shape.json()["error"]["message"]
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == before  # nothing malformed was sent
    shown = admin_client.post(reverse("admin:providers_provider_changelist"),
                              {"action": "test_connection", "_selected_action": [rows[0].pk]}, follow=True)
    assert shown.status_code == 200
    assert any("crlf: failed" in str(m) and "x-team" in str(m) for m in shown.context["messages"])
