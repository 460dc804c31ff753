"""Provider secrets at rest: Fernet (AES-128-CBC + HMAC) with rotatable keys.

PROVIDER_KEY_ENCRYPTION_KEYS lists Fernet keys, newest first. New secrets are
encrypted with the first; any listed key decrypts. To rotate, put a new key
in front, run `manage.py rotate_provider_keys`, then drop the old key.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    """The stored secret was encrypted with a key that is no longer configured."""


@cache
def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.strip().encode()) for key in settings.PROVIDER_KEY_ENCRYPTION_KEYS])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("provider secret cannot be decrypted with the configured keys") from exc


def reencrypt(token: str) -> str:
    """The same secret under the newest key (MultiFernet.rotate)."""
    return _fernet().rotate(token.encode()).decode()
