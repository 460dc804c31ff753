from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from gateway_project import dashboard
from gateway_project.lib.rest import sign_in_limited
from keys.api import KeyViewSet
from providers.api import DeploymentViewSet, ProviderViewSet
from routing.api import CachePolicyViewSet, RouteViewSet
from routing.experiments.api import ExperimentViewSet
from routing.front import playground
from routing.guardrails.api import GuardrailPolicyViewSet
from routing.prompts.api import PromptTemplateViewSet
from tenants import sso
from tenants.api import AuditLogViewSet, MemberViewSet, TenantViewSet
from usage import api as usage_api
from usage.limits_api import LimitViewSet


def admin_login(request, **kwargs):
    """The admin login, throttled per address so passwords cannot be guessed at speed
    (one allowance with HTTP basic auth on the APIs, see gateway_project/lib/rest.py);
    with single sign-on it offers the identity provider, and ADMIN_PASSWORD_LOGIN=false
    leaves that alone (docs/sso.md)."""
    if request.method == "POST" and not settings.ADMIN_PASSWORD_LOGIN:
        return HttpResponse(f"Password sign-in is switched off: sign in with {settings.OIDC_PROVIDER_NAME}.",
                            status=403, content_type="text/plain")
    if request.method == "POST" and sign_in_limited(request, count=True):
        return HttpResponse("Too many login attempts. Wait a minute and try again.", status=429,
                            content_type="text/plain", headers={"retry-after": "60"})
    context = {"sso_enabled": settings.SSO_ENABLED, "sso_provider_name": settings.OIDC_PROVIDER_NAME,
               "password_login": settings.ADMIN_PASSWORD_LOGIN}
    return admin.site.login(request, extra_context=context, **kwargs)


# The management API (docs/admin.md): the same tenant scoping as the admin.
manage = SimpleRouter()
manage.register("tenants", TenantViewSet, basename="manage-tenant")
manage.register("members", MemberViewSet, basename="manage-member")
manage.register("keys", KeyViewSet, basename="manage-key")
manage.register("providers", ProviderViewSet, basename="manage-provider")
manage.register("deployments", DeploymentViewSet, basename="manage-deployment")
manage.register("routes", RouteViewSet, basename="manage-route")
manage.register("cache-policies", CachePolicyViewSet, basename="manage-cache-policy")
manage.register("limits", LimitViewSet, basename="manage-limit")
manage.register("guardrails", GuardrailPolicyViewSet, basename="manage-guardrail")
manage.register("prompts", PromptTemplateViewSet, basename="manage-prompt")
manage.register("experiments", ExperimentViewSet, basename="manage-experiment")
manage.register("audit", AuditLogViewSet, basename="manage-audit")

# The admin index is the dashboard (gateway_project/dashboard.py); the playground is routing/front/playground.py.
admin.site.index_template = "admin/gateway_index.html"
admin.site.site_header = admin.site.site_title = "LLM gateway"
admin.site.index_title = "Dashboard"
admin.site.login_template = "admin/gateway_login.html"

# Single sign-on (tenants/sso.py): mounted only when configured, before the admin's catch-all.
sso_urls = [
    path("admin/sso/start/", sso.SsoStart.as_view(), name="sso-start"),
    path("admin/sso/callback/", sso.SsoCallback.as_view(), name="sso-callback"),
] if settings.SSO_ENABLED else []

urlpatterns = [
    path("admin/login/", admin_login, name="admin_login"),
    *sso_urls,
    path("admin/dashboard/data", admin.site.admin_view(dashboard.view), name="admin-dashboard-data"),
    path("admin/playground/", admin.site.admin_view(playground.page), name="admin-playground"),
    path("admin/playground/call", playground.call, name="admin-playground-call"),
    path("admin/", admin.site.urls),
    path("api/usage/records", usage_api.RecordList.as_view(), name="usage-records"),
    path("api/usage/summary", usage_api.Summary.as_view(), name="usage-summary"),
    path("api/usage/experiments/<int:experiment_id>", usage_api.ExperimentFigures.as_view(),
         name="usage-experiment"),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("api/manage/", include(manage.urls)),
    # The same API views also answer here when the API handler is bypassed
    # (the test client, WSGI); production traffic reaches them via asgi.py.
    path("", include("routing.urls")),
]
