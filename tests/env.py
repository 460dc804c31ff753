"""Loaded by pytest before Django (see pyproject.toml): the suite's environment.

The suite runs against the real PostgreSQL and Redis on loopback, and gateway
processes started by the tests inherit this environment, secrets included.
"""

import os
import tempfile

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("GATEWAY_DATA_DIR", tempfile.mkdtemp(prefix="gateway-tests-"))
os.environ.setdefault("USAGE_FLUSH_INTERVAL", "0.1")
os.environ.setdefault("LOG_LEVEL", "WARNING")
