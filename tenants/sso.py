"""Single sign-on for the admin over OpenID Connect (docs/sso.md).

mozilla-django-oidc runs the authorization code flow (state, nonce and PKCE kept in the
session, the code exchanged at the token endpoint, the ID token's signature checked
against the provider's JWKS). This module adds what a gateway needs on top:

- the ID token must also name this client as its audience and `OIDC_OP_ISSUER` as its
  issuer (the library checks neither), and userinfo must be about the same subject;
- a user is found by issuer and subject (`SsoIdentity`), never by name, and created on
  their first sign-in with no usable password; with `OIDC_LINK_BY_EMAIL` a first sign-in
  instead joins the one existing account with the address the provider says it verified
  (never a superuser's unless `OIDC_LINK_SUPERUSERS`, never one already joined to another
  identity), audited as `sso.link`;
- the role claim decides, at every sign-in, whether the user is staff and which
  memberships they hold (`OIDC_ROLE_MAP`): the identity provider is the source of truth
  for these users. Someone with no mapped value is refused, and an identity that lost
  every role loses its memberships on the spot;
- every sign-in and every refusal goes to the audit log, the refusal with its reason,
  and the person sees a page that says why.
"""

import logging
import re
from dataclasses import dataclass, field

import jwt
import requests
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import transaction
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from . import audit
from .models import Membership, SsoIdentity, Tenant

log = logging.getLogger(__name__)

SUPERUSER = "superuser"
RANK = {Membership.Role.MEMBER: 1, Membership.Role.ADMIN: 2, Membership.Role.OWNER: 3}
NO_ROLE = ("Your account at {provider} has no role in this gateway: none of the values of its "
           "\u201c{claim}\u201d claim is mapped to a tenant. Ask your administrator to add you to a group "
           "that grants a role here.")


# --- The role claim -------------------------------------------------------------------


def role_map() -> dict[str, tuple[str, str]]:
    """OIDC_ROLE_MAP parsed: claim value -> (tenant slug, role), or ("", "superuser")."""
    parsed = {}
    for value, target in settings.OIDC_ROLE_MAP.items():
        target = str(target).strip()
        if target == SUPERUSER:
            parsed[value] = ("", SUPERUSER)
            continue
        slug, _, role = target.partition(":")
        if not slug or role not in RANK:
            raise ImproperlyConfigured(
                f"OIDC_ROLE_MAP: {value}={target} should be {value}=TENANT-SLUG:owner|admin|member or "
                f"{value}=superuser")
        parsed[value] = (slug, role)
    return parsed


def claim_values(claims: dict) -> list[str]:
    """The role claim's values: a list of strings or one string (anything else: none)."""
    value = claims.get(settings.OIDC_ROLES_CLAIM)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


@dataclass
class Grants:
    """What the claim gives: superuser or not, and a role per tenant id (the highest mapped)."""

    superuser: bool = False
    roles: dict[int, str] = field(default_factory=dict)

    @property
    def anything(self) -> bool:
        return self.superuser or bool(self.roles)


def grants_for(claims: dict) -> Grants:
    grants, by_slug = Grants(), {}
    mapping = role_map()
    for value in claim_values(claims):
        slug, role = mapping.get(value, ("", ""))
        if role == SUPERUSER:
            grants.superuser = True
        elif role and RANK[role] > RANK.get(by_slug.get(slug), 0):
            by_slug[slug] = role
    tenants = dict(Tenant.objects.filter(slug__in=by_slug, is_active=True).values_list("slug", "id"))
    for slug in by_slug.keys() - tenants.keys():
        log.warning("OIDC_ROLE_MAP names tenant %r, which does not exist or is inactive", slug)
    grants.roles = {tenants[slug]: role for slug, role in by_slug.items() if slug in tenants}
    return grants


def roles_apply(user, grants: Grants) -> None:
    """Make `user`'s staff flags and memberships what `grants` says (audited, field by field)."""
    staff = grants.anything
    if (user.is_staff, user.is_superuser) != (staff, grants.superuser):
        user.is_staff, user.is_superuser = staff, grants.superuser
        user.save(update_fields=["is_staff", "is_superuser"])
    held = {m.tenant_id: m for m in Membership.objects.filter(user=user)}
    for tenant_id, role in grants.roles.items():
        membership = held.pop(tenant_id, None)
        if membership is None:
            Membership.objects.create(tenant_id=tenant_id, user=user, role=role)
        elif membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
    for membership in held.values():
        membership.delete()


