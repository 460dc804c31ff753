"""Finding 5 of issue 16: a provider key echoed by an upstream reaches no one.

The mock upstream echoes the key it was sent (knob echo_key=N: form N of
`echo_forms`, or all of them) in its error bodies and in its mid-stream error
events (knob error_after). Through a real gateway process, with the openai SDK
on /v1/chat/completions and the anthropic SDK on /v1/messages, for every
provider kind, neither JSON errors nor streamed errors show any form of the
key; nor do the admin's test connection, the health checks, or the logs.

`exposed` looks for the key independently of the gateway's scrubber: it
decodes what it reads (percent, HTML, \\u escapes, every base64 and hex token at
every offset) and looks for any run of 8 characters of the key, in any case.
"""

import base64
import html
import logging
import re
from types import SimpleNamespace
from urllib.parse import unquote_plus

import anthropic
import httpx
import openai
import pytest
from django.urls import reverse

from providers import health
from providers.adapters import base, redact
from providers.adapters import openai as openai_adapter
from providers.mock_upstream.server import echo_forms
from providers.models import HealthCheck, Provider
from routing.models import CircuitEvent
from tests.conftest import KINDS, make_provider, wait_until

# Keys shaped as each provider issues them (Google's AIza... among them).
KEYS = {
    "openai": "sk-proj-Zt3qL9vX2mN8bR4kW7yH1cJ6fD0sA5gE",
    "openai_compatible": "sk-or-v1-8f3a9c2e7b1d4f6a0e5c9b3d7a2f8e1c",
    "azure": "3f9a2c7e1b8d4f6a0c5e9b2d7f1a8c3e",
    "anthropic": "sk-ant-api03-Qx7Lm2Vb9Nc4Kp8Rt1Wy6Hz3Jd5Fg0Sa",
    "gemini": "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "cohere": "Xk29vLqP7mTz4RbN8cWy1HdJ6fGs3A0eUoKi5QnB",
    "ollama": "ollama-Vt5Lp8Qm2Xn9Rk4Bw7Cy1Hz6Jd3Fg",
    "huggingface": "hf_QxLmVbNcKpRtWyHzJdFgSaEoUiTlZmXk",
}
FORMS = len(echo_forms("x" * 40))
ALL_FORMS = 99
RUN = 8
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")


