"""Settings for the gateway, read from the environment through django-environ.

Every setting has a safe default for the embedded mode (SQLite, in-process cache
and counters, one process). Production is this same file with other environment
values: DATABASE_URL, REDIS_URL, SECRET_KEY and friends. README.md lists them all.
"""

import ipaddress
import os
import secrets
import sys
from decimal import Decimal
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

# Embedded mode keeps its state (database, generated secrets) here.
DATA_DIR = Path(env.str("GATEWAY_DATA_DIR", default=str(BASE_DIR / ".data")))


def _secret(name: str, make) -> str:
    """A secret from NAME, NAME_FILE, or (embedded mode) a file generated once.

    Generated secrets live in DATA_DIR so that every process of one installation
    shares them and they survive restarts; production sets them explicitly.
    """
    if value := env.str(name, default=""):
        return value
    if path := env.str(f"{name}_FILE", default=""):
        return Path(path).read_text().strip()
    local = DATA_DIR / name.lower()
    if not local.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        local.write_text(make())
        local.chmod(0o600)
    return local.read_text().strip()


SECRET_KEY = _secret("SECRET_KEY", lambda: secrets.token_urlsafe(50))
# HMAC key for hashing gateway API keys: separate from SECRET_KEY so rotating the
# session secret does not invalidate every issued key.
API_KEY_HASH_SECRET = _secret("API_KEY_HASH_SECRET", lambda: secrets.token_urlsafe(48))
# Fernet keys for provider secrets at rest, comma separated, newest first:
# add a new key in front, run `manage.py rotate_provider_keys`, drop the old one.
PROVIDER_KEY_ENCRYPTION_KEYS = _secret(
    "PROVIDER_KEY_ENCRYPTION_KEYS", lambda: Fernet.generate_key().decode()
).split(",")
# A provider may read its key from an environment variable (its `api_key_env`,
# staff only) whose name starts with this prefix or is in the list below, and
# from no other: the environment also holds DATABASE_URL and the secrets above,
# and the key is sent upstream. An empty prefix allows the listed names alone.
PROVIDER_KEY_ENV_PREFIX = env.str("PROVIDER_KEY_ENV_PREFIX", default="GATEWAY_PROVIDER_KEY_")
PROVIDER_KEY_ENV_ALLOW = env.list("PROVIDER_KEY_ENV_ALLOW", default=[])

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Production behind TLS: HTTPS=true makes cookies secure, redirects plain HTTP
# in the admin and sends HSTS; BEHIND_TLS_PROXY=true trusts the proxy's
# X-Forwarded-Proto. `manage.py check --deploy` is clean with both set.
HTTPS = env.bool("HTTPS", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=HTTPS)
if env.bool("BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# The proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For and X-Forwarded-Proto
# are believed. `manage.py serve` applies them (uvicorn's proxy-header rule): for a request from one of them
# the client address is the right-most X-Forwarded-For hop that is not one of them. Empty
# (the default): the headers are ignored, the client address is the connection's peer.
# Throttles (failed keys, sign-ins) and the audit log count by that address.
try:
    TRUSTED_PROXIES = [str(ipaddress.ip_network(proxy.strip(), strict=False))
                       for proxy in env.list("TRUSTED_PROXIES", default=[]) if proxy.strip()]
except ValueError as exc:
    raise ValueError(f"TRUSTED_PROXIES lists IP addresses or CIDRs only: {exc}") from None
SESSION_COOKIE_HTTPONLY = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "tenants",
    "keys",
    "providers",
    "routing",
    "usage",
    "gateway_project",  # the composition root: the schedules (gateway_project/apps.py)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tenants.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway_project.urls"
# The OpenAI-compatible API is served by its own handler with no middleware
# (see gateway_project/asgi.py): each sync middleware costs a thread hop.
# GATEWAY_API_URLCONF is for bench/run.py --drf alone (bench.drf_front: the same endpoints as DRF views).
API_URLCONF = env.str("GATEWAY_API_URLCONF", default="gateway_project.api_urls")

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "gateway_project.wsgi.application"
ASGI_APPLICATION = "gateway_project.asgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Embedded mode writes from the admin and the usage drain at once: wait for
    # the lock instead of failing, and let readers run beside the writer.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
# A PostgreSQL streaming replica of DATABASE_URL for the heavy reads that may be a moment old: the
# dashboard, the usage API, the cost reports (gateway_project/lib/db_replica.py, docs/scaling.md).
# Empty: everything reads the primary. A replica that fails a read leaves it to the primary, and
# one that does not answer is tried again after DATABASE_REPLICA_RETRY_SECONDS.
DATABASE_REPLICA_URL = env.str("DATABASE_REPLICA_URL", default="")
DATABASE_REPLICA_RETRY_SECONDS = env.float("DATABASE_REPLICA_RETRY_SECONDS", default=10.0)
# A replica further behind the primary than this (seconds) leaves its reads to the primary until it
# has caught up; measured at most every min(5 s, a quarter of it) per process. 0: no bound.
DATABASE_REPLICA_MAX_LAG_SECONDS = env.float("DATABASE_REPLICA_MAX_LAG_SECONDS", default=30.0)
if DATABASE_REPLICA_URL:
    if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        raise ImproperlyConfigured("DATABASE_REPLICA_URL needs DATABASE_URL to name the PostgreSQL it replicates")
    DATABASES["replica"] = env.db_url_config(DATABASE_REPLICA_URL)
    DATABASES["replica"].setdefault("CONN_MAX_AGE", DATABASES["default"]["CONN_MAX_AGE"])
    # A kept connection is checked before a request reuses it, so a restarted replica costs no fallback;
    # one that does not connect within DATABASE_REPLICA_CONNECT_TIMEOUT seconds is given up on.
    DATABASES["replica"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["replica"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_REPLICA_CONNECT_TIMEOUT", default=2))
    # Under the test runner the alias reads the test database: a read-only server cannot make one.
    DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["gateway_project.lib.db_replica.ReplicaRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Empty REDIS_URL means embedded mode: in-process cache, counters and usage buffer. It may name one
# Redis, a cluster (redis+cluster://h:p,h:p) or a master behind Sentinel (redis+sentinel://h:p,h:p/NAME[/DB]).
REDIS_URL = env.str("REDIS_URL", default="")
# Shards of tenants: each has its hash tag (one cluster slot) and its usage and stored-response
# streams (gateway_project/lib/redis_keys.py). Change it only with the buffers drained.
REDIS_SHARDS = env.int("REDIS_SHARDS", default=16)
# Replicas that must have a usage event before it counts as buffered (WAIT, in the round trip that
# buffers it); one not confirmed within REDIS_WAIT_MS is also kept and written by the process, so a
# failover cannot lose it. 0: Redis's asynchronous replication alone (docs/scaling.md).
REDIS_WAIT_REPLICAS = env.int("REDIS_WAIT_REPLICAS", default=0)
REDIS_WAIT_MS = env.int("REDIS_WAIT_MS", default=50)
if REDIS_WAIT_REPLICAS and REDIS_URL.split("://", 1)[0].lower().endswith("+cluster"):
    # WAIT must follow the write on the same node: a cluster pipeline sends a keyless command anywhere.
    raise ImproperlyConfigured("REDIS_WAIT_REPLICAS is for one Redis or a Sentinel master, not a cluster")
# Redis connections each gateway process may open for the hot path.
REDIS_POOL_SIZE = env.int("REDIS_POOL_SIZE", default=50)
# Seconds between PINGs of a Redis this process found unreachable (each waits at most as long);
# until one answers, the hot path skips Redis (gateway_project/lib/redis_health.py).
REDIS_PROBE_INTERVAL = env.float("REDIS_PROBE_INTERVAL", default=0.5)
_REDIS_KIND = REDIS_URL.split("://", 1)[0].lower() if REDIS_URL else ""
if _REDIS_KIND.endswith(("+cluster", "+sentinel")):
    # Django's own backend knows one server only: this one uses the gateway's clients.
    CACHES = {"default": {"BACKEND": "gateway_project.lib.redis_cache.RedisCache", "LOCATION": REDIS_URL}}
elif REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# --- Single sign-on for the admin (OpenID Connect, tenants/sso.py, docs/sso.md) ----------
# On when OIDC_RP_CLIENT_ID is set. mozilla-django-oidc runs the code flow (state, nonce, PKCE);
# the gateway's backend checks the ID token's signature, issuer and audience, creates the user
# on first sign-in and sets their tenant roles from OIDC_ROLES_CLAIM through OIDC_ROLE_MAP.
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
SSO_ENABLED = bool(OIDC_RP_CLIENT_ID)
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="") or (
    Path(path).read_text().strip() if (path := env.str("OIDC_RP_CLIENT_SECRET_FILE", default="")) else "")
OIDC_OP_ISSUER = env.str("OIDC_OP_ISSUER", default="")
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile")
OIDC_PROVIDER_NAME = env.str("OIDC_PROVIDER_NAME", default="single sign-on")
# The claim that carries the user's groups or roles (a list of strings, or one string), and
# what each value grants: "value=tenant-slug:role" (role owner, admin or member) or
# "value=superuser", comma separated. A user none of whose values is mapped is refused.
OIDC_ROLES_CLAIM = env.str("OIDC_ROLES_CLAIM", default="groups")
OIDC_ROLE_MAP = env.dict("OIDC_ROLE_MAP", default={})
OIDC_USERNAME_CLAIM = env.str("OIDC_USERNAME_CLAIM", default="preferred_username")
OIDC_TIMEOUT = env.float("OIDC_TIMEOUT", default=10.0)
# A first SSO sign-in whose e-mail address the provider says it verified (`email_verified`
# true) joins the one existing account with that address (declared in the configuration file
# or made by an admin) instead of making a second one. Off by default: turn it on only for a
# provider whose addresses you trust. Superusers are never joined unless OIDC_LINK_SUPERUSERS.
OIDC_LINK_BY_EMAIL = env.bool("OIDC_LINK_BY_EMAIL", default=False)
OIDC_LINK_SUPERUSERS = env.bool("OIDC_LINK_SUPERUSERS", default=False)
OIDC_USE_PKCE = True
OIDC_STORE_ID_TOKEN = False
OIDC_AUTHENTICATION_CALLBACK_URL = "sso-callback"
OIDC_REDIRECT_FIELD_NAME = "next"
LOGIN_REDIRECT_URL = "/admin/"
# false: the admin's sign-in page offers single sign-on only and refuses passwords (the
# usage and management APIs' HTTP basic auth is not the admin's sign-in page: see docs/sso.md).
ADMIN_PASSWORD_LOGIN = env.bool("ADMIN_PASSWORD_LOGIN", default=True)
if not ADMIN_PASSWORD_LOGIN and not SSO_ENABLED:
    raise ValueError("ADMIN_PASSWORD_LOGIN=false needs single sign-on (OIDC_RP_CLIENT_ID): nobody could sign in")
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
if SSO_ENABLED:
    AUTHENTICATION_BACKENDS.append("tenants.sso.SsoBackend")

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(DATA_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns at startup if it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True

# Requests per user (or address) to the usage and management APIs (django-ratelimit syntax).
MANAGEMENT_API_RATE = env.str("MANAGEMENT_API_RATE", default="300/m")
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Basic first: a wrong password gets 401 with WWW-Authenticate, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": ["gateway_project.lib.rest.ThrottledBasicAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_THROTTLE_CLASSES": ["gateway_project.lib.rest.ManagementThrottle"],
    # DRF's own parsers, but JSON nested past GATEWAY_MAX_JSON_DEPTH is a 400, not a 500.
    "DEFAULT_PARSER_CLASSES": ["gateway_project.lib.rest.BoundedJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Gateway API",
    "DESCRIPTION": "The usage and management APIs. The OpenAI- and Anthropic-compatible /v1 API has a schema "
                   "of its own at /v1/openapi.json.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's files are served from this server (drf-spectacular-sidecar): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- The gateway itself -----------------------------------------------------

# Largest request body the API accepts (bytes); larger gets 413.
GATEWAY_MAX_REQUEST_BYTES = env.int("GATEWAY_MAX_REQUEST_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = GATEWAY_MAX_REQUEST_BYTES
# Most messages in one chat request, and the largest max_tokens a client may ask for.
GATEWAY_MAX_MESSAGES = env.int("GATEWAY_MAX_MESSAGES", default=2048)
GATEWAY_MAX_OUTPUT_TOKENS = env.int("GATEWAY_MAX_OUTPUT_TOKENS", default=1_000_000)
# Deepest nesting of objects and arrays a request body may have (the body is level 1); deeper
# gets 400. At most 250: orjson writes 254 levels, and adapters add a few when translating.
GATEWAY_MAX_JSON_DEPTH = env.int("GATEWAY_MAX_JSON_DEPTH", default=64)
if not 1 <= GATEWAY_MAX_JSON_DEPTH <= 250:
    raise ValueError("GATEWAY_MAX_JSON_DEPTH must be from 1 to 250")
# Upstream timeouts in seconds: connecting, waiting for the first byte, whole call.
GATEWAY_UPSTREAM_CONNECT_TIMEOUT = env.float("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default=5.0)
GATEWAY_UPSTREAM_READ_TIMEOUT = env.float("GATEWAY_UPSTREAM_READ_TIMEOUT", default=60.0)
GATEWAY_UPSTREAM_TOTAL_TIMEOUT = env.float("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", default=600.0)
# Connections kept open to upstreams by each process.
GATEWAY_UPSTREAM_POOL_SIZE = env.int("GATEWAY_UPSTREAM_POOL_SIZE", default=2048)
# How long a process trusts its cached keys and routing table without hearing of
# a change. Changes are also pushed (Redis pub/sub, or signals in embedded mode).
GATEWAY_CONFIG_CACHE_SECONDS = env.float("GATEWAY_CONFIG_CACHE_SECONDS", default=30.0)
# Usage events are buffered (Redis stream, or in process) and written in bulk.
USAGE_FLUSH_INTERVAL = env.float("USAGE_FLUSH_INTERVAL", default=1.0)
USAGE_FLUSH_BATCH = env.int("USAGE_FLUSH_BATCH", default=500)
# Gateway processes sharing one Redis: while Redis is unreachable each process
# enforces 1/GATEWAY_PROCESSES of every rate limit on its own.
# Extra stages of the request path (routing/front/stages.py), each "point=module.path:attribute",
# point one of input, admitted, output; the gateway's own stages register themselves.
GATEWAY_STAGES = env.list("GATEWAY_STAGES", default=[])
# The response cache (routing/cache/, docs/cache.md): entries a process keeps in embedded mode
# (no Redis), the least recently used evicted first.
CACHE_LOCAL_MAX_ENTRIES = env.int("CACHE_LOCAL_MAX_ENTRIES", default=10_000)
# Questions the semantic cache keeps per scope (tenant, model, system prompt, tools, parameters).
CACHE_SEMANTIC_MAX_ENTRIES = env.int("CACHE_SEMANTIC_MAX_ENTRIES", default=100_000)
GATEWAY_PROCESSES = env.int("GATEWAY_PROCESSES", default=1)
# Completion tokens reserved against limits when a request sets no max_tokens.
LIMITS_COMPLETION_ESTIMATE = env.int("LIMITS_COMPLETION_ESTIMATE", default=1024)
# Limits reserve a call's estimate (its max_tokens) while they trust upstreams to
# honour max_tokens. A limit that settles a call well over its estimate stops
# trusting it for LIMITS_OVERRUN_MEMORY seconds, reserving each call's largest
# answer (the deployment's max output) or what is left of the limit; with
# LIMITS_TRUST_MAX_TOKENS off, always (tightest: a limit is then overspent by at
# most one call's largest answer, but calls run one at a time near its end).
LIMITS_OVERRUN_MEMORY = env.float("LIMITS_OVERRUN_MEMORY", default=86_400.0)
LIMITS_TRUST_MAX_TOKENS = env.bool("LIMITS_TRUST_MAX_TOKENS", default=True)
# Circuit breakers per deployment (docs/routing.md).
BREAKER_FAILURES = env.int("BREAKER_FAILURES", default=5)
BREAKER_FAILURE_RATE = env.float("BREAKER_FAILURE_RATE", default=0.5)
BREAKER_MIN_CALLS = env.int("BREAKER_MIN_CALLS", default=20)
BREAKER_COOLDOWN = env.float("BREAKER_COOLDOWN", default=30.0)
# Seconds a health check waits for a provider's model list (the job runs every minute).
HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=10.0)
# Retries: exponential backoff with full jitter, and at most this share of
# calls retried (plus a small floor) so that retries never multiply an outage.
RETRY_BACKOFF_BASE = env.float("RETRY_BACKOFF_BASE", default=0.1)
RETRY_BACKOFF_MAX = env.float("RETRY_BACKOFF_MAX", default=2.0)
RETRY_BUDGET_RATIO = env.float("RETRY_BUDGET_RATIO", default=0.2)
RETRY_BUDGET_FLOOR = env.int("RETRY_BUDGET_FLOOR", default=10)
# Failed API-key attempts per client address per minute before answers slow down.
AUTH_FAILURES_PER_MINUTE = env.int("AUTH_FAILURES_PER_MINUTE", default=20)
# Admin login attempts per client address (django-ratelimit rate syntax).
ADMIN_LOGIN_RATE = env.str("ADMIN_LOGIN_RATE", default="10/m")
# Seconds each process remembers HTTP basic credentials that passed the password
# check on the usage and management APIs, so that repeated calls skip the hasher
# (about half a second of CPU each); 0 checks the password on every request.
API_BASIC_AUTH_CACHE_SECONDS = env.float("API_BASIC_AUTH_CACHE_SECONDS", default=60.0)
# Whether each gateway process also drains the usage buffer (besides Celery).
USAGE_DRAIN_IN_PROCESS = env.bool("USAGE_DRAIN_IN_PROCESS", default=True)
# A buffered event a drainer read but never acknowledged (it died mid-batch) is
# taken over by another drainer after this long.
USAGE_CLAIM_IDLE_MS = env.int("USAGE_CLAIM_IDLE_MS", default=60_000)
# Streams in flight (usage/inflight.py): a worker that stops beating for this
# many seconds is dead, and its streams are billed as far as they went; each
# stream's entry is rewritten at most every USAGE_INFLIGHT_CHECKPOINT seconds.
USAGE_INFLIGHT_LEASE = env.float("USAGE_INFLIGHT_LEASE", default=30.0)
USAGE_INFLIGHT_CHECKPOINT = env.float("USAGE_INFLIGHT_CHECKPOINT", default=1.0)

# Retention (days), enforced daily by the retention job in bounded batches.
USAGE_RETENTION_DAYS = env.int("USAGE_RETENTION_DAYS", default=400)
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=400)
HEALTH_RETENTION_DAYS = env.int("HEALTH_RETENTION_DAYS", default=14)
ROLLUP_RETENTION_DAYS = env.int("ROLLUP_RETENTION_DAYS", default=1100)
# Usage events the database refused (usage.UsageDeadLetter): long enough for staff to look.
USAGE_DEAD_LETTER_RETENTION_DAYS = env.int("USAGE_DEAD_LETTER_RETENTION_DAYS", default=30)
# How far back the rollup job looks for buckets that gained records (late
# events, hours no job rolled up); older ones: `manage.py rollup_usage --since`.
ROLLUP_LOOKBACK_HOURS = env.int("ROLLUP_LOOKBACK_HOURS", default=48)
RETENTION_BATCH = env.int("RETENTION_BATCH", default=5000)
# PostgreSQL: the usage ledger's monthly partitions created ahead of need (usage.partitions).
USAGE_PARTITIONS_AHEAD = env.int("USAGE_PARTITIONS_AHEAD", default=3)
# Stored Responses API answers (previous_response_id, GET /v1/responses/{id}) of tenants without
# a retention_days of their own: 30 days, as OpenAI keeps them.
RESPONSES_RETENTION_DAYS = env.int("RESPONSES_RETENTION_DAYS", default=30)

# Email (cost reports, budget alerts): EMAIL_URL such as smtp://user:pass@host:587
# or smtp+tls://..., submission+tls://...; console:// prints instead.
vars().update(env.email_url("EMAIL_URL", default="smtp://127.0.0.1:25"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LLM Gateway <gateway@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Where admins reach the gateway, for links in emails.
GATEWAY_PUBLIC_URL = env.str("GATEWAY_PUBLIC_URL", default="http://127.0.0.1:8000")

# Cost reports and forecasts (usage/forecast.py, usage/changes.py; docs/reports.md).
# The current rate: the mean daily spend of this many whole days before now.
FORECAST_RATE_DAYS = env.int("FORECAST_RATE_DAYS", default=7)
# "What changed": against the median of this many days before the period; a spend
# move counts from this many USD a day, rates from this many requests; at most
# REPORT_CHANGES sentences.
REPORT_BASELINE_DAYS = env.int("REPORT_BASELINE_DAYS", default=14)
REPORT_CHANGE_MIN_USD = Decimal(env.str("REPORT_CHANGE_MIN_USD", default="1.00"))
REPORT_CHANGE_MIN_REQUESTS = env.int("REPORT_CHANGE_MIN_REQUESTS", default=20)
REPORT_CHANGES = env.int("REPORT_CHANGES", default=6)
# Spend anomalies (usage/anomalies.py): each hour of a tenant's key and model against
# the same hour of ANOMALY_BASELINE_DAYS days before (median and MAD). An hour is an
# anomaly when its spend or requests are at least ANOMALY_MIN_RATIO times the median
# and ANOMALY_MADS scaled MADs above it, and reach the minimum volume: at least
# ANOMALY_MIN_CALLS calls, and the spend or request minimum of the figure that rose.
ANOMALY_BASELINE_DAYS = env.int("ANOMALY_BASELINE_DAYS", default=14)
ANOMALY_MADS = env.float("ANOMALY_MADS", default=6.0)
ANOMALY_MIN_RATIO = env.float("ANOMALY_MIN_RATIO", default=3.0)
ANOMALY_MIN_SPEND_USD = Decimal(env.str("ANOMALY_MIN_SPEND_USD", default="1.00"))
ANOMALY_MIN_REQUESTS = env.int("ANOMALY_MIN_REQUESTS", default=50)
ANOMALY_MIN_CALLS = env.int("ANOMALY_MIN_CALLS", default=10)
# Closed hours each run looks at (a run that was missed is caught up by the next).
ANOMALY_LOOKBACK_HOURS = env.int("ANOMALY_LOOKBACK_HOURS", default=3)

# --- Celery -------------------------------------------------------------------
def _celery_broker(url: str) -> str:
    """Celery's broker by default: REDIS_URL, in kombu's spelling for Sentinel. kombu has no Redis
    Cluster transport: with a cluster, CELERY_BROKER_URL must name a broker of its own."""
    if not url:
        return "memory://"
    if _REDIS_KIND.endswith("+cluster"):
        if "CELERY_BROKER_URL" not in os.environ:
            raise ImproperlyConfigured("REDIS_URL names a cluster: set CELERY_BROKER_URL (one Redis, a Sentinel "
                                       "master or another broker kombu supports)")
        return ""
    if _REDIS_KIND.endswith("+sentinel"):
        scheme, rest = url.split("://", 1)
        hosts, _, path = rest.partition("/")
        auth, _, hosts = hosts.rpartition("@")
        auth = f"{auth}@" if auth else ""
        db = path.split("/")[1] if path.count("/") else "0"
        return ";".join(f"sentinel://{auth}{host}/{db}" for host in hosts.split(","))
    return url


CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or _celery_broker(REDIS_URL)
if _REDIS_KIND.endswith("+sentinel") and "CELERY_BROKER_URL" not in os.environ:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"master_name": REDIS_URL.split("://", 1)[1].split("/")[1]}
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not REDIS_URL)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat writes each task's "last run" after every task it sends (Celery's default
# is every 3 minutes): the admin shows it current, and compose's beat health check reads it.
CELERY_BEAT_SYNC_EVERY = env.int("CELERY_BEAT_SYNC_EVERY", default=1)
CELERY_TIMEZONE = TIME_ZONE
# Batch lines run on a queue of their own (docs/batches.md): start workers for it with
# `celery -A gateway_project worker -Q batches` (or `-Q celery,batches` for one worker doing both).
BATCH_QUEUE = env.str("BATCH_QUEUE", default="batches")
CELERY_TASK_ROUTES = {"routing.batches.tasks.run_batch": {"queue": BATCH_QUEUE}}

# Files and batches (docs/batches.md).
# Uploaded and batch files go through STORAGES["default"]: the file system here unless set otherwise
# (S3 through django-storages: docs/batches.md).
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(DATA_DIR / "media")))
# FILES_S3_BUCKET set: files go to that bucket of S3 or an S3-compatible server (MinIO, Ceph, R2, ...)
# through django-storages; the credentials, if not given, come from boto3's own chain (an IAM role).
FILES_S3_BUCKET = env.str("FILES_S3_BUCKET", default="")
if FILES_S3_BUCKET:
    STORAGES = {
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
            "bucket_name": FILES_S3_BUCKET,
            "location": env.str("FILES_S3_PREFIX", default=""),
            "endpoint_url": env.str("FILES_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("FILES_S3_REGION", default="") or None,
            "access_key": env.str("FILES_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("FILES_S3_SECRET_ACCESS_KEY", default="") or (
                Path(path).read_text().strip() if (path := env.str("FILES_S3_SECRET_ACCESS_KEY_FILE", default=""))
                else None),
            "file_overwrite": False, "default_acl": None,
        }},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
FILES_MAX_BYTES = env.int("FILES_MAX_BYTES", default=200 * 1024 * 1024)
FILES_TENANT_MAX_BYTES = env.int("FILES_TENANT_MAX_BYTES", default=10 * 1024 * 1024 * 1024)
BATCH_CHUNK_LINES = env.int("BATCH_CHUNK_LINES", default=50)
BATCH_LINE_CONCURRENCY = env.int("BATCH_LINE_CONCURRENCY", default=8)
BATCH_LEASE_SECONDS = env.int("BATCH_LEASE_SECONDS", default=120)
BATCH_SLOTS = env.int("BATCH_SLOTS", default=2)
# The most of each rate limit (a key's and a tenant's requests and tokens per minute, concurrency) batch
# lines may fill: the rest stays for live calls while a batch runs (1: no reserve).
BATCH_LIMIT_SHARE = env.float("BATCH_LIMIT_SHARE", default=0.5)
# Days a finished batch (its lines, input, output and error files) is kept after it ended; 0: for ever.
BATCH_RETENTION_DAYS = env.int("BATCH_RETENTION_DAYS", default=30)
if not 0 < BATCH_LIMIT_SHARE <= 1:
    raise ValueError("BATCH_LIMIT_SHARE must be above 0 and at most 1")

# --- Observability (docs/observability.md) --------------------------------------
# GET /metrics answers a bearer METRICS_TOKEN, or any client address in METRICS_ALLOW
# (comma-separated CIDRs; loopback by default, empty for nobody).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="") or (
    Path(path).read_text().strip() if (path := env.str("METRICS_TOKEN_FILE", default="")) else "")
METRICS_ALLOW = env.list("METRICS_ALLOW", default=["127.0.0.1/32", "::1/128"])
# Seconds between each process's pushes of its counts to Redis.
METRICS_PUSH_INTERVAL = env.float("METRICS_PUSH_INTERVAL", default=1.0)
# /readyz answers 503 when the usage buffer holds more events than this, or its
# oldest event waited longer than this many seconds.
READY_MAX_USAGE_BACKLOG = env.int("READY_MAX_USAGE_BACKLOG", default=100_000)
READY_MAX_USAGE_LAG = env.float("READY_MAX_USAGE_LAG", default=300.0)
# One log line per request on the "gateway.request" logger (INFO, whatever LOG_LEVEL says).
REQUEST_LOG = env.bool("REQUEST_LOG", default=True)
# Longest prompt kept (after redaction) for tenants that opt into prompt logging.
PROMPT_LOG_MAX_CHARS = env.int("PROMPT_LOG_MAX_CHARS", default=4000)

# Readable text where a person watches the logs (a terminal), one JSON object per line for
# collectors otherwise; the logs go to standard error, so that is the stream asked.
LOG_FORMAT = env.str("LOG_FORMAT", default="auto")
if LOG_FORMAT not in ("text", "json", "auto"):
    raise ValueError("LOG_FORMAT must be 'text', 'json' or 'auto'")
if LOG_FORMAT == "auto":
    LOG_FORMAT = "text" if sys.stderr is not None and sys.stderr.isatty() else "json"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"text": {"()": "gateway_project.lib.log_format.TextFormatter"},
                   "json": {"()": "gateway_project.lib.log_format.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"gateway.request": {"level": "INFO" if REQUEST_LOG else "WARNING"}},
}
