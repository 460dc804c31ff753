"""Configuration as code: `apply_config` builds and changes a gateway from a YAML file, `export_config`
writes it back (docs/config.md). Run against the real PostgreSQL, a gateway process and the mock."""

import io
import textwrap

import httpx
import openai
import pytest
from django.core.management import CommandError, call_command

from tests.conftest import Server, start_gateway, user_in, wait_until

FILE = """\
version: 1
providers:
  - name: mock
    kind: openai_compatible
    base_url: {mock}/v1
    api_key: {{file: provider.key}}
    allow_private_network: true
    deployments:
      - public_model: small
        upstream_model: mock-gpt
        prices: {{input: "0.15", output: "0.60"}}
      - public_model: large
        upstream_model: mock-gpt-large
        prices: {{input: "2.50", output: "10.00", cached_input: "1.25"}}
        supports_vision: false
      - public_model: embed
        upstream_model: mock-embed
        mode: embedding
        prices: {{input: "0.02"}}
routes:
  - name: smart
    strategy: priority
    targets:
      - deployment: mock/large
      - deployment: mock/small
        priority: 1
tenants:
  - slug: acme
    name: Acme Corp
    time_zone: Europe/Paris
    members:
      - email: alice@example.com
        role: owner
      - email: bob@example.com
    routes:
      - name: cheap
        strategy: weighted
        targets:
          - deployment: mock/small
            weight: 3
    limits:
      - requests_per_minute: {rpm}
      - period: day
        budget_usd: "25.50"
        alert_thresholds: [50, 100]
    cache:
      - model: small
        mode: exact
        ttl_seconds: 600
    guardrails:
      - name: pii
        route: smart
        checks:
          - kind: pii
            action: redact
            pii_types: [email]
  - slug: globex
"""


def write(tmp_path, text: str, name: str = "gateway.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def gateway_file(tmp_path, mock_url: str, rpm: int = 100) -> str:
    (tmp_path / "provider.key").write_text("sk-provider-from-file\n")
    return str(write(tmp_path, FILE.format(mock=mock_url, rpm=rpm)))


def apply(path, *args) -> str:
    out = io.StringIO()
    call_command("apply_config", str(path), *args, stdout=out)
    return out.getvalue()


def state() -> dict:
    """Everything a configuration file declares, without ids or times: what two gateways built from
    the same file must agree on."""
    from django.forms.models import model_to_dict

    from providers.models import Deployment, Provider
    from routing.models import CachePolicy, GuardrailCheck, GuardrailPolicy, Route, RouteRule, RouteTarget
    from tenants.models import Membership, Tenant
    from usage.models import Limit

    def rows(model, *natural):
        skip = {"id", "created_at", "tenant", "provider", "route", "deployment", "policy", "user", "api_key",
                "api_key_encrypted", "secret_encrypted", "context_fallback", "sub_route"}
        return sorted(((tuple(str(value) for value in natural_of(obj, natural)),
                       {k: str(v) for k, v in model_to_dict(obj).items() if k not in skip})
                      for obj in model.objects.all()), key=repr)

    def natural_of(obj, names):
        values = []
        for name in names:
            value = obj
            for part in name.split("."):
                value = getattr(value, part, None) if value is not None else None
            values.append(value)
        return values

    return {
        "tenants": rows(Tenant, "slug"),
        "members": rows(Membership, "tenant.slug", "user.email", "user.username"),
        "providers": rows(Provider, "tenant.slug", "name", "has_api_key"),
        "keys": sorted((p.name, p.get_api_key()) for p in Provider.objects.all()),
        "deployments": rows(Deployment, "provider.name", "public_model"),
        "routes": rows(Route, "tenant.slug", "name", "context_fallback.name"),
        "targets": rows(RouteTarget, "route.name", "deployment.public_model"),
        "rules": rows(RouteRule, "route.name", "deployment.public_model", "sub_route.name"),
        "limits": rows(Limit, "tenant.slug", "api_key.name"),
        "cache": rows(CachePolicy, "tenant.slug", "model"),
        "guardrails": rows(GuardrailPolicy, "tenant.slug", "name"),
        "checks": rows(GuardrailCheck, "policy.name"),
    }


def chat(client: openai.OpenAI, model: str):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "Hi"}])