def _decoded(text: str) -> list[str]:
    unescaped = text.replace("\\\\", "\\")  # a JSON body's own escaping of the backslash
    views = [text, unquote_plus(text), html.unescape(text), _ESCAPE.sub(lambda m: chr(int(m[1], 16)), unescaped)]
    for token in re.findall(r"[A-Za-z0-9+/_-]{8,}", text):
        for start in range(4):
            piece = token[start:][: (len(token) - start) // 4 * 4]
            for altchars in (None, b"-_"):
                try:
                    views.append(base64.b64decode(piece, altchars=altchars).decode("latin-1"))
                except ValueError:
                    pass
    for token in re.findall(r"[0-9a-fA-F]{16,}", text):
        for start in (0, 1):
            views.append(bytes.fromhex(token[start:][: (len(token) - start) // 2 * 2]).decode("latin-1"))
    return views


def exposed(text: str, key: str) -> list[str]:
    """The runs of RUN characters of `key` that `text` shows, in any case, decoded or not."""
    runs = {key[i : i + RUN].lower() for i in range(len(key) - RUN + 1)}
    views = [view.lower() for view in _decoded(text)]
    return sorted({run for run in runs if any(run in view for view in views)})


def directive(**knobs) -> list[dict]:
    return [{"role": "user", "content": "hi [[mock " + " ".join(f"{k}={v}" for k, v in knobs.items()) + "]]"}]


@pytest.fixture()
def providers(gateway, api_key, mock):
    """A provider of every kind, each with its own key, on the mock; (openai client, anthropic client)."""
    for kind in KINDS:
        provider = make_provider(kind, mock.url)
        provider.set_api_key(KEYS[kind])
        provider.save()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=30)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=30)
    assert wait_until(lambda: {f"chat-{k}" for k in KINDS} <= {m.id for m in client.models.list()})
    return client, claude


def test_the_mock_echoes_every_form_and_the_check_finds_each(mock):
    # Without this the tests below could not fail: each form, sent raw, is found.
    key = KEYS["gemini"]
    for form in range(1, FORMS + 1):
        answer = httpx.post(mock.url + "/v1beta/models/mock-gemini:generateContent",
                            headers={"x-goog-api-key": key, "x-mock-error": "400", "x-mock-echo-key": str(form)},
                            json={"contents": [{"parts": [{"text": "hi"}]}]})
        assert answer.status_code == 400 and exposed(answer.text, key), (form, answer.text)
    streamed = httpx.post(mock.url + "/v1/chat/completions",
                          headers={"authorization": f"Bearer {key}", "x-mock-error-after": "1",
                                   "x-mock-echo-key": "1"},
                          json={"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert '"error"' in streamed.text and exposed(streamed.text, key)


@pytest.mark.parametrize("kind", list(KINDS))
def test_json_errors_show_no_form_of_the_key_to_openai_clients(kind, providers):
    client, _ = providers
    key = KEYS[kind]
    for form in [*range(1, FORMS + 1), ALL_FORMS]:
        with pytest.raises(openai.BadRequestError) as failed:
            client.chat.completions.create(model=f"chat-{kind}", messages=directive(error=400, echo_key=form))
        error = failed.value
        assert f"Provider '{kind}' rejected the request: " in error.message, error.message
        assert not exposed(error.response.text, key), (form, error.response.text)
        assert not exposed(error.message, key), (form, error.message)
    # Where the key shows as it was sent, only it is masked; the rest of the message stays useful.
    with pytest.raises(openai.BadRequestError) as failed:
        client.chat.completions.create(model=f"chat-{kind}", messages=directive(error=400, echo_key=1))
    assert "Invalid credentials: Authorization: Bearer ***" in failed.value.message
    with pytest.raises(openai.InternalServerError) as failed:  # retried, then the 502
        client.chat.completions.create(model=f"chat-{kind}", messages=directive(error=500, echo_key=ALL_FORMS))
    assert "withheld" in failed.value.message and not exposed(failed.value.response.text, key)


@pytest.mark.parametrize("kind", list(KINDS))
def test_streamed_errors_show_no_form_of_the_key_to_openai_clients(kind, providers, gateway, api_key):
    client, _ = providers
    key = KEYS[kind]
    for form in [*range(1, FORMS + 1), ALL_FORMS]:
        messages = directive(error_after=1, echo_key=form)
        received = []
        with pytest.raises(openai.APIError) as failed:
            for chunk in client.chat.completions.create(model=f"chat-{kind}", messages=messages, stream=True):
                received.append(chunk)
        assert any(c.choices and c.choices[0].delta.content for c in received), kind  # it failed mid-answer
        assert f"Provider '{kind}' failed mid-stream" in failed.value.message, failed.value.message
        assert not exposed(failed.value.message, key) and not exposed(str(failed.value.body), key), form
        raw = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {api_key[1]}"},
                         json={"model": f"chat-{kind}", "messages": messages, "stream": True}, timeout=30)
        assert '"error"' in raw.text and not exposed(raw.text, key), (form, raw.text[-600:])


@pytest.mark.parametrize("kind", list(KINDS))
def test_claude_clients_see_no_form_of_the_key_in_json_or_streamed_errors(kind, providers, gateway, api_key):
    _, claude = providers
    key = KEYS[kind]
    for form in [*range(1, FORMS + 1), ALL_FORMS]:
        with pytest.raises(anthropic.BadRequestError) as failed:
            claude.messages.create(model=f"chat-{kind}", max_tokens=20, messages=directive(error=400, echo_key=form))
        assert failed.value.response.json()["type"] == "error"
        assert not exposed(failed.value.response.text, key), (form, failed.value.response.text)

        messages = directive(error_after=1, echo_key=form)
        with pytest.raises(anthropic.APIError) as failed:
            with claude.messages.stream(model=f"chat-{kind}", max_tokens=20, messages=messages) as stream:
                for _ in stream:
                    pass
        assert "failed mid-stream" in str(failed.value) and not exposed(str(failed.value), key), form
        raw = httpx.post(gateway.url + "/v1/messages", headers={"x-api-key": api_key[1]},
                         json={"model": f"chat-{kind}", "max_tokens": 20, "messages": messages, "stream": True},
                         timeout=30)
        assert "event: error" in raw.text and not exposed(raw.text, key), (form, raw.text[-600:])


def test_the_gateways_log_holds_no_form_of_any_key(providers, gateway):
    client, _ = providers
    for kind in KINDS:
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(model=f"chat-{kind}", stream=True,
                                                    messages=directive(error_after=1, echo_key=ALL_FORMS)):
                pass
        # Five failures in a row (retries or not, as the retry budget allows): the breaker opens and
        # logs why (the upper-cased key leads the upstream's message: within the reason's first 100
        # characters).
        for _ in range(5):
            with pytest.raises(openai.APIError):
                client.chat.completions.create(model=f"chat-{kind}", messages=directive(error=500, echo_key=2))
    opened = wait_until(lambda: CircuitEvent.objects.filter(state="open", deployment__provider__name__in=list(KINDS),
                                                            reason__contains="Invalid credentials").count() >= 8)
    assert opened, list(CircuitEvent.objects.values_list("reason", flat=True))
    output = gateway.output()
    for kind, key in KEYS.items():
        assert not exposed(output, key), kind
    for event in CircuitEvent.objects.all():  # the breakers' reasons, from the failures above
        assert not any(exposed(event.reason, key) for key in KEYS.values()), event.reason


def _echoing_providers(url: str, status: int) -> dict[str, tuple[Provider, str]]:
    """Providers whose every answer is `status` echoing the key: for every kind the header whole,
    a Basic header and all forms at once; for Gemini each form alone too."""
    made = {}
    for kind in KINDS:
        forms = range(1, FORMS + 1) if kind == "gemini" else (1, 8)
        for form in [*forms, ALL_FORMS]:
            name = f"{kind}-echo{form}"
            provider = make_provider(kind, url, name=name, knobs=f"error={status},echo_key={form}")
            provider.set_api_key(KEYS[kind])
            provider.save()
            made[name] = (provider, KEYS[kind])
    return made


def test_the_admins_test_connection_shows_no_form_of_the_key(transactional_db, admin_client, mock):
    made = _echoing_providers(mock.url, 403)
    response = admin_client.post(reverse("admin:providers_provider_changelist"), follow=True, data={
        "action": "test_connection", "_selected_action": [p.pk for p, _ in made.values()]})
    assert response.status_code == 200
    shown = {str(m).split(":", 1)[0]: str(m) for m in response.context["messages"]}
    page = response.content.decode()
    for name, (_, key) in made.items():
        assert shown[name].startswith(f"{name}: failed (HTTP 403"), shown[name]
        assert "refused the gateway access" in shown[name], shown[name]
        assert not exposed(shown[name], key), shown[name]
    for key in KEYS.values():
        assert not exposed(page, key)


def test_health_checks_keep_and_show_no_form_of_the_key(transactional_db, admin_client, mock, caplog):
    made = _echoing_providers(mock.url, 404)
    with caplog.at_level(logging.DEBUG):
        checks = health.check_all()
    assert len(checks) >= len(made) and not any(c.ok for c in checks)
    for check in HealthCheck.objects.select_related("provider"):
        key = made[check.provider.name][1]
        assert "does not know the model" in check.error and not exposed(check.error, key), check.error
    reasons = [event.reason for event in CircuitEvent.objects.all()]
    assert reasons  # the failed probes opened the breakers, with the error as the reason
    pages = "".join(admin_client.get(url).content.decode() for url in (
        reverse("admin:providers_healthcheck_changelist"), reverse("admin:providers_provider_changelist")))
    for key in KEYS.values():
        assert not exposed(caplog.text, key) and not exposed(pages, key)
        assert not any(exposed(reason, key) for reason in reasons)


# Focused: the scrubber's own promise, form by form.

KEY = KEYS["gemini"]


@pytest.mark.parametrize("form", echo_forms(KEY), ids=[f"form{i}" for i in range(1, FORMS + 1)])
def test_clean_masks_or_withholds_each_form(form):
    text = f"Invalid credentials: {form} (request abc)"
    cleaned = redact.clean(text, [KEY])
    assert cleaned is None or (not exposed(cleaned, KEY) and cleaned.endswith("(request abc)")), cleaned
    assert redact.holds(text, [KEY]) and (cleaned is None or not redact.holds(cleaned, [KEY]))


def test_clean_leaves_ordinary_and_provider_masked_messages_alone():
    for text in ("The model `mock-gemini` does not exist or you do not have access to it.",
                 "Incorrect API key provided: AIza****FMBWY. You can find your API key in the console."):
        assert redact.clean(text, [KEY]) == text
    assert redact.clean("no key configured", []) == "no key configured"


def test_credential_headers_of_a_provider_are_cleaned_too():
    target = SimpleNamespace(api_key="", provider_name="p", extra_headers={"x-proxy-token": "Zq8Lm3Vb7Nc2Kp9Rt4Wy"})
    error = base.mapped_error(target, 400, b'{"error": {"message": "bad token Zq8Lm3Vb7Nc2Kp9Rt4Wy"}}', {})
    assert "Zq8Lm3Vb" not in error.message and error.message.endswith("bad token ***")


def test_an_openai_compatible_200_with_an_error_body_is_not_relayed_as_is():
    target = SimpleNamespace(api_key=KEY, provider_name="compat", extra_headers={})
    with pytest.raises(base.UpstreamError) as failed:
        openai_adapter.chat_response(target, {}, {"error": {"message": f"key {KEY} expired"}})
    assert failed.value.status == 502 and not exposed(failed.value.message, KEY)
