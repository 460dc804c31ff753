"""What every REST API of the gateway shares (usage API, management API)."""

from django.conf import settings
from django_ratelimit.core import is_ratelimited
from rest_framework.throttling import BaseThrottle


class ManagementThrottle(BaseThrottle):
    """django-ratelimit per user (or address, before sign-in): MANAGEMENT_API_RATE,
    shared by every process through the cache (Redis). Over it: 429 with Retry-After."""

    def allow_request(self, request, view) -> bool:
        return not is_ratelimited(request._request, group="management-api", key="user_or_ip",
                                  rate=settings.MANAGEMENT_API_RATE, increment=True)

    def wait(self) -> float:
        return 60.0
