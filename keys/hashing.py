"""Gateway API key format, generation and hashing.

A key looks like ``sk-gw-<40 random base62 chars><6 char checksum>``: about 238
bits of entropy, a prefix that secret scanners and humans recognise, and a
CRC32 checksum so that a mistyped or made-up key is refused without touching any
cache or the database. Only an HMAC-SHA256 of the key (keyed with
API_KEY_HASH_SECRET) is stored, so a database dump does not yield usable keys.
"""

import hashlib
import hmac
import secrets
import zlib

from django.conf import settings

PREFIX = "sk-gw-"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
# What the admin shows to tell keys apart: the prefix and the first 8 body chars.
DISPLAY_LENGTH = len(PREFIX) + 8

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate_key() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LENGTH))
    return PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Cheap syntactic check (length, prefix, alphabet, checksum)."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) : len(PREFIX) + BODY_LENGTH]
    checksum = key[len(PREFIX) + BODY_LENGTH :]
    if not all(c in _ALPHABET for c in body):
        return False
    return hmac.compare_digest(_checksum(body), checksum)


_hash_secret: bytes | None = None


def hash_key(key: str) -> str:
    global _hash_secret
    if _hash_secret is None:
        _hash_secret = settings.API_KEY_HASH_SECRET.encode()
    return hmac.new(_hash_secret, key.encode(), hashlib.sha256).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_LENGTH]
