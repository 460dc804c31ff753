from django.core.management.base import BaseCommand

from providers import crypto
from providers.models import Provider


class Command(BaseCommand):
    help = "Re-encrypt every stored provider secret with the newest PROVIDER_KEY_ENCRYPTION_KEYS key."

    def handle(self, **options):
        count = 0
        for provider in Provider.objects.exclude(api_key_encrypted=""):
            provider.api_key_encrypted = crypto.reencrypt(provider.api_key_encrypted)
            provider.save(update_fields=["api_key_encrypted"])
            count += 1
        self.stdout.write(f"re-encrypted {count} provider secret(s)")