# --- The backend ----------------------------------------------------------------------


class Refused(SuspiciousOperation):
    """A sign-in the gateway turns down; its message is shown to the person and audited."""


def _username_for(claims: dict) -> str:
    wanted = claims.get(settings.OIDC_USERNAME_CLAIM) or claims.get("email") or claims["sub"]
    base = re.sub(r"[^\w.@+-]", "-", str(wanted))[:140] or "sso-user"
    users, name, n = get_user_model()._default_manager, base, 1
    while users.filter(username=name).exists():  # a local account keeps its name
        n += 1
        name = f"{base}-{n}"
    return name


DEACTIVATED = "Your account in this gateway is deactivated."


def email_verified(claims: dict) -> bool:
    # A boolean by the standard; some providers (Amazon Cognito) send the string.
    return claims.get("email_verified") in (True, "true")


def account_to_join(claims: dict):
    """The existing account a first sign-in joins, as (user, "") or (None, why it joins none);
    ("" when no account has the address). Only an address the provider verified joins: an
    unverified one could be anybody's."""
    email = claims.get("email")
    if not email or not isinstance(email, str):
        return None, ""
    found = list(get_user_model()._default_manager.filter(email__iexact=email).order_by("id")[:2])
    if not found:
        return None, ""
    if not settings.OIDC_LINK_BY_EMAIL:
        return None, "joining accounts by e-mail address is off (OIDC_LINK_BY_EMAIL)"
    if not email_verified(claims):
        return None, "the identity provider does not say the e-mail address is verified"
    if len(found) > 1:
        return None, "more than one account has this e-mail address"
    (user,) = found
    if SsoIdentity.objects.filter(user=user).exists():
        return None, "the account with this e-mail address signs in with another identity"
    if user.is_superuser and not settings.OIDC_LINK_SUPERUSERS:
        return None, "the account with this e-mail address is a superuser (OIDC_LINK_SUPERUSERS)"
    return user, ""


