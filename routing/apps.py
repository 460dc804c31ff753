from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"

    def ready(self) -> None:
        from django.conf import settings

        from . import breakers, signals  # noqa: F401 (signal receivers; breakers registers its pub/sub channel)
        from .front import stages

        stages.load_configured(settings.GATEWAY_STAGES)