def test_apply_on_an_empty_database_builds_a_gateway_that_serves_and_follows_changes(transactional_db, gateway,
                                                                                   tmp_path):
    """The provider's key comes from a file (the mock refuses any other), the route and the limit
    from the file; a changed file reaches the running gateway process without a restart."""
    from keys import services as key_services
    from tenants.models import Tenant

    mock = Server(["-m", "providers.mock_upstream", "--port", "{port}", "--require-key", "sk-provider-from-file"],
                  ready_path="/v1/models")
    try:
        path = gateway_file(tmp_path, mock.url)
        out = apply(path)
        assert "+ tenant acme" in out and "+ route smart (shared)" in out and "change(s) applied" in out
        _, secret = key_services.issue(Tenant.objects.get(slug="acme"), "app")
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0, timeout=20)
        assert wait_until(lambda: "smart" in [m.id for m in client.models.list()], timeout=10)

        answer = chat(client, "smart")
        assert answer.headers["x-gateway-route"] == "smart"
        assert answer.headers["x-gateway-model"] == "mock-gpt-large"  # the first target
        assert answer.parse().choices[0].message.content

        # The route now prefers the small model...
        reordered = FILE.format(mock=mock.url, rpm=100).replace("      - deployment: mock/large\n", "").replace(
            "      - deployment: mock/small\n        priority: 1\n",
            "      - deployment: mock/small\n        priority: 1\n      - deployment: mock/large\n        priority: 2\n")
        out = apply(write(tmp_path, reordered))
        assert out.splitlines() == ["~ route smart (shared): targets [mock/large; mock/small priority=1] -> "
                                    "[mock/small priority=1; mock/large priority=2]", "1 change(s) applied."]
        assert wait_until(lambda: chat(client, "smart").headers["x-gateway-model"] == "mock-gpt", timeout=10)

        # ...and the tenant may make one request a minute.
        out = apply(write(tmp_path, reordered.replace("requests_per_minute: 100", "requests_per_minute: 1")))
        assert out.splitlines() == ["~ limit #1 on acme: requests_per_minute 100 -> 1", "1 change(s) applied."]

        def refused() -> bool:
            try:
                chat(client, "smart")
            except openai.RateLimitError as error:
                return error.code == "rate_limit_exceeded"
            return False
        assert wait_until(refused, timeout=10, interval=0.1)
    finally:
        mock.stop()


def test_applied_twice_it_changes_nothing_and_records_nothing_more(transactional_db, tmp_path, mock_upstream):
    from tenants.models import AuditLog

    path = gateway_file(tmp_path, mock_upstream.url)
    apply(path)
    before, entries = state(), AuditLog.objects.count()
    assert apply(path).strip() == "No changes."
    assert state() == before
    assert AuditLog.objects.count() == entries


