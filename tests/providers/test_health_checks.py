"""Provider health checks: a probe per provider and deployment, kept, shown in the
admin, and fed to the circuit breakers every gateway process routes by."""

import time

from providers import health
from providers.models import Deployment, HealthCheck
from routing import breakers
from routing.models import CircuitEvent
from tests.conftest import KINDS, PROVIDER_SECRET, make_provider, wait_until
from tests.routing.test_routing import ask, deployment, provider, ready, route, served_by


def checks_by_name(checks: list[HealthCheck]) -> dict:
    return {(c.provider.name, c.deployment.public_model if c.deployment else None): c for c in checks}


def cooldown_over(deployment_id: int) -> None:
    """Age an open breaker past its cooldown (half-open), as the clock would."""
    breakers.force(deployment_id, time.time() - 1, "open", "cooldown over (test)")


def test_every_kind_and_deployment_passes_against_a_healthy_upstream(transactional_db, mock):
    for kind in KINDS:
        make_provider(kind, mock.url)
    checks = health.check_all()
    # A provider row and one per deployment (chat, plus embeddings where the kind has them).
    assert len(checks) == len(KINDS) + sum(1 + bool(spec[2]) for spec in KINDS.values())
    failed = [(c.provider.name, c.deployment and c.deployment.public_model, c.error) for c in checks if not c.ok]
    assert failed == []
    assert all(c.status == 200 and c.latency_ms < 5000 for c in checks)
    assert HealthCheck.objects.filter(ok=True).count() == len(checks)


def test_failures_are_kept_shown_and_open_breakers_and_recovery_closes_them(transactional_db, mock, admin_client,
                                                                            django_assert_max_num_queries):
    make_provider("openai", mock.url, name="good")
    make_provider("openai", "http://127.0.0.1:9", name="dead")

    by_name = checks_by_name(health.check_all())
    assert by_name[("good", None)].ok and by_name[("good", None)].models_found >= 3
    assert by_name[("good", "chat-good")].ok
    assert not by_name[("dead", None)].ok and "could not connect" in by_name[("dead", None)].error
    assert not by_name[("dead", "chat-dead")].ok and not by_name[("dead", "embed-dead")].ok

    dead = Deployment.objects.get(public_model="chat-dead")
    good = Deployment.objects.get(public_model="chat-good")
    assert breakers.shared_state(dead.id).startswith("open")
    assert breakers.shared_state(good.id) == "closed"
    assert CircuitEvent.objects.filter(deployment=dead, state="open", reason__startswith="health check failed: "
                                       "could not connect").count() == 1

    # Still down once the cooldown is over: the next check opens it again, so
    # no client call is spent finding out.
    cooldown_over(dead.id)
    health.check_all()
    assert breakers.shared_state(dead.id).startswith("open until")

    # The provider comes back. Within the cooldown a passing check leaves the
    # breaker open; once the cooldown is over the next check closes it.
    dead.provider.base_url = mock.url + "/v1"
    dead.provider.save()
    health.check_all()
    assert breakers.shared_state(dead.id).startswith("open until")
    cooldown_over(dead.id)
    health.check_all()
    assert breakers.shared_state(dead.id) == "closed"
    assert CircuitEvent.objects.filter(deployment=dead, state="closed", reason="health check passed").exists()

    providers_page = admin_client.get("/admin/providers/provider/").content.decode()
    assert "last health check" in providers_page.lower() and providers_page.count("<td class=\"field-health\">ok (") == 2
    deployments_page = admin_client.get("/admin/providers/deployment/").content.decode()
    assert deployments_page.count("<td class=\"field-health\">ok (") == 4  # chat and embeddings of both
    with django_assert_max_num_queries(10):  # not one more per row
        results_page = admin_client.get("/admin/providers/healthcheck/").content.decode()
    assert results_page.count("could not connect") == 3 * 2  # provider and two deployments, twice
    assert results_page.count("chat-good → good/mock-gpt") == 4  # checked four times
    assert admin_client.get(f"/admin/providers/healthcheck/{HealthCheck.objects.first().pk}/delete/").status_code == 403


def test_failures_say_why_without_the_key_whatever_the_upstream_answers(transactional_db, mock, settings):
    make_provider("anthropic", mock.url, name="refusing", knobs="error=401")
    make_provider("openai", mock.url, name="overloaded", knobs="error=503")
    # A 404 naming a very long path: longer than the column, like a proxy's HTML error page.
    make_provider("openai", mock.url + "/" + "x" * 460, name="verbose")
    by_name = checks_by_name(health.check_all())

    refusing = by_name[("refusing", None)]
    assert (refusing.ok, refusing.status) == (False, 401) and "credentials" in refusing.error
    assert by_name[("overloaded", "chat-overloaded")].status == 503
    verbose = by_name[("verbose", None)]
    assert verbose.status == 404 and len(verbose.error) == 500
    stored = "".join(HealthCheck.objects.values_list("error", flat=True))
    assert PROVIDER_SECRET not in stored and "sk-kind" not in stored


def test_hanging_providers_are_probed_at_once_not_one_after_another(transactional_db, mock, settings):
    settings.HEALTH_CHECK_TIMEOUT = 1
    for i in range(4):
        make_provider("openai", mock.url, name=f"hanging-{i}", knobs="hang=1")
    make_provider("openai", mock.url, name="fine")
    started = time.monotonic()
    checks = health.check_all()
    assert time.monotonic() - started < 3  # four 1-second timeouts, side by side
    hanging = [c for c in checks if c.provider.name.startswith("hanging") and c.deployment is None]
    assert len(hanging) == 4 and all(c.error == "no answer within 1 s" for c in hanging)
    assert checks_by_name(checks)[("fine", "chat-fine")].ok


def test_an_unlisted_model_is_shown_failed_but_left_to_real_calls(transactional_db, mock):
    # Providers serve aliases their model list does not name (Anthropic's
    # "-latest" names, Ollama's untagged names), so the check says so but
    # does not take the deployment out of routing.
    unlisted = make_provider("openai", mock.url, name="unlisted")
    Deployment.objects.filter(provider=unlisted).update(upstream_model="an-alias")
    by_name = checks_by_name(health.check_all())
    check = by_name[("unlisted", "chat-unlisted")]
    assert not check.ok and check.error == "the provider does not list the model 'an-alias'"
    assert by_name[("unlisted", None)].ok
    assert breakers.shared_state(check.deployment_id) == "closed"


def test_the_gateway_stops_calling_a_deployment_as_soon_as_its_check_fails(key_client, gateway, api_key, mock):
    down = deployment(provider(mock, "down", error=503), "watched-model")
    up = deployment(provider(mock, "up"), "watched-model")
    route("watched", [(down, 1), (up, 1)])
    first = ready(gateway, api_key[1], "watched")
    assert served_by(first) == "up" and first.headers["x-gateway-attempts"] == "2"  # tried "down" first

    health.check_all()  # in this process, like a Celery worker: the gateway learns through Redis
    assert wait_until(lambda: ask(gateway, api_key[1], "watched").headers["x-gateway-attempts"] == "1")
    response = ask(gateway, api_key[1], "watched")
    assert served_by(response) == "up" and response.headers["x-gateway-attempts"] == "1"
