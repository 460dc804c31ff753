from django.apps import AppConfig
from django.conf import settings


class RoutingConfig(AppConfig):
    name = "routing"

    def ready(self) -> None:
        from . import breakers, signals  # noqa: F401 (signal receivers; breakers registers its pub/sub channel)
        from .cache import stage as cache_stage
        from .experiments import stage as experiments
        from .front import stages  # app modules load once the registry is ready
        from .guardrails import stage as guardrails
        from .prompts import stage as prompts

        cache_stage.register()
        guardrails.register()
        experiments.register()
        prompts.register()
        stages.load_configured(settings.GATEWAY_STAGES)