def test_a_changed_file_gives_the_diff_that_it_then_applies_and_audits(transactional_db, tmp_path, mock_upstream):
    from tenants.models import AuditLog, Tenant
    from usage.models import Limit

    path = gateway_file(tmp_path, mock_upstream.url)
    apply(path)
    changed = FILE.format(mock=mock_upstream.url, rpm=5).replace("name: Acme Corp", "name: Acme Inc").replace(
        '{input: "0.15", output: "0.60"}', '{input: "0.20", output: "0.60"}')
    write(tmp_path, changed)
    expected = ["~ tenant acme: name 'Acme Corp' -> 'Acme Inc'",
                "~ deployment small on mock (shared): input_price_per_mtok 0.15 -> 0.2",
                "~ limit #1 on acme: requests_per_minute 100 -> 5"]

    dry = apply(path, "--dry-run")
    assert dry.splitlines() == [*expected, "3 change(s) would be made (dry run)."]
    assert Tenant.objects.get(slug="acme").name == "Acme Corp"  # nothing made
    assert not AuditLog.objects.filter(action="config.apply", changes__changes=expected).exists()

    assert apply(path).splitlines() == [*expected, "3 change(s) applied."]
    assert Tenant.objects.get(slug="acme").name == "Acme Inc"
    assert Limit.objects.get(tenant__slug="acme", requests_per_minute__isnull=False).requests_per_minute == 5
    entry = AuditLog.objects.get(action="config.apply", changes__changes=expected)
    assert entry.actor_label == "apply_config gateway.yaml"
    # Each row's own audit entry too, field by field, as an admin edit writes it.
    update = AuditLog.objects.filter(action="update", object_type="tenants.Tenant").latest("id")
    assert update.changes == {"name": ["Acme Corp", "Acme Inc"]}
    assert update.actor_label == "apply_config gateway.yaml"


def test_prune_removes_what_the_file_no_longer_names_and_only_that(transactional_db, tmp_path, mock_upstream):
    from keys import services as key_services
    from providers.models import Deployment
    from routing.models import Route
    from tenants.models import Membership, Tenant
    from usage.models import Limit

    path = gateway_file(tmp_path, mock_upstream.url)
    apply(path)
    key, _ = key_services.issue(Tenant.objects.get(slug="acme"), "app")
    Limit.objects.create(tenant=key.tenant, api_key=key, requests_per_minute=7)  # a key's: not the file's
    smaller = (FILE.format(mock=mock_upstream.url, rpm=100)
               .replace("      - email: bob@example.com\n", "")
               .replace("  - slug: globex\n", "")
               .replace('      - public_model: embed\n        upstream_model: mock-embed\n        mode: embedding\n'
                        '        prices: {input: "0.02"}\n', "")
               .replace("    routes:\n      - name: cheap\n        strategy: weighted\n        targets:\n"
                        "          - deployment: mock/small\n            weight: 3\n", ""))
    write(tmp_path, smaller)
    gone = ["- deployment embed (mock-embed) on mock (shared)", "- route cheap (acme)",
            "- member bob@example.com of acme",
            "- tenant globex (with its keys, members, providers, routes and policies)"]

    kept = apply(path)
    assert "4 object(s) the file does not name are kept (--prune deletes them):" in kept
    assert Tenant.objects.filter(slug="globex").exists() and Route.objects.filter(name="cheap").exists()

    pruned = apply(path, "--prune")
    assert pruned.splitlines() == [*gone, "4 change(s) applied."]
    assert not Tenant.objects.filter(slug="globex").exists()
    assert not Route.objects.filter(name="cheap").exists()
    assert not Deployment.objects.filter(public_model="embed").exists()
    assert list(Membership.objects.values_list("user__email", flat=True)) == ["alice@example.com"]
    assert Limit.objects.filter(api_key=key, requests_per_minute=7).exists()
    assert apply(path, "--prune").strip() == "No changes."


