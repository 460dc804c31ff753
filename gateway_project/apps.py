from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


class GatewayConfig(AppConfig):
    """The composition root as an app: what belongs to no single app is wired here."""

    name = "gateway_project"
    verbose_name = "LLM gateway"

    def ready(self) -> None:
        from .schedules import install_schedules

        # Every periodic job lands in django-celery-beat once its tables exist.
        post_migrate.connect(install_schedules, sender=apps.get_app_config("django_celery_beat"))
