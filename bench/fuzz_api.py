#!/usr/bin/env python3
"""Fuzz the public API with schemathesis: no 5xx, and every /v1 error in OpenAI's shape.

    python3 bench/fuzz_api.py [--cases 10000] [--v1-examples 1000] [--api-examples 50] [--raw-cases 2000] [--seed N]
                              [--only REGEX]

Starts the mock upstream and the gateway (PostgreSQL database `<name>_fuzz`,
Redis db 13 or FUZZ_REDIS_URL; the gateway's own settings, rate limits raised),
with one provider of every kind on the mock, a gateway key and a staff user,
then runs `schemathesis run` (every phase: examples, coverage, fuzzing,
stateful; valid and invalid data) against

- the /v1 schema (`/v1/openapi.json`, from routing/openapi.yaml), with the
  gateway key, its `model` fields narrowed to the models set up here so that
  calls reach the upstream; then
- the management and usage API schema (`/api/schema/`, drf-spectacular) as
  the staff user (HTTP basic auth), creating, changing and deleting objects.

`--only REGEX` fuzzes just the /v1 paths it matches (`--only '^/v1/responses$'`),
none of the other rounds. It stops when at least `--cases` requests have been made in all: each round
doubles the examples per operation (fuzzing phase; the other phases make
their own number of cases). Every response must be no 5xx, and every
/v1 error must be in OpenAI's shape (Anthropic's on /v1/messages), as checked
by bench/fuzz_checks.py beside schemathesis' own checks of the schemas.

Beside schemathesis, `raw_round` sends what its HTTP client refuses to:
header values holding CR, LF, CR LF (with an injected header or a folded
line), NUL, DEL and bytes above 127, in every header the gateway reads; and
bodies with an extra field nested 1 to 3,000 levels deep (objects and arrays,
at the top, in a message, in a tool's parameters), written byte by byte since
no JSON library writes that deep. Same verdict: no 5xx, and every answer the
gateway itself gave on /v1 in the caller's error shape (uvicorn's own 400 for
a request it cannot parse has no x-request-id).
Prints one summary per schema and exits non-zero on any failure.
"""

import argparse
import datetime
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Every provider kind on the mock upstream: (base URL suffix, chat model, embedding model or "", settings).
KINDS = {
    "openai": ("/v1", "mock-gpt", "mock-embed", {}),
    "openai_compatible": ("/v1", "mock-gpt", "mock-embed", {}),
    "azure": ("/azure", "my-gpt-deployment", "my-embedding-deployment", {"api_version": "2024-10-21"}),
    "anthropic": ("", "mock-claude", "", {}),
    "gemini": ("", "mock-gemini", "mock-text-embed", {}),
    "cohere": ("/cohere", "mock-command", "mock-embed-v4", {}),
    "ollama": ("", "mock-llama", "mock-embed", {}),
    "huggingface": ("/huggingface", "tgi", "tei", {}),
}
# Checks on every response: schemathesis' own, and the gateway's (bench/fuzz_checks.py).
V1_CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
             "negative_data_rejection,ignored_auth,gateway_error_shape,gateway_tally")
# The Anthropic front fills in what a content block leaves out, as Anthropic's
# SDKs never do, so "invalid data must be refused" is not asserted there.
MESSAGES_CHECKS = V1_CHECKS.replace("negative_data_rejection,", "")
# Without the key: schemathesis makes up credentials from the schema's security schemes.
BAD_KEY_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,gateway_error_shape,gateway_tally"
API_CHECKS = "not_a_server_error,gateway_tally"
# The /v1 schema's links lead from POST /v1/responses to the stored response's operations; a run that
# leaves out either end has no stateful phase (schemathesis stops with an error if asked for one).
LINKED = ("/v1/responses", "/v1/responses/{response_id}")
NOT_STATEFUL = ["--phases", "examples,coverage,fuzzing"]