INVALID = [
    # (what is wrong, the file, an error line it gives)
    ("an inline secret", """\
        providers:
          - name: p
            kind: openai
            base_url: https://api.openai.com/v1
            api_key: sk-live-123
        """, "line 5: providers[0].api_key: a secret is never written in the file"),
    ("a key file that is not there", """\
        providers:
          - name: p
            kind: openai
            base_url: https://api.openai.com/v1
            api_key: {file: no-such.key}
        """, "line 5: providers[0].api_key.file: cannot read the key: No such file or directory"),
    ("a misspelt key", """\
        tenants:
          - slug: acme
            limits:
              - request_per_minute: 5
        """, "line 4: tenants[0].limits[0].request_per_minute: Extra inputs are not permitted"),
    ("a wrong type", """\
        tenants:
          - slug: acme
            is_active: maybe
        """, "line 3: tenants[0].is_active: Input should be a valid boolean"),
    ("what the model refuses", """\
        tenants:
          - slug: acme
            time_zone: Mars/Olympus
        """, "line 3: tenants[0].time_zone: Unknown time zone 'Mars/Olympus'."),
    ("a loopback provider", """\
        providers:
          - name: local
            kind: ollama
            base_url: http://127.0.0.1:11434
        """, "line 4: providers[0].base_url: '127.0.0.1' is a private, loopback, link-local or reserved address"),
    ("a deployment nobody has", """\
        routes:
          - name: smart
            targets:
              - deployment: nowhere/gpt
        """, "line 4: routes[0].targets[0].deployment: 'nowhere/gpt' names no deployment"),
    ("a tenant twice", """\
        tenants:
          - slug: acme
          - slug: acme
        """, "line 3: tenants[1]: a second tenant 'acme'"),
    ("a key twice", """\
        tenants:
          - slug: acme
            slug: other
        """, "line 3: tenants[0].slug: given twice in the same mapping"),
    ("an unset variable", """\
        providers:
          - name: p
            kind: openai
            base_url: ${NO_SUCH_VARIABLE_HERE}
        """, "line 4: (top): ${NO_SUCH_VARIABLE_HERE} is not set in the environment"),
    ("not YAML", """\
        tenants:
          - slug: [acme
        """, "line 3: (top): not YAML"),
    ("a route strategy that does not exist", """\
        routes:
          - name: smart
            strategy: fastest
        """, "line 3: routes[0].strategy: Value 'fastest' is not a valid choice."),
]


