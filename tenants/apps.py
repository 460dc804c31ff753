from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"

    def ready(self) -> None:
        from . import audit  # app modules load once the registry is ready

        audit.connect()
