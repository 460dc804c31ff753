"""Redis's work per gateway call, on one Redis and on a three-master cluster started on loopback.

For JSON and streamed chat calls with limits on the key and on the tenant (bench.run's data), a
gateway (one worker) against a Redis of this run's own: Redis commands per request by name
(INFO commandstats, reset before each round) and Redis CPU per request (used_cpu_sys +
used_cpu_user deltas, summed over the masters), with the background work of the same seconds
(metrics pushes, heartbeats, the drain) included, as in production. From it: the calls per second
one Redis core carries. With --long, also the 600-per-minute tenant limit over whole minute windows
on four workers of the cluster (docs/scaling.md).

Run it alone: `flock /tmp/bench.lock python3 bench/redis_load.py [--requests 3000] [--long]`.
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import free_port, manage, prepare_database, start, wait_http  # noqa: E402
from tests.redis_servers import Node, OwnCluster, free_ports  # noqa: E402

BODIES = {
    "json": {"model": "bench-chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16},
    "stream": {"model": "bench-chat", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16,
               "stream": True, "stream_options": {"include_usage": True}},
}


def masters(url: str) -> list[redis.Redis]:
    if url.startswith("redis+cluster://"):
        return [redis.Redis(host=h, port=int(p)) for h, p in
                (node.split(":") for node in url.split("://", 1)[1].split(","))]
    return [redis.Redis.from_url(url)]


def cpu(clients: list[redis.Redis]) -> float:
    return sum(float(c.info("cpu")["used_cpu_sys"]) + float(c.info("cpu")["used_cpu_user"]) for c in clients)


def commands(clients: list[redis.Redis]) -> Counter:
    total: Counter = Counter()
    for client in clients:
        for name, stats in client.info("commandstats").items():
            total[name.removeprefix("cmdstat_")] += int(stats["calls"])
    return total


async def load(url: str, key: str, body: dict, requests: int, connections: int) -> Counter:
    limit = asyncio.Semaphore(connections)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=connections)) as client:
        async def one():
            async with limit:
                response = await client.post(url + "/v1/chat/completions", json=body,
                                             headers={"authorization": f"Bearer {key}"})
                return response.status_code
        return Counter(await asyncio.gather(*(one() for _ in range(requests))))


def measure(redis_url: str, env: dict, key: str, requests: int, connections: int, workers: int = 1) -> dict:
    port = free_port()
    gateway = start([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", str(workers),
                     "--log-level", "warning"], {**env, "REDIS_URL": redis_url})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", timeout=60)
        nodes = masters(redis_url)
        results = {}
        for name, body in BODIES.items():
            asyncio.run(load(url, key, body, 200, connections))  # warm: caches, scripts, connections
            time.sleep(1.5)  # the warm-up's events drained
            for client in nodes:
                client.config_resetstat()
            before, started = cpu(nodes), time.monotonic()
            statuses = asyncio.run(load(url, key, body, requests, connections))
            time.sleep(1.5)  # this round's events drained (their commands and CPU are part of it)
            seconds = time.monotonic() - started
            used, counts = cpu(nodes) - before, commands(nodes)
            counts.pop("config|resetstat", None)
            counts.pop("info", None)
            results[name] = {"statuses": dict(statuses), "seconds": seconds, "cpu_ms": used * 1000 / requests,
                             "commands": {k: round(v / requests, 3) for k, v in counts.most_common()},
                             "per_request": sum(counts.values()) / requests}
        return results
    finally:
        gateway.terminate()
        gateway.wait()


def idle_cpu(redis_url: str, env: dict, seconds: float = 10) -> float:
    """Redis CPU seconds per second of one idle gateway worker (its beats, pushes, drain polls)."""
    port = free_port()
    gateway = start([sys.executable, "manage.py", "serve", "--port", str(port), "--log-level", "warning"],
                    {**env, "REDIS_URL": redis_url})
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        time.sleep(2)
        nodes = masters(redis_url)
        before = cpu(nodes)
        time.sleep(seconds)
        return (cpu(nodes) - before) / seconds
    finally:
        gateway.terminate()
        gateway.wait()


def minute_windows(cluster_url: str, env: dict, minutes: int) -> None:
    """Four workers, a 600-per-minute tenant limit, callers asking for about twice as much for `minutes`
    minutes: the admitted calls in every sliding 60 s window, and the share of the allowance used."""
    manage(env, "shell", "-c", (
        "from usage.models import Limit; from tenants.models import Tenant; "
        "Limit.objects.filter(api_key=None).update(requests_per_minute=600)"))
    key = manage(env, "create_api_key", "--tenant", "bench", "--name", "minutes").strip().splitlines()[-1]
    port = free_port()
    gateway = start([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "4",
                     "--log-level", "warning"], {**env, "REDIS_URL": cluster_url, "GATEWAY_PROCESSES": "4"})
    url = f"http://127.0.0.1:{port}"
    admitted: list[float] = []

    async def caller(client, until):
        while time.monotonic() < until:
            response = await client.post(url + "/v1/chat/completions", json=BODIES["json"],
                                         headers={"authorization": f"Bearer {key}"})
            if response.status_code == 200:
                admitted.append(time.monotonic())
            await asyncio.sleep(0.05)

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            until = time.monotonic() + minutes * 60
            await asyncio.gather(*(caller(client, until) for _ in range(2)))  # about twice the allowance

    try:
        wait_http(url + "/healthz", timeout=60)
        started = time.monotonic()
        asyncio.run(run())
        worst = max(sum(1 for t in admitted if s <= t < s + 60) for s in
                    [started + i * 0.5 for i in range(int((minutes * 60 - 60) / 0.5) + 1)])
        whole = [sum(1 for t in admitted if started + 60 * m <= t < started + 60 * (m + 1)) for m in range(minutes)]
        print(f"600/min tenant limit, 4 workers, cluster, {minutes} min: most admitted in any 60 s window {worst}; "
              f"per minute {whole}; {min(whole) / 600:.1%} of the allowance at least")
    finally:
        gateway.terminate()
        gateway.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--long", type=int, default=0, metavar="MINUTES", help="also the minute-window run")
    parser.add_argument("--long-only", action="store_true", help="only the minute-window run")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    env = {**os.environ, "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gw_bench_redis")}
    mock_port = free_port()
    mock = start([sys.executable, "manage.py", "mock_upstream", "--port", str(mock_port)], env)
    single = Node(free_ports(1)[0], tmp / "single", "--appendfsync", "everysec")
    single.start()
    cluster = OwnCluster(tmp / "cluster")
    env["CELERY_BROKER_URL"] = f"redis://127.0.0.1:{single.port}/1"
    try:
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        key = prepare_database({**env, "REDIS_URL": ""}, f"http://127.0.0.1:{mock_port}/v1", with_limits=True)
        if opts.long_only:
            minute_windows(cluster.url, env, opts.long or 2)
            return
        rows = {}
        for name, url in (("one Redis", f"redis://127.0.0.1:{single.port}/0"), ("3-master cluster", cluster.url)):
            rows[name] = measure(url, env, key, opts.requests, opts.connections)
            rows[name]["idle"] = idle_cpu(url, env)
        print(f"\n{opts.requests} requests per round, {opts.connections} connections, one gateway worker; "
              "limits on the key and the tenant\n")
        print("| Redis | call | Redis commands per call | Redis CPU per call | calls/s per Redis core |")
        print("| --- | --- | ---: | ---: | ---: |")
        for name, result in rows.items():
            for call in BODIES:
                r = result[call]
                print(f"| {name} | {call} | {r['per_request']:.2f} | {r['cpu_ms'] * 1000:.0f} us | "
                      f"{1000 / r['cpu_ms']:,.0f} |")
        for name, result in rows.items():
            print(f"\n{name}: idle worker costs Redis {result['idle'] * 1000:.2f} ms CPU per second")
            for call in BODIES:
                print(f"  {call}: {result[call]['statuses']} in {result[call]['seconds']:.1f} s; "
                      f"commands per call {result[call]['commands']}")
        if opts.long:
            minute_windows(cluster.url, env, opts.long)
    finally:
        mock.terminate()
        single.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
