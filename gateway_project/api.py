"""What every REST API of the gateway shares (usage API, management API)."""

from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django_ratelimit.core import is_ratelimited
from rest_framework.authentication import BasicAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled, ValidationError
from rest_framework.throttling import BaseThrottle


def query_text(params, name: str) -> str:
    """A query parameter to filter on ("" when absent): PostgreSQL refuses NUL characters
    in text, which would otherwise be a 500."""
    value = params.get(name) or ""
    if "\x00" in value:
        raise ValidationError({name: "NUL characters are not allowed."})
    return value


def query_moment(params, name: str, hint: str, dates: bool = False) -> datetime | None:
    """A query parameter as a moment in UTC (None when absent); a date alone means its start,
    where `dates`. What PostgreSQL could not compare (month 13, an offset of 18 hours,
    the year 1 pushed past its start) is a 400 saying `hint`, not a 500."""
    value = params.get(name)
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
        if parsed is None and dates and (day := parse_date(value)) is not None:
            parsed = datetime(day.year, day.month, day.day)
        if parsed is not None:
            if parsed.tzinfo is None:
                parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
            return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        pass
    raise ValidationError({name: hint})


class ManagementThrottle(BaseThrottle):
    """django-ratelimit per user (or address, before sign-in): MANAGEMENT_API_RATE,
    shared by every process through the cache (Redis). Over it: 429 with Retry-After."""

    def allow_request(self, request, view) -> bool:
        return not is_ratelimited(request._request, group="management-api", key="user_or_ip",
                                  rate=settings.MANAGEMENT_API_RATE, increment=True)

    def wait(self) -> float:
        return 60.0


# The admin login page and HTTP basic auth on the APIs share one allowance of
# sign-in attempts per address (ADMIN_LOGIN_RATE).
SIGN_IN_GROUP = "sign-in"


def sign_in_limited(request, count: bool) -> bool:
    """Whether `request`'s address is over its sign-in attempts (counting this one if `count`)."""
    return is_ratelimited(request, group=SIGN_IN_GROUP, key="ip", rate=settings.ADMIN_LOGIN_RATE, increment=count)


class ThrottledBasicAuthentication(BasicAuthentication):
    """HTTP basic auth no faster a way to guess passwords than the login page:
    failures count against the address's sign-in allowance, and an address over
    it gets 429 (Retry-After) until the minute is out, right password or not."""

    def authenticate(self, request):
        if not get_authorization_header(request).lower().startswith(b"basic "):
            return None
        if sign_in_limited(request._request, count=False):
            raise Throttled(wait=60, detail="Too many failed sign-ins from this address. Wait a minute.")
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            sign_in_limited(request._request, count=True)
            raise


from drf_spectacular.authentication import BasicScheme  # noqa: E402 (needs the class above)


class ThrottledBasicScheme(BasicScheme):
    """How the schema describes ThrottledBasicAuthentication: HTTP basic, as DRF's own."""

    target_class = ThrottledBasicAuthentication
