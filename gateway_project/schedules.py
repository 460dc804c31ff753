"""Every periodic job, declared in one place, installed into django-celery-beat.

Installed after each `migrate` (post_migrate), so admins find them in the admin
under Periodic tasks, where they can change the interval or disable a job; an
existing entry's interval is left as the admin set it.
"""

from django.db import transaction

# name: (task, every N seconds)
SCHEDULES: dict[str, tuple[str, int]] = {
    "usage: drain buffered usage events": ("usage.tasks.drain_usage", 5),
    "usage: delete logged prompts past their retention": ("usage.tasks.purge_prompts", 3600),
}


@transaction.atomic
def install_schedules(**kwargs) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, seconds) in SCHEDULES.items():
        every, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": every})
