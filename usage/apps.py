from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from gateway_project.schedules import install_schedules

        post_migrate.connect(install_schedules, sender=self)
        from . import signals  # noqa: F401
