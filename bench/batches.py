#!/usr/bin/env python3
"""Batch throughput: N lines on the mock upstream through W Celery workers.

    DATABASE_URL=... REDIS_URL=... python3 bench/batches.py [--lines 10000] [--workers 2]

Migrates the database DATABASE_URL names (use one of its own: the run adds a
tenant, a key and a provider), starts the mock upstream, a gateway (for the
Files and Batches APIs) and W workers on the batch queue, uploads a chat file
with the openai SDK, runs it to `completed` and prints lines per second and the
workers' CPU per line (from /proc: user + system ticks of each worker process).
"""

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def setup(mock_url: str) -> tuple[str, str]:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from keys import services
    from providers.models import Deployment, Provider
    from tenants.models import Tenant

    stamp = str(int(time.time()))
    tenant = Tenant.objects.create(name=f"bench {stamp}", slug=f"bench-{stamp}")
    provider = Provider(name=f"bench-mock-{stamp}", kind="openai_compatible", base_url=mock_url + "/v1",
                        allow_private_network=True)
    provider.set_api_key("sk-bench-123456789")
    provider.save()
    Deployment.objects.create(provider=provider, public_model=f"bench-{stamp}", upstream_model="mock-gpt",
                              input_price_per_mtok="0.15", output_price_per_mtok="0.60")
    _, secret = services.issue(tenant, "bench")
    return secret, f"bench-{stamp}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "LOG_LEVEL": "WARNING", "DEBUG": "false"}
    procs = []
    try:
        mock = subprocess.Popen([sys.executable, "-m", "providers.mock_upstream", "--port", "8911"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(mock)
        wait_http("http://127.0.0.1:8911/v1/models")
        secret, model = setup("http://127.0.0.1:8911")
        gateway = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", "8910", "--log-level", "warning"],
                                   cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(gateway)
        wait_http("http://127.0.0.1:8910/healthz")
        workers = [subprocess.Popen([sys.executable, "-m", "celery", "-A", "gateway_project", "worker", "--pool=solo",
                                     "-Q", "batches", "-n", f"bench{n}@%h", "--loglevel=WARNING", "--without-gossip",
                                     "--without-mingle"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
                   for n in range(args.workers)]
        procs += workers
        client = openai.OpenAI(base_url="http://127.0.0.1:8910/v1", api_key=secret, max_retries=2, timeout=120)
        while model not in [m.id for m in client.models.list()]:
            time.sleep(0.2)
        lines = b"\n".join(orjson.dumps({"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
                                         "body": {"model": model, "messages": [{"role": "user", "content": f"q {n}"}]}})
                           for n in range(args.lines))
        uploaded = client.files.create(file=("bench.jsonl", io.BytesIO(lines)), purpose="batch")
        time.sleep(3)  # the workers are up and idle
        before = sum(cpu_seconds(w.pid) for w in workers)
        started = time.monotonic()
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled"):
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu = sum(cpu_seconds(w.pid) for w in workers) - before
        out = client.files.content(batch.output_file_id).content.splitlines()
        assert len(out) == args.lines, (batch, len(out))
        print(f"| {args.lines} | {args.workers} | {elapsed:.1f} s | {args.lines / elapsed:.0f} | "
              f"{1000 * cpu / args.lines:.2f} ms |")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
