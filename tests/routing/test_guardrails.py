"""Guardrails on the real gateway process, through the openai and anthropic SDKs.

Policies are written to the database as an admin would; the gateway process hears of them
through Redis. The mock upstream answers with scripted text (`say`) in 4-character stream
chunks, so every finding in an answer is split across chunks.
"""

import http.server
import json
import threading
import time

import anthropic
import httpx
import openai
import pytest

from providers.mock_upstream import directive
from tests.conftest import make_provider, usage_record, wait_until

EMAIL = "jane.roe@example.org"


def policy(tenant, *checks, name="policy", **fields):
    from routing.models import GuardrailCheck, GuardrailPolicy

    row = GuardrailPolicy.objects.create(tenant=tenant, name=name, **fields)
    for n, spec in enumerate(checks):
        spec = dict(spec)
        secret = spec.pop("secret", "")
        check = GuardrailCheck(policy=row, order=n, **spec)
        check.set_secret(secret)
        check.full_clean()
        check.save()
    return row


@pytest.fixture()
def clients(gateway, mock, api_key):
    for kind in ("openai", "anthropic"):
        make_provider(kind, mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: {"chat-openai", "chat-anthropic"} <= {m.id for m in client.models.list()})
    return client, claude


def chat(client, text, model="chat-openai", **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


def refused(call):
    """Wait for the gateway process to have the new policy: the call is refused once it has."""
    def attempt():
        try:
            call()
        except (openai.BadRequestError, anthropic.BadRequestError) as exc:
            return exc
        return None
    error = wait_until(attempt, timeout=10)
    assert error is not None, "the policy never took effect"
    return error


def streamed_text(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_input_block_answers_400_in_every_fronts_shape_naming_the_check(tenant, clients):
    client, claude = clients
    policy(tenant, {"kind": "pii", "stage": "input", "action": "block"}, name="no-pii")
    prompt = f"Write to {EMAIL} please"
    error = refused(lambda: chat(client, prompt))
    assert error.body["code"] == "content_policy_violation"
    assert "no-pii/pii#1" in error.body["message"] and EMAIL not in error.body["message"]
    record = usage_record(error.response.headers["x-request-id"])
    assert record.http_status == 400 and record.error_type == "content_policy_violation"
    assert record.guardrails["action"] == "blocked"
    assert record.guardrails["checks"][0]["findings"] == {"email": 1}
    assert EMAIL not in json.dumps(record.guardrails)
    for call in (lambda: client.completions.create(model="chat-openai", prompt=prompt),
                 lambda: client.embeddings.create(model="embed-openai", input=[prompt]),
                 lambda: client.responses.create(model="chat-openai", input=prompt),
                 lambda: chat(client, prompt, stream=True)):
        with pytest.raises(openai.BadRequestError) as blocked:
            call()
        assert blocked.value.body["code"] == "content_policy_violation"
    with pytest.raises(anthropic.BadRequestError) as blocked_there:
        claude.messages.create(model="chat-anthropic", max_tokens=20, messages=[{"role": "user", "content": prompt}])
    assert blocked_there.value.body["type"] == "error"
    assert "no-pii/pii#1" in blocked_there.value.body["error"]["message"]
    assert chat(client, "Nothing personal here").choices[0].message.content  # clean prompts pass


def test_input_redaction_hides_values_from_the_upstream_and_restore_puts_them_back(tenant, clients, mock):
    client, claude = clients
    policy(tenant, {"kind": "pii", "stage": "input", "action": "redact"},
           {"kind": "secrets", "stage": "input", "action": "redact"}, name="mask", restore=True)
    key = "AKIAIOSFODNN7EXAMPLE"
    prompt = f"Mail {EMAIL} the key {key} " + directive(say="Done: I wrote to [EMAIL_1] about [SECRET_1].")

    def upstream_saw_placeholder():
        chat(client, prompt)
        return "[EMAIL_1]" in httpx.get(mock.url + "/_mock/last").text
    assert wait_until(upstream_saw_placeholder, timeout=10)
    seen = httpx.get(mock.url + "/_mock/last").text
    assert EMAIL not in seen and key not in seen and "[SECRET_1]" in seen
    answer = chat(client, prompt)
    assert answer.choices[0].message.content == f"Done: I wrote to {EMAIL} about {key}."
    assert streamed_text(chat(client, prompt, stream=True)) == f"Done: I wrote to {EMAIL} about {key}."
    with claude.messages.stream(model="chat-anthropic", max_tokens=50,
                                messages=[{"role": "user", "content": prompt}]) as stream:
        assert "".join(stream.text_stream) == f"Done: I wrote to {EMAIL} about {key}."


def test_output_redaction_in_json_and_streams_catches_findings_split_across_chunks(tenant, clients):
    client, claude = clients
    policy(tenant, {"kind": "pii", "stage": "output", "action": "redact"}, name="out")
    say = directive(say=f"Reach me at {EMAIL} or 4111 1111 1111 1111, not 4111 1111 1111 1112.")
    expected = "Reach me at [EMAIL_1] or [CARD_1], not 4111 1111 1111 1112."
    assert wait_until(lambda: chat(client, say).choices[0].message.content == expected, timeout=10)
    assert streamed_text(chat(client, say, stream=True)) == expected
    assert streamed_text(chat(client, say, model="chat-anthropic", stream=True)) == expected
    legacy = "".join(c.choices[0].text for c in client.completions.create(model="chat-openai", prompt=say,
                                                                         stream=True))
    assert legacy == expected
    with claude.messages.stream(model="chat-anthropic", max_tokens=50,
                                messages=[{"role": "user", "content": say}]) as stream:
        assert "".join(stream.text_stream) == expected
    response = client.responses.create(model="chat-openai", input=say)
    assert response.output_text == expected
    events = list(client.responses.create(model="chat-openai", input=say, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected


def test_a_redacted_stream_keeps_every_character_of_the_text_around_its_findings(tenant, clients):
    # Quotes, backslashes and accents travel escaped or as raw UTF-8 in the chunks; text is released
    # mid-stream (the answer is longer than the window) as well as at its end.
    client, _ = clients
    policy(tenant, {"kind": "pii", "stage": "output", "action": "redact"}, name="long")
    words = 'Café «déjà vu» said "hi" in C:\\temp\\new, tab\there. '
    text = f"{words * 3}Write to {EMAIL} today. {words * 3}Or to {EMAIL}. {words}"
    expected = text.replace(EMAIL, "[EMAIL_1]")
    say = directive(say=text)
    assert wait_until(lambda: streamed_text(chat(client, say, stream=True)) == expected, timeout=10)
    legacy = "".join(c.choices[0].text for c in client.completions.create(model="chat-openai", prompt=say,
                                                                         stream=True))
    assert legacy == expected


def test_output_block_ends_a_stream_with_an_error_event_before_the_finding(tenant, clients):
    client, claude = clients
    policy(tenant, {"kind": "secrets", "stage": "output", "action": "block"}, name="nokeys")
    leak = "Here is the token you asked for: ghp_abcdefghijklmnopqrstuvwxyz0123456789 enjoy"
    say = directive(say=leak)
    error = refused(lambda: chat(client, say))
    assert error.body["code"] == "content_policy_violation"
    received = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in chat(client, say, stream=True):
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "content_policy_violation" in str(cut.value.body or cut.value.message) or \
        "nokeys/secrets#1" in cut.value.message
    assert "ghp_" not in "".join(received)
    with pytest.raises(anthropic.APIStatusError) as there:
        with claude.messages.stream(model="chat-anthropic", max_tokens=50,
                                    messages=[{"role": "user", "content": say}]) as stream:
            text = "".join(stream.text_stream)
            assert "ghp_" not in text
    assert "nokeys/secrets#1" in str(there.value)


def test_flag_lets_the_call_pass_and_records_the_findings(tenant, clients):
    client, _ = clients
    policy(tenant, {"kind": "terms", "stage": "both", "action": "flag", "terms": ["Project Falcon"]}, name="watch")
    prompt = "Tell me about project falcon " + directive(say="Project Falcon is secret.")

    def flagged_record():
        answer = chat(client, prompt)
        assert answer.choices[0].message.content == "Project Falcon is secret."
        record = usage_record(answer.id) or _record_by_latest(tenant)
        return record if record and record.guardrails else None
    record = wait_until(flagged_record, timeout=10)
    assert record.guardrails["action"] == "flagged"
    assert [(c["stage"], c["action"], c["findings"]) for c in record.guardrails["checks"]] == [
        ("input", "flagged", {"term": 1}), ("output", "flagged", {"term": 1})]


def _record_by_latest(tenant):
    from usage.models import UsageRecord

    time.sleep(0.3)
    return UsageRecord.objects.filter(tenant=tenant, endpoint="chat.completions").order_by("-created_at").first()


class Webhook(http.server.BaseHTTPRequestHandler):
    mode = "allow"
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        Webhook.seen.append((self.headers.get("x-gateway-signature", ""), body))
        if Webhook.mode == "hang":
            time.sleep(3)
        if Webhook.mode == "error":
            self.send_response(500)
            self.end_headers()
            return
        verdict = {"allow": b"forbidden" not in body, "reasons": ["house-rule"]}
        out = json.dumps(verdict).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Webhook.mode, Webhook.seen = "allow", []
    yield f"http://127.0.0.1:{server.server_address[1]}/check"
    server.shutdown()


def test_webhook_signs_its_calls_and_blocks_what_it_refuses(tenant, clients, webhook):
    import hashlib
    import hmac

    client, _ = clients
    policy(tenant, {"kind": "webhook", "stage": "input", "action": "block", "url": webhook, "secret": "whsec-1",
                    "allow_private_network": True, "timeout_ms": 1000}, name="hook")
    error = refused(lambda: chat(client, "a forbidden request"))
    assert "hook/webhook#1" in error.body["message"]
    signature, body = Webhook.seen[-1]
    stamp, mac = (part.split("=", 1)[1] for part in signature.split(","))
    assert mac == hmac.new(b"whsec-1", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert chat(client, "a fine request").choices[0].message.content


@pytest.mark.parametrize("failure", ["hang", "error"])
def test_a_failing_webhook_refuses_under_closed_and_passes_recorded_under_open(tenant, clients, webhook, failure):
    from routing.models import GuardrailCheck

    client, _ = clients
    policy(tenant, {"kind": "webhook", "stage": "input", "action": "block", "url": webhook,
                    "allow_private_network": True, "timeout_ms": 400, "failure_mode": "closed"}, name="hook")
    Webhook.mode = failure
    error = refused(lambda: chat(client, "hello"))
    assert "could not run" in error.body["message"] and error.body["code"] == "content_policy_violation"
    for check in GuardrailCheck.objects.all():
        check.failure_mode = "open"
        check.save()  # as the admin saves it: the gateway hears of the change

    def passed():
        try:
            return chat(client, "hello")
        except openai.BadRequestError:
            return None
    answer = wait_until(passed, timeout=10)
    assert answer is not None
    record = wait_until(lambda: (r := _record_by_latest(tenant)) and r.http_status == 200 and r.guardrails and r)
    assert record.guardrails["checks"][0]["action"] == "failed_open"
    assert record.guardrails["checks"][0]["error"] == ("time limit" if failure == "hang" else "status 500")


def test_a_catastrophic_pattern_is_cut_off_by_its_time_limit(tenant, clients):
    client, _ = clients
    # A lookahead RE2 cannot run: Python's engine backtracks for minutes on this prompt.
    policy(tenant, {"kind": "regex", "stage": "input", "action": "block", "patterns": [r"^(?=(a+)+$)b"],
                    "timeout_ms": 300}, name="slow")
    started = time.monotonic()
    error = refused(lambda: chat(client, "a" * 40 + "!"))
    assert time.monotonic() - started < 8
    assert "time limit" in error.body["message"]
    assert chat(client, "b fine").choices[0].message.content  # the pattern's process is back for the next call


def test_moderation_runs_through_a_moderation_deployment_and_is_billed(tenant, clients, mock, api_key):
    from providers.models import Deployment, Provider
    from usage.models import UsageRecord

    client, _ = clients
    provider = Provider.objects.get(name="openai")
    Deployment.objects.create(provider=provider, public_model="mod-openai", upstream_model="omni-moderation-latest",
                              mode="moderation", input_price_per_mtok="2")
    assert wait_until(lambda: _moderates(client), timeout=10)
    policy(tenant, {"kind": "moderation", "stage": "input", "action": "block", "model": "mod-openai"}, name="mod")
    error = refused(lambda: chat(client, "I will kill the process"))
    assert "mod/moderation#1" in error.body["message"] and "violence" in error.body["message"]
    billed = wait_until(lambda: UsageRecord.objects.filter(api_key=api_key[0], endpoint="moderations",
                                                           client_request_id__endswith="-mod").first())
    assert billed.prompt_tokens > 0 and billed.cost_usd > 0


def _moderates(client):
    try:
        result = client.moderations.create(model="mod-openai", input="I will kill it")
    except openai.APIError:
        return False
    return result.results[0].flagged and result.results[0].categories.violence


def test_policies_apply_per_key_and_route_only(tenant, clients, api_key):
    from keys import services as key_services

    client, _ = clients
    policy(tenant, {"kind": "terms", "stage": "input", "action": "block", "terms": ["zebra"]}, name="route-only",
           route="chat-openai")
    refused(lambda: chat(client, "a zebra"))
    assert chat(client, "a zebra", model="chat-anthropic").choices[0].message.content
    other_key = key_services.issue(tenant, "other")[1]
    policy(tenant, {"kind": "terms", "stage": "input", "action": "block", "terms": ["lion"]}, name="key-only",
           api_key=api_key[0])
    refused(lambda: chat(client, "a lion", model="chat-anthropic"))
    other = openai.OpenAI(base_url=client.base_url, api_key=other_key, max_retries=0)
    assert chat(other, "a lion", model="chat-anthropic").choices[0].message.content


def test_a_cached_answer_is_restored_with_each_callers_own_values_never_anothers(tenant, clients, mock):
    """The cache keys on the redacted prompt and stores the answer with its placeholders: a hit gives
    the second caller their own address back, never the first caller's, and the upstream saw neither."""
    from routing.models import CachePolicy

    client, _ = clients
    policy(tenant, {"kind": "pii", "stage": "input", "action": "redact"}, name="mask", restore=True)
    CachePolicy.objects.create(tenant=tenant, mode="exact")
    say = directive(say="Done: I wrote to [EMAIL_1].")
    first, second = "jane.roe@example.org", "max.mustermann@example.com"

    def restored_and_cached():
        raw = client.chat.completions.with_raw_response.create(
            model="chat-openai", messages=[{"role": "user", "content": f"Mail {first} {say}"}])
        return raw.headers.get("x-gateway-cache") and raw.parse().choices[0].message.content == f"Done: I wrote to {first}."
    assert wait_until(restored_and_cached, timeout=10)
    calls = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    raw = client.chat.completions.with_raw_response.create(
        model="chat-openai", messages=[{"role": "user", "content": f"Mail {second} {say}"}])
    assert raw.headers["x-gateway-cache"] == "hit"
    assert raw.parse().choices[0].message.content == f"Done: I wrote to {second}."
    assert httpx.get(mock.url + "/_mock/stats").json()["requests"] == calls  # answered from the cache
    assert first not in httpx.get(mock.url + "/_mock/last").text
    streamed = client.chat.completions.create(model="chat-openai", stream=True,
                                              messages=[{"role": "user", "content": f"Mail {second} {say}"}])
    assert streamed_text(streamed) == f"Done: I wrote to {second}."


# --- every front, JSON and streamed --------------------------------------------------------

FRONTS = ["chat", "legacy", "responses", "messages", "messages, translated"]


def ask(front: str, clients, text: str, stream: bool, pieces: list | None = None) -> tuple[dict, str]:
    """(response headers, answer text) of one call on `front`, JSON or streamed, by the real SDKs; a stream's
    text pieces are also put in `pieces` as they arrive."""
    client, claude = clients
    pieces = [] if pieces is None else pieces
    if front == "chat":
        kwargs = {"model": "chat-openai", "messages": [{"role": "user", "content": text}]}
        if stream:
            with client.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
                pieces.extend(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                return raw.headers, "".join(pieces)
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        return raw.headers, raw.parse().choices[0].message.content
    if front == "legacy":
        kwargs = {"model": "chat-openai", "prompt": text}
        if stream:
            with client.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
                pieces.extend(c.choices[0].text for c in raw.parse() if c.choices)
                return raw.headers, "".join(pieces)
        raw = client.completions.with_raw_response.create(**kwargs)
        return raw.headers, raw.parse().choices[0].text
    if front == "responses":
        if stream:
            with client.responses.with_streaming_response.create(model="chat-openai", input=text, stream=True) as raw:
                pieces.extend(e.delta for e in raw.parse() if e.type == "response.output_text.delta")
                return raw.headers, "".join(pieces)
        raw = client.responses.with_raw_response.create(model="chat-openai", input=text)
        return raw.headers, raw.parse().output_text
    model = "chat-anthropic" if front == "messages" else "chat-openai"  # native, or through the chat form
    kwargs = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}]}
    if stream:
        with claude.messages.with_streaming_response.create(stream=True, **kwargs) as raw:
            pieces.extend(e.delta.text for e in raw.parse()
                          if e.type == "content_block_delta" and e.delta.type == "text_delta")
            return raw.headers, "".join(pieces)
    raw = claude.messages.with_raw_response.create(**kwargs)
    return raw.headers, "".join(b.text for b in raw.parse().content if b.type == "text")


@pytest.mark.parametrize("stream", [False, True])
def test_every_front_redacts_the_prompt_and_restores_the_answer(tenant, clients, mock, stream):
    client, _ = clients
    policy(tenant, {"kind": "pii", "stage": "input", "action": "redact"}, name="mask", restore=True)
    prompt = f"Mail {EMAIL} please " + directive(say="Done: I wrote to [EMAIL_1].")
    assert wait_until(lambda: ask("chat", clients, prompt, False) and "[EMAIL_1]" in httpx.get(
        mock.url + "/_mock/last").text, timeout=10)
    for front in FRONTS:
        headers, text = ask(front, clients, prompt, stream)
        seen = httpx.get(mock.url + "/_mock/last").text
        assert EMAIL not in seen and "[EMAIL_1]" in seen, front
        assert text == f"Done: I wrote to {EMAIL}.", front
        record = usage_record(headers["x-request-id"])
        assert record.guardrails["action"] == "redacted" and EMAIL not in json.dumps(record.guardrails), front
    client.embeddings.create(model="embed-openai", input=[prompt])
    seen = httpx.get(mock.url + "/_mock/last").text
    assert EMAIL not in seen and "[EMAIL_1]" in seen


@pytest.mark.parametrize("stream", [False, True])
def test_every_front_blocks_an_answer_and_a_stream_ends_before_the_finding(tenant, clients, stream):
    policy(tenant, {"kind": "secrets", "stage": "output", "action": "block"}, name="nokeys")
    say = directive(say="Here is the token you asked for: ghp_abcdefghijklmnopqrstuvwxyz0123456789 enjoy")
    refused(lambda: ask("chat", clients, say, False))
    for front in FRONTS:
        received = []
        with pytest.raises((openai.APIError, anthropic.APIStatusError)) as blocked:
            ask(front, clients, say, stream, received)
        assert "nokeys/secrets#1" in str(blocked.value), front
        assert "ghp_" not in "".join(received), front
        if not stream:
            assert blocked.value.status_code == 400, front


@pytest.mark.parametrize("stream", [False, True])
def test_every_front_flags_on_input_and_output_and_lets_the_call_pass(tenant, clients, stream):
    policy(tenant, {"kind": "terms", "stage": "both", "action": "flag", "terms": ["Project Falcon"]}, name="watch")
    prompt = "Tell me about project falcon " + directive(say="Project Falcon is secret.")

    def flagged(front):
        headers, text = ask(front, clients, prompt, stream)
        assert text == "Project Falcon is secret.", front
        record = usage_record(headers["x-request-id"])
        return record.guardrails and record
    assert wait_until(lambda: flagged("chat"), timeout=10)
    for front in FRONTS:
        record = flagged(front)
        assert record and record.guardrails["action"] == "flagged", front
        assert [(c["stage"], c["findings"]) for c in record.guardrails["checks"]] == [
            ("input", {"term": 1}), ("output", {"term": 1})], front


@pytest.mark.parametrize("stream", [False, True])
def test_every_front_redacts_the_answer(tenant, clients, stream):
    policy(tenant, {"kind": "pii", "stage": "output", "action": "redact"}, name="out")
    say = directive(say=f"Reach me at {EMAIL} or 4111 1111 1111 1111, not 4111 1111 1111 1112.")
    expected = "Reach me at [EMAIL_1] or [CARD_1], not 4111 1111 1111 1112."
    assert wait_until(lambda: ask("chat", clients, say, False)[1] == expected, timeout=10)
    for front in FRONTS:
        headers, text = ask(front, clients, say, stream)
        assert text == expected, front
        record = usage_record(headers["x-request-id"])
        assert record.guardrails["checks"][0]["findings"] == {"email": 1, "card": 1}, front