class SsoBackend(OIDCAuthenticationBackend):
    """Signs in the person the identity provider vouches for, with the roles its claim gives."""

    def authenticate(self, request, **kwargs):
        # Only the SSO callback passes a nonce: a password check (admin, HTTP basic auth) that
        # happens to carry ?code=&state= never makes this process call the provider.
        if request is None or "nonce" not in kwargs:
            return None
        return super().authenticate(request, **kwargs)

    def get_user(self, user_id):
        # Django's check, which the library's own get_user skips: a deactivated user's session ends.
        return ModelBackend.get_user(self, user_id)

    def _verify_jws(self, payload, key):
        header = jwt.get_unverified_header(payload)
        if header.get("alg") != self.OIDC_RP_SIGN_ALGO:
            raise Refused(f"The identity provider signed with {header.get('alg')!r}, not {self.OIDC_RP_SIGN_ALGO}.")
        try:
            return jwt.decode(payload, key, algorithms=[self.OIDC_RP_SIGN_ALGO], audience=self.OIDC_RP_CLIENT_ID,
                              issuer=settings.OIDC_OP_ISSUER, leeway=30, options={"require": ["exp", "iat", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise Refused(f"The identity provider's token was not accepted: {exc}.") from None

    def get_or_create_user(self, access_token, id_token, payload):
        try:
            return self._sign_in(access_token, id_token, payload)
        except Refused as exc:
            # The library turns this into "no user": keep the reason for the page and the audit log.
            self.request.sso_refusal = str(exc)
            raise

    def _sign_in(self, access_token, id_token, payload):
        userinfo = self.get_userinfo(access_token, id_token, payload)
        if userinfo.get("sub") != payload.get("sub"):
            raise Refused("The identity provider's user information is about another account than its token.")
        claims = {**payload, **userinfo}
        self.request.sso_claims = claims
        identity = SsoIdentity.objects.select_related("user").filter(
            issuer=payload["iss"], subject=payload["sub"]).first()
        if identity is not None and not identity.user.is_active:
            raise Refused(DEACTIVATED)
        joined, not_joined = account_to_join(claims) if identity is None else (None, "")
        if joined is not None and not joined.is_active:
            raise Refused(DEACTIVATED)  # staff turned this person away: no fresh account around it
        with audit.acting(label=f"sso: {payload['iss']}"[:200], address=self.request.META.get("REMOTE_ADDR"),
                          request_id=getattr(self.request, "request_id", "")):
            grants = grants_for(claims)
            if not grants.anything:
                if identity is not None:
                    with transaction.atomic():
                        roles_apply(identity.user, grants)  # the provider took every role away
                raise Refused(NO_ROLE.format(provider=settings.OIDC_PROVIDER_NAME, claim=settings.OIDC_ROLES_CLAIM))
            with transaction.atomic():
                if identity is not None:
                    user = identity.user
                elif joined is not None:
                    user = self._join(joined, claims, payload["iss"])
                else:
                    user = self._create(claims, payload["iss"])
                if claims.get("email") and user.email != claims["email"]:
                    user.email = claims["email"][:254]
                    user.save(update_fields=["email"])
                roles_apply(user, grants)
                SsoIdentity.objects.filter(user=user).update(last_login_at=timezone.now())
        roles = dict(Membership.objects.filter(user=user).values_list("tenant__slug", "role"))
        changes = {"issuer": payload["iss"], "subject": payload["sub"], "superuser": grants.superuser, "roles": roles}
        if joined is not None:
            changes["joined"] = user.get_username()
        elif not_joined:
            changes["not_joined"] = not_joined  # why a second account has this address
        user.audit_login = ("login.sso", changes)
        return user

    def _join(self, user, claims: dict, issuer: str):
        SsoIdentity.objects.create(user=user, issuer=issuer, subject=claims["sub"])
        audit.record("sso.link", user, changes={"issuer": issuer, "subject": claims["sub"], "email": claims["email"]})
        return user

    def _create(self, claims: dict, issuer: str):
        user = get_user_model()._default_manager.create_user(_username_for(claims), email=claims.get("email", ""))
        SsoIdentity.objects.create(user=user, issuer=issuer, subject=claims["sub"])
        return user


# --- The views ------------------------------------------------------------------------


class SsoStart(OIDCAuthenticationRequestView):
    """/admin/sso/start/: off to the identity provider (state, nonce, PKCE in the session)."""


class SsoCallback(OIDCAuthenticationCallbackView):
    """/admin/sso/callback/: the provider sends the person back here with a code."""

    def get(self, request):
        request.sso_refusal = ""
        if "code" in request.GET and "oidc_states" not in request.session:
            request.sso_refusal = "This sign-in was started in another browser session or has expired. Start again."
        try:
            return super().get(request)
        except Refused as exc:
            request.sso_refusal = str(exc)
        except SuspiciousOperation as exc:
            request.sso_refusal = f"The sign-in could not be verified ({exc}). Start again."
        except (requests.RequestException, ValueError, KeyError) as exc:
            log.warning("single sign-on: the identity provider's answer was not usable: %r", exc)
            request.sso_refusal = "The identity provider could not be reached or gave an answer that is not usable."
        return self.login_failure()

    def login_failure(self) -> HttpResponse:
        request = self.request
        reason = getattr(request, "sso_refusal", "") or self._provider_error() or (
            "The sign-in could not be completed. Start again.")
        user = getattr(self, "user", None)
        if user is not None and not user.is_active:
            reason = DEACTIVATED
        claims = getattr(request, "sso_claims", {})
        who = claims.get(settings.OIDC_USERNAME_CLAIM) or claims.get("email") or claims.get("sub") or "unknown"
        audit.record("login.refused", actor_label=f"sso: {who}"[:200], address=request.META.get("REMOTE_ADDR"),
                     changes={"reason": reason, "issuer": claims.get("iss", settings.OIDC_OP_ISSUER),
                              "subject": claims.get("sub", ""), settings.OIDC_ROLES_CLAIM: claim_values(claims)})
        context = {**admin.site.each_context(request), "title": "Sign-in refused", "reason": reason,
                   "provider": settings.OIDC_PROVIDER_NAME, "is_nav_sidebar_enabled": False}
        return TemplateResponse(request, "admin/sso_refused.html", context, status=403)

    def _provider_error(self) -> str:
        error = self.request.GET.get("error")
        if not error:
            return ""
        detail = self.request.GET.get("error_description", "")
        return f"{settings.OIDC_PROVIDER_NAME} did not sign you in: {error}{f' ({detail})' if detail else ''}."[:500]
