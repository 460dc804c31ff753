import os

from celery import Celery
from celery.signals import task_failure, task_retry, task_success

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

app = Celery("gateway")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Job runs and failures for /metrics (gateway_job_runs_total), counted in Redis
# by whichever worker ran the job.
@task_success.connect
def _job_succeeded(sender=None, **kwargs) -> None:
    from gateway_project.lib import metrics  # deferred: this module loads with the package, before settings

    metrics.job_finished(sender.name, "success")


@task_failure.connect
def _job_failed(sender=None, **kwargs) -> None:
    from gateway_project.lib import metrics  # deferred: this module loads with the package, before settings

    metrics.job_finished(sender.name, "failure")


@task_retry.connect
def _job_retried(sender=None, **kwargs) -> None:
    from gateway_project.lib import metrics  # deferred: this module loads with the package, before settings

    metrics.job_finished(sender.name, "retry")
