from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# What single sign-on cannot work without (docs/sso.md).
SSO_REQUIRED = ("OIDC_RP_CLIENT_SECRET", "OIDC_OP_ISSUER", "OIDC_OP_AUTHORIZATION_ENDPOINT", "OIDC_OP_TOKEN_ENDPOINT",
                "OIDC_OP_USER_ENDPOINT", "OIDC_OP_JWKS_ENDPOINT")


class TenantsConfig(AppConfig):
    name = "tenants"

    def ready(self) -> None:
        from . import audit, sso  # app modules load once the registry is ready

        audit.connect()
        if settings.SSO_ENABLED:
            missing = [name for name in SSO_REQUIRED if not getattr(settings, name)]
            if missing:
                raise ImproperlyConfigured(f"Single sign-on (OIDC_RP_CLIENT_ID) also needs {', '.join(missing)}")
            sso.role_map()  # a malformed mapping stops the process here, not at someone's sign-in
