"""Which environment variables may hold a provider's key (`Provider.api_key_env`).

The gateway's environment also holds its database and Redis URLs and its own
secrets, and a provider's key is sent upstream, to whatever host the provider
points at. So a provider may only read a variable whose name starts with
PROVIDER_KEY_ENV_PREFIX or that is listed in PROVIDER_KEY_ENV_ALLOW, never one
of the gateway's own settings, and only staff may name one. Checked when a
provider is saved and again whenever its key is read, so a row that names any
other variable sends no key at all.
"""

import logging
import os
import re

from django.conf import settings

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The gateway's own configuration: never a provider key, whatever the settings say.
_GATEWAY_OWN = frozenset({"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "API_KEY_HASH_SECRET",
                          "PROVIDER_KEY_ENCRYPTION_KEYS", "EMAIL_URL", "CELERY_BROKER_URL"})


def refusal(name: str) -> str:
    """Why the variable `name` may not hold a provider key ("" when it may)."""
    if not _NAME.match(name):
        return "Not an environment variable name (letters, digits and underscores)."
    if name.upper().removesuffix("_FILE") in _GATEWAY_OWN:
        return f"{name} is part of the gateway's own configuration and can never hold a provider key."
    prefix = settings.PROVIDER_KEY_ENV_PREFIX
    if (prefix and name.startswith(prefix) and name != prefix) or name in settings.PROVIDER_KEY_ENV_ALLOW:
        return ""
    rule = f"start with {prefix}" if prefix else "be named"
    return (f"{name} may not hold a provider key: the variable's name must {rule}"
            f"{' or be' if prefix else ''} in PROVIDER_KEY_ENV_ALLOW (settings, see docs/security.md).")


def read(name: str) -> str:
    """The key in the variable `name`, or "" when the allow-list refuses it."""
    reason = refusal(name)
    if reason:
        log.warning("provider key variable refused, no key sent: %s", reason)
        return ""
    return os.environ.get(name, "")