def setup_data(mock_url: str) -> dict:
    """Inside Django: a tenant with a key, a staff user, and a provider of every kind on the mock.

    Returns what the fuzzer needs: the key, the user's credentials and the model names.
    """
    from django.contrib.auth import get_user_model

    from keys import services as key_services
    from providers.models import Deployment, Provider
    from routing.models import Route, RouteTarget
    from tenants.models import Tenant

    tenant = Tenant.objects.create(name="Fuzz", slug="fuzz")
    chat, embedding = ["default"], []
    for kind, (suffix, chat_model, embed_model, settings) in KINDS.items():
        # The mock listens on loopback, which a provider may only call when staff allow it.
        provider = Provider(name=f"fuzz-{kind}", kind=kind, base_url=mock_url + suffix, settings=settings,
                            allow_private_network=True)
        provider.set_api_key("sk-fuzz-provider-secret")
        provider.save()
        Deployment.objects.create(provider=provider, public_model=f"chat-{kind}", upstream_model=chat_model,
                                  input_price_per_mtok="1.5", output_price_per_mtok="6")
        chat.append(f"chat-{kind}")
        if embed_model:
            Deployment.objects.create(provider=provider, public_model=f"embed-{kind}", upstream_model=embed_model,
                                      mode="embedding", input_price_per_mtok="0.1")
            embedding.append(f"embed-{kind}")
    route = Route.objects.create(name="fuzz-route", strategy="weighted")
    for i, deployment in enumerate(Deployment.objects.filter(public_model__in=["chat-openai", "chat-anthropic"])):
        RouteTarget.objects.create(route=route, deployment=deployment, priority=i, weight=1)
    chat.append("fuzz-route")
    tenant.default_model = "chat-openai"
    tenant.save()
    password = secrets.token_urlsafe(16)
    get_user_model().objects.create_superuser("fuzz-staff", "staff@example.com", password)
    return {"key": key_services.issue(tenant, "fuzz")[1], "user": "fuzz-staff", "password": password,
            "chat_models": chat, "embedding_models": embedding}


def narrow_models(schema: dict, chat_models: list[str], embedding_models: list[str]) -> dict:
    """The /v1 schema with each request's `model` one of the models set up, so that valid
    requests reach the upstream instead of stopping at 404 model_not_found."""
    schemas = schema["components"]["schemas"]
    schemas["ChatModel"] = {"type": "string", "enum": chat_models}
    schemas["EmbeddingModel"] = {"type": "string", "enum": embedding_models}
    for name, model in (("ChatCompletionRequest", "ChatModel"), ("CompletionRequest", "ChatModel"),
                        ("MessagesRequest", "ChatModel"), ("ResponsesRequest", "ChatModel"),
                        ("EmbeddingRequest", "EmbeddingModel")):
        schemas[name]["properties"]["model"] = {"$ref": f"#/components/schemas/{model}"}
    # A made-up previous response is a 404; the stateful phase follows the schema's links to real ones.
    schemas["ResponsesRequest"]["properties"]["previous_response_id"] = {"enum": [None], "nullable": True}
    return schema


@dataclass
class Outcome:
    """One `schemathesis run`: the responses it got and whether every check passed."""

    name: str
    statuses: Counter = field(default_factory=Counter)  # (method path, status) -> responses
    returncode: int = 0
    output: str = ""
    seconds: float = 0.0

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())

    def by_status(self) -> Counter:
        totals: Counter = Counter()
        for (_, status), count in self.statuses.items():
            totals[status] += count
        return totals

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.by_status().items() if status >= 500)

    def summary(self) -> str:
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.by_status().items()))
        verdict = "passed" if self.returncode == 0 else f"FAILED (schemathesis exit {self.returncode})"
        return (f"{self.name}: {self.cases} cases in {self.seconds:.0f} s, {self.server_errors} 5xx; "
                f"statuses {statuses}; {verdict}")


def schemathesis_run(name: str, location: str, base_url: str, checks: str, options: list[str],
                     max_examples: int, workdir: Path, seed: int | None = None, timeout: float = 3600) -> Outcome:
    """Run the schemathesis CLI once, with the gateway's checks loaded, and count what it got."""
    tally = workdir / f"{name}-{max_examples}.tally"
    tally.unlink(missing_ok=True)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "bench.fuzz_checks", "FUZZ_TALLY": str(tally),
           "PYTHONPATH": str(ROOT)}
    args = ["schemathesis", "run", location, "--url", base_url, "--checks", checks, "--max-examples",
            str(max_examples), "--workers", "1", "--request-timeout", "30", "--no-color",
            "--suppress-health-check", "all", "--warnings", "off", "--continue-on-failure",
            "--report", "junit", "--report-dir", str(workdir / f"{name}-report"), *options]
    if seed is not None:
        args += ["--seed", str(seed)]
    started = time.monotonic()
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    outcome = Outcome(name, returncode=result.returncode, output=result.stdout + result.stderr,
                      seconds=time.monotonic() - started)
    if tally.exists():
        for line in tally.read_text().splitlines():
            method, path, status = line.rsplit(" ", 2)
            outcome.statuses[(f"{method} {path}", int(status))] += 1
    return outcome


