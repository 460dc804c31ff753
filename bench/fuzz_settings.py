"""The gateway's settings for bench/fuzz_api.py: the same in every way but one.

HTTP basic auth checks the password on every request, and Django's default
hasher (PBKDF2, a million rounds) makes that about half a second of CPU each:
thousands of management API calls would take hours. The fuzzer's staff user
gets a cheap hash instead; nothing else changes.
"""

from gateway_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
