"""Every periodic job, declared in one place, installed into django-celery-beat.

Installed after each `migrate` (post_migrate), so admins find them in the admin
under Periodic tasks, where they can change the interval or disable a job; an
existing entry's interval is left as the admin set it.
"""

import json

from django.db import transaction

# name: (task, every N seconds, or a crontab "minute hour day_of_month month day_of_week" in UTC, kwargs)
SCHEDULES: dict[str, tuple[str, int | str, dict]] = {
    "usage: drain buffered usage events": ("usage.tasks.drain_usage", 5, {}),
    "providers: health checks": ("providers.tasks.check_health", 60, {}),
    "usage: hourly and daily rollups": ("usage.tasks.rollup_usage", 300, {}),
    "usage: create the ledger's partitions ahead": ("usage.tasks.create_usage_partitions", "10 * * * *", {}),
    "retention: delete expired records": ("usage.tasks.cleanup_retention", "30 3 * * *", {}),
    "reports: daily cost report": ("usage.tasks.send_cost_reports", "0 6 * * *", {"period": "day"}),
    "reports: weekly cost report": ("usage.tasks.send_cost_reports", "0 6 * * 1", {"period": "week"}),
    "reports: monthly cost report": ("usage.tasks.send_cost_reports", "0 6 1 * *", {"period": "month"}),
    "usage: spend anomalies of the last hours": ("usage.tasks.detect_anomalies", "5,20,35,50 * * * *", {}),
    "batches: resume unfinished batches": ("routing.batches.tasks.resume_batches", 30, {}),
    "batches: delete finished batches past their retention": ("routing.batches.tasks.cleanup_batches",
                                                               "45 3 * * *", {}),
    "usage: delete logged prompts past their retention": ("usage.tasks.purge_prompts", 3600, {}),
}


@transaction.atomic
def install_schedules(**kwargs) -> None:
    # After migrate, when django-celery-beat's tables and models exist.
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    for name, (task, when, kwargs) in SCHEDULES.items():
        if isinstance(when, int):
            every, _ = IntervalSchedule.objects.get_or_create(every=when, period=IntervalSchedule.SECONDS)
            schedule = {"interval": every}
        else:
            minute, hour, day_of_month, month, day_of_week = when.split()
            crontab, _ = CrontabSchedule.objects.get_or_create(
                minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month, day_of_week=day_of_week,
                timezone="UTC")
            schedule = {"crontab": crontab}
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "kwargs": json.dumps(kwargs),
                                                                **schedule})
