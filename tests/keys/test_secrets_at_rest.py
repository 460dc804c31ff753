"""Gateway keys and provider keys never sit in the database in plain text."""

import pytest
from django.core.management import call_command
from django.db import connection

from keys import hashing
from keys import services as key_services
from providers import crypto
from providers.models import Provider


def all_rows_as_text() -> str:
    """Every row of every table, rendered as text by PostgreSQL itself."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608 (table names from introspection)
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


@pytest.mark.django_db
def test_no_table_holds_a_plaintext_key(tenant, capsys):
    _, secret = key_services.issue(tenant, "direct")
    call_command("create_api_key", tenant="acme", name="cli")
    cli_secret = capsys.readouterr().out.strip().splitlines()[-1]
    provider = Provider(name="p", kind="openai", base_url="https://api.example.com/v1")
    provider.set_api_key("sk-live-provider-secret-abcdef")
    provider.save()

    dump = all_rows_as_text()
    assert secret not in dump and cli_secret not in dump
    assert "sk-live-provider-secret-abcdef" not in dump
    assert hashing.hash_key(secret) in dump  # the hash is what is stored
    assert Provider.objects.get(pk=provider.pk).get_api_key() == "sk-live-provider-secret-abcdef"


def test_keys_are_high_entropy_prefixed_and_checksummed():
    keys = {hashing.generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("sk-gw-") and len(key) == hashing.KEY_LENGTH
        assert hashing.is_well_formed(key)
    key = keys.pop()
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not hashing.is_well_formed(typo)
    assert not hashing.is_well_formed(key + "x")
    assert not hashing.is_well_formed("sk-" + key[6:])


def test_hash_is_keyed(settings):
    key = hashing.generate_key()
    first = hashing.hash_key(key)
    hashing._hash_secret = None
    settings.API_KEY_HASH_SECRET = "another secret"
    try:
        assert hashing.hash_key(key) != first
    finally:
        hashing._hash_secret = None


@pytest.mark.django_db
def test_provider_key_rotation(settings):
    from cryptography.fernet import Fernet

    provider = Provider(name="rot", kind="openai", base_url="https://api.example.com/v1")
    provider.set_api_key("sk-rotate-me-123456")
    provider.save()
    old_token = provider.api_key_encrypted

    new_key = Fernet.generate_key().decode()
    settings.PROVIDER_KEY_ENCRYPTION_KEYS = [new_key, *settings.PROVIDER_KEY_ENCRYPTION_KEYS]
    crypto._fernet.cache_clear()
    try:
        call_command("rotate_provider_keys")
        provider.refresh_from_db()
        assert provider.api_key_encrypted != old_token
        # The old key can now be dropped: the secret still reads.
        settings.PROVIDER_KEY_ENCRYPTION_KEYS = [new_key]
        crypto._fernet.cache_clear()
        assert provider.get_api_key() == "sk-rotate-me-123456"
        with pytest.raises(crypto.SecretUnreadable):
            crypto.decrypt(old_token)
    finally:
        crypto._fernet.cache_clear()
