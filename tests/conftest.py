"""Fixtures: real servers (mock upstream, gateway under `manage.py serve`) and per-role data.

Tests that talk to a gateway process use `transactional_db`, so what they
create is committed and visible to that process.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}: {url}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not come up: {url}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    def __init__(self, args: list[str], env: dict | None = None, ready_path: str = "/", port: int = 0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ["GATEWAY_DATA_DIR"]) / f"server-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *[a.replace("{port}", str(self.port)) for a in args]],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(self.url + ready_path, self.proc)

    def stop(self) -> None:
        stop(self.proc)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()


@pytest.fixture(scope="session", autouse=True)
def _flush_after_the_gateway_has_written(django_db_setup):
    """A gateway process writes usage and stored responses a moment after it answers, so a test's
    closing flush (TRUNCATE) can meet such an insert: wait for those buffers to empty first, and
    flush again if PostgreSQL still breaks a deadlock by failing the TRUNCATE."""
    from django.conf import settings
    from django.db.utils import OperationalError
    from django.test import TransactionTestCase

    from gateway_project.lib import redis_keys

    client = redis.Redis.from_url(settings.REDIS_URL) if settings.REDIS_URL else None
    streams = redis_keys.usage_streams() + redis_keys.responses_streams()
    teardown = TransactionTestCase._fixture_teardown

    def buffered() -> int:
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
        return sum(pipe.execute())

    def settled_teardown(self):
        deadline = time.monotonic() + 2
        while client is not None and time.monotonic() < deadline and buffered():
            time.sleep(0.02)
        for attempt in range(5):
            try:
                return teardown(self)
            except Exception as error:
                cause = error.__cause__ or error
                if not isinstance(cause, OperationalError) or "deadlock" not in str(cause) or attempt == 4:
                    raise
                time.sleep(0.2)

    TransactionTestCase._fixture_teardown = settled_teardown
    yield
    TransactionTestCase._fixture_teardown = teardown


@pytest.fixture(scope="session", autouse=True)
def _close_orm_pool_connections(django_db_setup):
    yield
    from gateway_project.lib.orm_thread import close_connections

    close_connections()


def start_gateway(env: dict, workers: int = 1, port: int = 0) -> Server:
    """A gateway process (manage.py serve) with `env` on top of the suite's environment."""
    return Server(["manage.py", "serve", "--port", "{port}", "--workers", str(workers), "--log-level", "warning"],
                  env=env, ready_path="/healthz", port=port)


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """Each test starts with the sign-in and API allowances of a new minute: they are counted per
    address, and every test calls from 127.0.0.1 (django-ratelimit's counters live in Redis)."""
    yield
    from django.conf import settings

    if settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(":1:rl:*", count=1000):
            client.delete(key)


@pytest.fixture(scope="session")
def mock_upstream():
    server = Server(["-m", "providers.mock_upstream", "--port", "{port}"], ready_path="/v1/models")
    yield server
    server.stop()


@pytest.fixture()
def mock(mock_upstream):
    """The mock upstream with its request counters reset."""
    httpx.post(mock_upstream.url + "/_mock/reset")
    return mock_upstream


def database_url(settings_dict: dict) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{settings_dict['USER']}@{host}:{port}/{settings_dict['NAME']}"


@pytest.fixture(scope="session")
def gateway_env(django_db_setup, django_db_blocker):
    """Environment for a gateway process sharing the test database and Redis."""
    from django.conf import settings

    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    # No proxy is trusted (the default), whatever the developer's environment says.
    return {"DATABASE_URL": database_url(settings.DATABASES["default"]), "TRUSTED_PROXIES": ""}


@pytest.fixture(scope="session")
def gateway(gateway_env, mock_upstream):
    server = start_gateway(gateway_env)
    yield server
    server.stop()


@pytest.fixture()
def tenant(transactional_db):
    from tenants.models import Tenant

    return Tenant.objects.create(name="Acme", slug="acme")


@pytest.fixture()
def other_tenant(transactional_db):
    from tenants.models import Tenant

    return Tenant.objects.create(name="Globex", slug="globex")


def user_in(tenant, role: str, name: str | None = None, password: str | None = None, **extra):
    """A user with `role` ("owner", "admin", "member") in `tenant`, allowed into the admin; named
    <slug>-<role> unless `name`. No password unless given: hashing one costs a second."""
    from django.contrib.auth import get_user_model

    from tenants.models import Membership

    user = get_user_model().objects.create_user(name or f"{tenant.slug}-{role}", password=password, is_staff=True,
                                                **extra)
    Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


@pytest.fixture()
def owner(tenant):
    return user_in(tenant, "owner")


@pytest.fixture()
def tenant_admin(tenant):
    return user_in(tenant, "admin")


@pytest.fixture()
def member(tenant):
    return user_in(tenant, "member")