@pytest.mark.parametrize(("text", "error"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_files_are_refused_with_the_path_and_line_and_nothing_applied(transactional_db, tmp_path, text,
                                                                             error):
    from providers.models import Provider
    from tenants.models import Tenant

    path = write(tmp_path, textwrap.dedent(text))
    with pytest.raises(CommandError) as refused:
        apply(path)
    message = str(refused.value)
    assert message.startswith("Nothing applied; ")
    assert f"{path}: {error}" in message, message
    assert not Tenant.objects.exists() and not Provider.objects.exists()


def test_export_then_apply_on_a_fresh_database_gives_the_same_state(transactional_db, tmp_path, mock_upstream,
                                                                    monkeypatch):
    from django.contrib.auth import get_user_model

    from providers.models import Provider
    from routing.models import Route, RouteRule
    from tenants.models import Tenant

    monkeypatch.setenv("GATEWAY_PROVIDER_KEY_MOCK", "sk-from-the-environment")
    text = FILE.format(mock=mock_upstream.url, rpm=100).replace("{file: provider.key}",
                                                               "{env: GATEWAY_PROVIDER_KEY_MOCK}")
    apply(write(tmp_path, text))
    # What a file cannot say in the shorter form must survive too: a rule, a context fallback.
    cheap = Route.objects.get(name="cheap")
    cheap.context_fallback = Route.objects.get(name="smart")  # a tenant's route falls back to a shared one
    cheap.save()
    RouteRule.objects.create(route=cheap, kind="has_images", deployment=cheap.targets.first().deployment)
    RouteRule.objects.create(route=cheap, order=1, kind="keyword", value="legal", sub_route=cheap.context_fallback)
    user_in(cheap.tenant, "admin", name="carol")  # a user without an e-mail address: named by username
    before = state()
    exported = io.StringIO()
    call_command("export_config", stdout=exported)
    assert "sk-from-the-environment" not in exported.getvalue()
    assert "env: GATEWAY_PROVIDER_KEY_MOCK" in exported.getvalue()

    Tenant.objects.all().delete()
    Route.objects.all().delete()
    Provider.objects.all().delete()
    get_user_model().objects.all().delete()
    assert apply(write(tmp_path, exported.getvalue(), "exported.yaml")).endswith("change(s) applied.\n")
    assert state() == before
    again = io.StringIO()
    call_command("export_config", stdout=again)
    assert again.getvalue() == exported.getvalue()


def test_a_stored_key_is_exported_as_a_reference_kept_where_it_is_stored(transactional_db, tmp_path,
                                                                         mock_upstream):
    from providers.models import Provider

    apply(gateway_file(tmp_path, mock_upstream.url))
    exported = io.StringIO()
    call_command("export_config", stdout=exported)
    assert "sk-provider-from-file" not in exported.getvalue() and "stored: true" in exported.getvalue()
    path = write(tmp_path, exported.getvalue(), "exported.yaml")
    assert apply(path).strip() == "No changes."
    assert Provider.objects.get(name="mock").get_api_key() == "sk-provider-from-file"

    Provider.objects.all().delete()
    with pytest.raises(CommandError, match=r"providers\[0\]\.api_key: no key is stored for this provider"):
        apply(path)


def test_the_config_change_reaches_every_gateway_process_as_an_admin_edit_does(transactional_db, gateway_env,
                                                                             tmp_path, mock_upstream):
    """A route added by the file is served by both worker processes of a running gateway within moments,
    well before their caches would expire (GATEWAY_CONFIG_CACHE_SECONDS, 30 s): the pub/sub news did it."""
    from keys import services as key_services
    from tenants.models import Tenant

    server = start_gateway(gateway_env, workers=2)
    try:
        apply(gateway_file(tmp_path, mock_upstream.url))
        _, secret = key_services.issue(Tenant.objects.get(slug="acme"), "app")
        headers = {"Authorization": f"Bearer {secret}"}
        body = {"model": "newest", "messages": [{"role": "user", "content": "Hi"}]}

        def statuses(count: int) -> set[int]:
            # New connections each time: the kernel spreads them over both workers.
            return {httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers).status_code
                    for _ in range(count)}

        assert wait_until(lambda: statuses(1) == {404}, timeout=10)  # both know the key, neither the route
        assert statuses(10) == {404}
        more = FILE.format(mock=mock_upstream.url, rpm=100).replace(
            "routes:\n  - name: smart\n", "routes:\n  - name: newest\n    targets:\n      - deployment: mock/small\n"
                                          "  - name: smart\n", 1)
        assert "+ route newest (shared)" in apply(write(tmp_path, more))
        assert wait_until(lambda: statuses(10) == {200}, timeout=10, interval=0.2)
    finally:
        server.stop()


def test_a_webhook_secret_is_read_from_the_environment_stored_encrypted_and_its_change_applied(
        transactional_db, tmp_path, monkeypatch):
    from routing.models import GuardrailCheck

    monkeypatch.setenv("HOOK_HMAC", "first-hmac-key")
    path = write(tmp_path, textwrap.dedent("""\
        tenants:
          - slug: acme
            guardrails:
              - name: review
                checks:
                  - kind: webhook
                    url: https://hooks.example.com/check
                    action: flag
                    secret: {env: HOOK_HMAC}
        """))
    apply(path)
    check = GuardrailCheck.objects.get()
    assert check.secret() == "first-hmac-key" and "first-hmac-key" not in check.secret_encrypted
    assert apply(path).strip() == "No changes."

    monkeypatch.setenv("HOOK_HMAC", "second-hmac-key")
    out = apply(path)
    assert "~ guardrail policy review of acme: checks " in out and "secrets [secret] -> [secret] (changed)" in out
    assert "second-hmac-key" not in out
    assert GuardrailCheck.objects.get().secret() == "second-hmac-key"
    exported = io.StringIO()
    call_command("export_config", stdout=exported)
    assert "second-hmac-key" not in exported.getvalue() and "stored: true" in exported.getvalue()
