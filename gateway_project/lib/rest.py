"""What every REST API of the gateway shares (usage API, management API)."""

import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime
from hmac import compare_digest
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.http import is_same_domain
from django_ratelimit.core import is_ratelimited
from rest_framework.authentication import BasicAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, ParseError, PermissionDenied, Throttled, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.throttling import BaseThrottle

from gateway_project.lib.json_depth import too_deep


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


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, with bodies nested past GATEWAY_MAX_JSON_DEPTH a 400: Python's json
    raised RecursionError (a 500) on about a thousand levels, and a few hundred fail when stored."""

    def parse(self, stream, media_type=None, parser_context=None):
        too_deep_error = ParseError(f"JSON parse error - nested more than {settings.GATEWAY_MAX_JSON_DEPTH} "
                                    "levels deep.")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise too_deep_error from None
        if too_deep(data):
            raise too_deep_error
        return data


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


class VerifiedCredentials:
    """Username and password pairs whose password check passed lately, so that a script
    calling the APIs pays for the password hasher (PBKDF2, about half a second of CPU)
    once per API_BASIC_AUTH_CACHE_SECONDS, not on every request.

    In this process's memory, bounded: nothing leaves the process, and nothing needs
    to, since every entry is checked against the database on use. An entry is keyed by
    an HMAC of the pair under SECRET_KEY (never the password, nor a plain hash of it),
    and holds the user's id and an HMAC of their stored password hash as it was when
    verified. A hit still loads the user (one query) and holds only while the user is
    active and that stored hash unchanged: a new password, an unusable one or a
    deactivated user void it at once. Only passed checks are remembered.
    """

    SIZE = 1024

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[object, str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def user(self, username: str, password: str) -> AbstractBaseUser | None:
        """The active user these credentials passed the password check for within the TTL,
        their password unchanged since; else None (check the password)."""
        ttl = settings.API_BASIC_AUTH_CACHE_SECONDS
        if ttl <= 0:
            return None
        key = _credentials_key(username, password)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        pk, stamp, verified_at = entry
        user = None
        if time.monotonic() - verified_at < ttl:
            users = get_user_model()._default_manager
            user = users.filter(pk=pk, **{users.model.USERNAME_FIELD: username}).first()
        if user is None or not user.is_active or not compare_digest(_password_stamp(user), stamp):
            with self._lock:
                self._entries.pop(key, None)
            return None
        return user

    def remember(self, username: str, password: str, user: AbstractBaseUser) -> None:
        if settings.API_BASIC_AUTH_CACHE_SECONDS <= 0:
            return
        key = _credentials_key(username, password)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (user.pk, _password_stamp(user), time.monotonic())
            while len(self._entries) > self.SIZE:
                self._entries.popitem(last=False)  # the oldest, the first to expire

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _credentials_key(username: str, password: str) -> str:
    return salted_hmac("gateway_project.api.credentials", f"{username}\x00{password}", algorithm="sha256").hexdigest()


def _password_stamp(user: AbstractBaseUser) -> str:
    return salted_hmac("gateway_project.api.password-stamp", user.password, algorithm="sha256").hexdigest()


verified_credentials = VerifiedCredentials()


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _origin(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    return (parts.scheme.lower(), parts.netloc.lower()) if parts.scheme and parts.netloc else None


def _trusted_origin(request, url: str) -> bool:
    """Whether `url`'s origin is the request's own or one of CSRF_TRUSTED_ORIGINS (`*.` wildcards too)."""
    origin = _origin(url)
    if origin is None:
        return False
    if origin == (request.scheme, request.get_host().lower()):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        allowed = _origin(trusted)
        if allowed is None or allowed[0] != origin[0]:
            continue
        if allowed[1] == origin[1] or (allowed[1].startswith("*.") and is_same_domain(origin[1], allowed[1][1:])):
            return True
    return False


def check_not_cross_site(request) -> None:
    """Refuse (403) a write that a browser sent from another site's page.

    A browser attaches HTTP basic credentials it has cached to any request to the
    gateway, a form posted from another site's page included, so basic-auth writes
    need what Django's CSRF check gives session writes. Scripts (curl, httpx, the
    SDKs) send none of the headers below and pass unchanged. A browser names where
    the request comes from: `Origin` (every cross-origin POST, and same-origin ones
    in current browsers) must be the gateway's own or in CSRF_TRUSTED_ORIGINS;
    without one, `Sec-Fetch-Site` must not say cross-site or same-site, and on HTTPS
    a `Referer` must be trusted as Django's CSRF check wants.
    """
    if request.method in SAFE_METHODS:
        return
    meta = request.META
    if (origin := meta.get("HTTP_ORIGIN")) is not None:
        refused = not _trusted_origin(request, origin)
    elif meta.get("HTTP_SEC_FETCH_SITE", "").lower() in ("cross-site", "same-site"):
        refused = True
    else:
        referer = meta.get("HTTP_REFERER")
        refused = bool(referer) and request.is_secure() and not _trusted_origin(request, referer)
    if refused:
        raise PermissionDenied("Cross-site request refused: a page of another site may not write with HTTP "
                               "basic credentials. Send the request from a script (no Origin header), from the "
                               "gateway's own pages, or from an origin in CSRF_TRUSTED_ORIGINS.")


class ThrottledBasicAuthentication(BasicAuthentication):
    """HTTP basic auth no faster a way to guess passwords than the login page:
    failures count against the address's sign-in allowance, and an address over
    it gets 429 (Retry-After) until the minute is out, right password or not.
    Credentials that passed lately skip the password hasher (VerifiedCredentials);
    everything else, the throttle included, runs on every request. Writes from another
    site's page are refused before the password is checked (check_not_cross_site), so
    such a page can neither write nor spend the address's sign-in allowance."""

    def authenticate(self, request):
        if not get_authorization_header(request).lower().startswith(b"basic "):
            return None
        check_not_cross_site(request)
        if sign_in_limited(request._request, count=False):
            raise Throttled(wait=60, detail="Too many failed sign-ins from this address. Wait a minute.")
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            sign_in_limited(request._request, count=True)
            raise

    def authenticate_credentials(self, userid, password, request=None):
        if "\x00" in userid:
            # No username holds one, and PostgreSQL refuses NUL in text: the lookup
            # would be a 500. It also keeps "username NUL password" unambiguous.
            raise AuthenticationFailed("Invalid username/password.")
        if (user := verified_credentials.user(userid, password)) is not None:
            return user, None
        # A miss, a stale entry or a wrong password: the full check, failures signalled
        # (and audited) by Django as before.
        user, auth = super().authenticate_credentials(userid, password, request)
        verified_credentials.remember(userid, password, user)
        return user, auth


from drf_spectacular.authentication import BasicScheme  # noqa: E402 (needs the class above)


class ThrottledBasicScheme(BasicScheme):
    """How the schema describes ThrottledBasicAuthentication: HTTP basic, as DRF's own."""

    target_class = ThrottledBasicAuthentication