def fuzz_gateway(url: str, data: dict, max_examples: int, workdir: Path, seed: int | None = None,
                 schemas: tuple[str, ...] = ("v1", "raw", "api"), api_phases: str = "",
                 api_examples: int | None = None, raw_cases: int | None = None, only: str = "") -> list[Outcome]:
    """Fuzz the /v1 API, the raw requests (`raw_round`), then the management and usage APIs
    (which may delete what /v1 needs).

    `api_phases` limits the phases run against the management and usage APIs (all by default),
    `api_examples` their examples per operation (`max_examples` by default), `raw_cases` the
    raw requests (20 per example by default); `only` (a regular expression) fuzzes just the /v1
    paths it matches, with valid keys.
    """
    import httpx

    outcomes = []
    if "v1" in schemas:
        schema = httpx.get(url + "/v1/openapi.json", timeout=10).raise_for_status().json()
        v1 = workdir / "v1-openapi.json"
        v1.write_text(json.dumps(narrow_models(schema, data["chat_models"], data["embedding_models"])))
        auth = ["--header", f"Authorization: Bearer {data['key']}"]
        if only:
            checks = MESSAGES_CHECKS if re.search(only, "/v1/messages") else V1_CHECKS
            phases = [] if all(re.search(only, path) for path in LINKED) else NOT_STATEFUL
            return [schemathesis_run("v1", str(v1), url, checks, [*auth, "--include-path-regex", only, *phases],
                                     max_examples, workdir, seed)]
        outcomes.append(schemathesis_run("v1", str(v1), url, V1_CHECKS, [*auth, "--exclude-path-regex", "^/v1/messages"],
                                         max_examples, workdir, seed))
        outcomes.append(schemathesis_run("v1-messages", str(v1), url, MESSAGES_CHECKS,
                                         [*auth, "--include-path-regex", "^/v1/messages", *NOT_STATEFUL], max_examples,
                                         workdir, seed))
        outcomes.append(schemathesis_run("v1-bad-keys", str(v1), url, BAD_KEY_CHECKS, ["--phases", "fuzzing"],
                                         max(1, max_examples // 5), workdir, seed))
    if "raw" in schemas:
        outcomes.append(raw_round(url, data, raw_cases or 20 * max_examples, seed))
    if "api" in schemas:
        outcomes.append(schemathesis_run("api", url + "/api/schema/?format=json", url, API_CHECKS,
                                         ["--auth", f"{data['user']}:{data['password']}",
                                          "--exclude-path-regex", "^/api/(schema|docs)",
                                          *(["--phases", api_phases] if api_phases else [])],
                                         api_examples or max_examples, workdir, seed))
    return outcomes


# --- What schemathesis cannot send ---------------------------------------------------------

# Headers the gateway reads (keys, request ids, tracing, route rules) and a few every server reads.
RAW_HEADERS = (b"authorization", b"x-api-key", b"api-key", b"x-request-id", b"traceparent", b"anthropic-version",
               b"anthropic-beta", b"content-type", b"user-agent", b"x-forwarded-for", b"x-forwarded-proto",
               b"origin", b"cookie", b"x-tier")
RAW_BREAKS = (b"\r", b"\n", b"\r\n", b"\r\n ", b"\r\n\t", b"\r\nx-injected: 1", b"\r\nauthorization: Bearer x",
              b"\x00", b"\x7f", b"\t", b"\xc3\xa9", b"\xff\xfe", b"\x80")
RAW_PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions", "/v1/embeddings",
             "/v1/models", "/api/manage/routes/", "/api/manage/providers/")


def nested(rng: random.Random, depth: int) -> bytes:
    """A JSON value `depth` levels deep, objects and arrays mixed, written as bytes."""
    kinds = [rng.random() < 0.5 for _ in range(depth)]
    opening = b"".join(b'{"k": ' if is_object else b"[" for is_object in kinds)
    closing = b"".join(b"}" if is_object else b"]" for is_object in reversed(kinds))
    return opening + rng.choice([b'"x"', b"1", b"null", b"{}", b"[]"]) + closing


def _depth(rng: random.Random) -> int:
    # Around each limit that matters: the gateway's 64, orjson's 254 and 1024, Python's 1000.
    edge = rng.choice([64, 254, 1000, 1024])
    return max(1, rng.choice([edge + rng.randint(-3, 3), rng.randint(1, 3000)]))


def raw_body(rng: random.Random, path: str, data: dict) -> bytes:
    """A request body for `path` with an extra field nested deep somewhere."""
    deep = nested(rng, _depth(rng))
    chat_model = rng.choice(data["chat_models"]).encode()
    message = b'{"role": "user", "content": "hi"' + (b', "x_deep": ' + deep if rng.random() < 0.3 else b"") + b"}"
    tool = (b'{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": '
            b'{"a": ' + deep + b"}}}}")
    extra = b', "x_deep": ' + deep if rng.random() < 0.6 else b""
    if path in ("/v1/chat/completions", "/v1/messages"):
        tools = b', "tools": [' + tool + b"]" if rng.random() < 0.3 and path != "/v1/messages" else b""
        return (b'{"model": "' + chat_model + b'", "max_tokens": 5, "messages": [' + message + b"]" + tools
                + extra + b"}")
    if path == "/v1/responses":
        item = b'{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]' + (
            b', "x_deep": ' + deep if rng.random() < 0.3 else b"") + b"}"
        tools = b', "tools": [{"type": "function", "name": "f", "parameters": {"a": ' + deep + b"}}]" if (
            rng.random() < 0.3) else b""
        return (b'{"model": "' + chat_model + b'", "max_output_tokens": 16, "input": [' + item + b"]" + tools
                + extra + b"}")
    if path == "/v1/completions":
        return b'{"model": "' + chat_model + b'", "prompt": "hi", "max_tokens": 5' + extra + b"}"
    if path == "/v1/embeddings":
        model = rng.choice(data["embedding_models"]).encode()
        return b'{"model": "' + model + b'", "input": "hi"' + extra + b"}"
    if path == "/api/manage/providers/":
        value = b"ok" + rng.choice(RAW_BREAKS)  # a header value for the upstream, in JSON
        return (b'{"name": "raw-%d", "kind": "openai", "base_url": "https://api.example.com/v1", '
                b'"extra_headers": {"X-Raw": %s}, "settings": %s}' % (
                    rng.randint(0, 10**9), json.dumps(value.decode("latin-1")).encode(), deep))
    return b'{"name": "raw-%d", "strategy": "priority"%s}' % (rng.randint(0, 10**9), extra)


def raw_headers(rng: random.Random, path: str, data: dict) -> list[tuple[bytes, bytes]]:
    """The request's headers, the right credentials for `path`, one of them (or another) broken."""
    if path.startswith("/api/"):
        import base64

        credentials = base64.b64encode(f"{data['user']}:{data['password']}".encode())
        headers = [(b"authorization", b"Basic " + credentials)]
    else:
        headers = [(b"authorization", b"Bearer " + data["key"].encode())]
    headers.append((b"content-type", b"application/json"))
    name = rng.choice(RAW_HEADERS)
    base = dict(headers).get(name) or rng.choice([b"", b"abc", b"2023-06-01", b"00-" + b"a" * 32 + b"-" + b"b" * 16
                                                  + b"-01"])
    cut = rng.randint(0, len(base))
    broken = base[:cut] + rng.choice(RAW_BREAKS) + base[cut:]
    return [(n, v) for n, v in headers if n != name] + [(name, broken)]


def raw_request(url: str, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                timeout: float = 30) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request written byte for byte: (status, lower-cased headers, body); status 0 when
    the server closed the connection without an answer."""
    parts = urlsplit(url)
    head = [f"{method} {path} HTTP/1.1".encode(), f"host: {parts.netloc}".encode(), b"connection: close",
            b"content-length: %d" % len(body), *(name + b": " + value for name, value in headers)]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as conn:
        conn.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    if not answer:
        return 0, {}, b""
    head_bytes, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.split(b"\r\n")
    answer_headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        answer_headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if answer_headers.get("transfer-encoding") == "chunked":
        content = _unchunk(content)
    return int(status_line.split()[1]), answer_headers, content


def _unchunk(content: bytes) -> bytes:
    out = b""
    while content:
        size, _, rest = content.partition(b"\r\n")
        length = int(size.split(b";")[0] or b"0", 16)
        if length == 0:
            break
        out, content = out + rest[:length], rest[length + 2:]
    return out


def raw_round(url: str, data: dict, cases: int, seed: int | None = None) -> Outcome:
    """`cases` requests with broken header values or deeply nested bodies (see the module's docstring)."""
    from bench.fuzz_checks import error_problem

    rng = random.Random(seed)
    outcome, problems, started = Outcome("raw"), [], time.monotonic()
    for _ in range(cases):
        path = rng.choice(RAW_PATHS)
        method = "GET" if path == "/v1/models" else "POST"
        body = b"" if method == "GET" else raw_body(rng, path, data)
        headers = raw_headers(rng, path, data) if rng.random() < 0.6 else raw_headers(rng, path, data)[:-1] + [
            (b"content-type", b"application/json")]
        status, answer_headers, content = raw_request(url, method, path, headers, body)
        outcome.statuses[(f"{method} {path}", status)] += 1
        problem = "no answer" if status == 0 else "a server error" if status >= 500 else None
        if problem is None and "x-request-id" in answer_headers:  # the gateway answered, not uvicorn
            problem = error_problem(path, status, answer_headers.get("content-type", ""),
                                    content.decode("utf-8", "replace"))
        if problem:
            problems.append(f"{method} {path} {headers!r} body {body[:200]!r}... -> {status}: {problem}: "
                            f"{content[:300]!r}")
    outcome.seconds = time.monotonic() - started
    outcome.returncode = 1 if problems else 0
    outcome.output = "\n".join(problems[:20])
    return outcome


def _manage_json(env: dict, code: str) -> dict:
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def main() -> int:
    from bench.run import free_port, wait_http

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="least requests in all, both schemas together")
    parser.add_argument("--v1-examples", type=int, default=1000, help="examples per /v1 operation, first round")
    parser.add_argument("--api-examples", type=int, default=50,
                        help="examples per management and usage API operation, first round")
    parser.add_argument("--raw-cases", type=int, default=2000,
                        help="requests schemathesis cannot send (CR/LF in headers, deep bodies), first round")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default="", metavar="REGEX",
                        help="fuzz just the /v1 paths this matches (say '^/v1/responses$'), none of the other rounds")
    opts = parser.parse_args()

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-fuzz-"))
    env = {**os.environ, "DATABASE_URL": base + "_fuzz",
           "REDIS_URL": os.environ.get("FUZZ_REDIS_URL", "redis://127.0.0.1:6379/13"),
           "GATEWAY_DATA_DIR": str(tmp), "LOG_LEVEL": "WARNING", "LOG_FORMAT": "text", "DEBUG": "false",
           # The fuzzer is one client sending thousands of requests, many with bad credentials.
           "MANAGEMENT_API_RATE": "1000000/m", "ADMIN_LOGIN_RATE": "1000000/m", "AUTH_FAILURES_PER_MINUTE": "1000000"}
    mock_port, gw_port = free_port(), free_port()
    url = f"http://127.0.0.1:{gw_port}"
    procs = [_start([sys.executable, "-m", "providers.mock_upstream", "--port", str(mock_port)], env,
                    tmp / "mock.log")]
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        prepare_database(env)
        data = _manage_json(env, f"import json; from bench.fuzz_api import setup_data; "
                                 f"print(json.dumps(setup_data('http://127.0.0.1:{mock_port}')))")
        procs.append(_start([sys.executable, "manage.py", "serve", "--port", str(gw_port), "--log-level", "warning"],
                            env, tmp / "gateway.log"))
        wait_http(url + "/v1/openapi.json")
        examples, api_examples, total = opts.v1_examples, opts.api_examples, 0
        while total < opts.cases:
            round_ = fuzz_gateway(url, data, examples, tmp, opts.seed, api_examples=api_examples,
                                  raw_cases=opts.raw_cases * examples // opts.v1_examples, only=opts.only)
            for outcome in round_:
                print(f"[{examples} / {api_examples} examples] {outcome.summary()}", flush=True)
            outcomes += round_
            total += sum(o.cases for o in round_)
            if any(o.returncode for o in round_):
                break
            examples, api_examples = examples * 2, api_examples * 2
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    failed = [o for o in outcomes if o.returncode]
    for outcome in failed:
        print(f"--- {outcome.name} output (last 8000 characters) ---\n{outcome.output[-8000:]}")
    gateway_log = (tmp / "gateway.log").read_text()
    tracebacks = len(re.findall(r"^Traceback", gateway_log, re.M))
    print(_totals(outcomes, time.monotonic() - started, tracebacks))
    return 1 if failed or tracebacks else 0


def _totals(outcomes: list[Outcome], seconds: float, tracebacks: int) -> str:
    per_schema: Counter = Counter()
    statuses: Counter = Counter()
    for outcome in outcomes:
        per_schema[outcome.name] += outcome.cases
        statuses.update(outcome.by_status())
    return (f"{datetime.date.today()}: {sum(per_schema.values())} cases ("
            + ", ".join(f"{name} {count}" for name, count in per_schema.items())
            + f") in {seconds:.0f} s; statuses " + ", ".join(f"{s}: {c}" for s, c in sorted(statuses.items()))
            + f"; 5xx: {sum(c for s, c in statuses.items() if s >= 500)}; tracebacks in the gateway log: {tracebacks}")


def prepare_database(env: dict) -> None:
    import psycopg

    url = env["DATABASE_URL"]
    admin_url, name = url.rsplit("/", 1)[0] + "/postgres", url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).flushdb()


if __name__ == "__main__":
    sys.exit(main())