@pytest.fixture()
def mock_provider(transactional_db, mock_upstream):
    """A shared provider on the mock upstream with a chat and an embedding model."""
    from providers.models import Deployment, Provider

    provider = Provider(name="mock", kind="openai_compatible", base_url=mock_upstream.url + "/v1",
                        allow_private_network=True)
    provider.set_api_key("sk-provider-secret-123456")
    provider.save()
    Deployment.objects.create(provider=provider, public_model="gpt-test", upstream_model="mock-gpt",
                              input_price_per_mtok="0.15", output_price_per_mtok="0.60")
    Deployment.objects.create(provider=provider, public_model="embed-test", upstream_model="mock-embed",
                              mode="embedding", input_price_per_mtok="0.02")
    return provider


@pytest.fixture()
def api_key(tenant):
    """(ApiKey row, secret) for the tenant."""
    from keys import services as key_services

    return key_services.issue(tenant, "test key")


def wait_until(check, timeout: float = 5.0, interval: float = 0.05):
    """Poll until check() returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


@pytest.fixture()
def key_client(gateway, mock_provider, api_key):
    """The official OpenAI SDK pointed at the gateway with a valid key."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    # Configuration reaches the gateway process through Redis within moments.
    assert wait_until(lambda: any(m.id == "gpt-test" for m in client.models.list()))
    return client


# Every provider kind, pointed at the mock upstream: (base URL suffix, chat model,
# embedding model or None when the kind has no embeddings, settings).
KINDS = {
    "openai": ("/v1", "mock-gpt", "mock-embed", {}),
    "openai_compatible": ("/v1", "mock-gpt", "mock-embed", {}),
    "azure": ("/azure", "my-gpt-deployment", "my-embedding-deployment", {"api_version": "2024-10-21"}),
    "anthropic": ("", "mock-claude", None, {}),
    "gemini": ("", "mock-gemini", "mock-text-embed", {}),
    "cohere": ("/cohere", "mock-command", "mock-embed-v4", {}),
    "ollama": ("", "mock-llama", "mock-embed", {}),
    "huggingface": ("/huggingface", "tgi", "tei", {}),
}
EMBEDDING_KINDS = [kind for kind, spec in KINDS.items() if spec[2]]
PROVIDER_SECRET = "sk-kind-secret-9f8e7d6c5b4a"


def make_provider(kind: str, url: str, name: str | None = None, knobs: str = "", **deployment):
    """A provider of `kind` on the mock (optionally behind a /knobs/... prefix) with
    chat-<name> and, where the kind has them, embed-<name> deployments."""
    from providers.models import Deployment, Provider

    suffix, chat_model, embed_model, kind_settings = KINDS[kind]
    name = name or kind
    base = url + (f"/knobs/{knobs}" if knobs else "") + suffix
    # The mock listens on loopback, which a provider may only call when staff allow it.
    provider = Provider(name=name, kind=kind, base_url=base, settings=kind_settings, allow_private_network=True)
    provider.set_api_key(PROVIDER_SECRET)
    provider.full_clean()
    provider.save()
    prices = {"input_price_per_mtok": "1.5", "output_price_per_mtok": "6", **deployment}
    Deployment.objects.create(provider=provider, public_model=f"chat-{name}", upstream_model=chat_model, **prices)
    if embed_model:
        Deployment.objects.create(provider=provider, public_model=f"embed-{name}", upstream_model=embed_model,
                                  mode="embedding", input_price_per_mtok="0.1")
    return provider


def usage_record(request_id: str):
    from django.db.models import Q

    from usage.models import UsageRecord

    # The id a response carries is the client's own x-request-id when it sent one.
    return wait_until(lambda: UsageRecord.objects.filter(
        Q(request_id=request_id) | Q(client_request_id=request_id)).first())


def key_usage_records(api_key, count: int) -> list:
    """The key's usage records once at least `count` are written (they are written behind, in bulk)."""
    from usage.models import UsageRecord

    wait_until(lambda: UsageRecord.objects.filter(api_key=api_key).count() >= count, timeout=10)
    return list(UsageRecord.objects.filter(api_key=api_key).order_by("created_at"))


@pytest.fixture()
def kind_client(request, gateway, api_key, mock):
    """(openai SDK client on the gateway, public chat model) for the kind in request.param."""
    kind = request.param
    make_provider(kind, mock.url)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0, timeout=20)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in client.models.list()])
    return client, kind


def _redis_answers(port: int) -> bool:
    try:
        return redis.Redis(port=port).ping()
    except redis.ConnectionError:
        return False


class OwnRedis:
    """A Redis server of one test's own, to stop and start without disturbing anyone.

    Persistent (append-only file, fsync always), as production's must be: the
    usage buffer lives there.
    """

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL)
        assert wait_until(lambda: _redis_answers(self.port))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@pytest.fixture()
def own_redis(tmp_path):
    server = OwnRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def own_cluster(tmp_path_factory):
    """A three-master Redis Cluster of the session's own (tests/redis_servers.py)."""
    from tests.redis_servers import OwnCluster

    cluster = OwnCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()
