"""Redis's work per gateway call, on one Redis and on a three-master cluster started on loopback.

For JSON and streamed chat calls with limits on the key and on the tenant (bench.run's data), a
gateway (one worker) against a Redis of this run's own: Redis commands per request by name
(INFO commandstats, reset before each round) and Redis CPU per request (used_cpu_sys +
used_cpu_user deltas, summed over the masters), with the background work of the same seconds
(metrics pushes, heartbeats, the drain) included, as in production. From it: the calls per second
one Redis core carries, in situ. On one Redis also: where its CPU goes per call (a round with every
command timed by SLOWLOG, the scripts, in-flight writes, drain, background, and the network I/O and event
loop left of used_cpu), and the same calls replayed at saturation (MONITOR records the commands of 20
real calls; pipelined clients replay them over 64 tenants with a drainer; calls per Redis CPU second), on
one Redis and on the cluster's masters (each sent the shard tags its slots hold, the CPU of the three summed).
docs/scaling.md says what each figure means. With --long, also the 600-per-minute tenant limit over
whole minute windows on four workers of the cluster.

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


def measure(redis_url: str, env: dict, key: str, requests: int, connections: int, workers: int = 1,
            breakdown_requests: int = 0) -> dict:
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
            if breakdown_requests and len(nodes) == 1:
                results[name]["breakdown"] = breakdown(url, key, nodes[0], body, breakdown_requests, connections)
                results[name]["recorded"] = record(url, key, nodes[0], body, 20)
        return results
    finally:
        gateway.terminate()
        gateway.wait()


# --- where Redis's CPU goes: SLOWLOG at threshold 0 times every top-level command -------------------

def classify(args: list[bytes]) -> str:
    """The part of a call (or the background work) a top-level command belongs to."""
    name = args[0].decode().lower()
    script = name in ("evalsha", "eval")
    key = args[3] if script and len(args) > 3 else args[1] if not script and len(args) > 1 else b""
    if name in ("evalsha", "eval"):
        keys = int(args[2])
        if key.endswith(b":resv:exp"):
            return "admission script" if keys == 1 else "settle script"
        if key.endswith(b":workers"):
            return "heartbeat/reap scripts"
        return "other scripts"
    if b":inflight:" in key:
        return "in-flight writes (HSET/HDEL)"
    if name == "xadd":
        return "usage XADD"
    if name in ("xreadgroup", "xautoclaim", "xack", "xdel", "xlen", "xrange", "xgroup", "xtrim"):
        return "drain and buffer gauges (XLEN/XREADGROUP/XAUTOCLAIM/XACK/XDEL)"
    if b"metric" in key:
        return "metrics pushes"
    return "other background (" + name + ")"


def slowlog(client: redis.Redis) -> list[tuple[int, list[bytes], bytes]]:
    """(microseconds, args, client) of every command in the slow log, oldest first; a command a script
    called has the client "?:0" and comes before the script's own entry."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command("SLOWLOG", "GET", "-1")
        entries = conn.read_response()
    finally:
        client.connection_pool.release(conn)
    return [(int(e[2]), list(e[3]), e[4]) for e in reversed(entries)]


def breakdown(url: str, key: str, node: redis.Redis, body: dict, requests: int, connections: int) -> dict:
    """Redis CPU per call by part: each top-level command's execution time (SLOWLOG at threshold 0; a
    script's time includes the commands it calls, shown beside it), and what is left of used_cpu beside
    them (reading requests, writing replies, the event loop's wake-ups). A round of its own: the slow
    log's own work (an entry per command, those inside scripts too) is in its figures."""
    node.config_set("slowlog-max-len", 1_000_000)
    node.config_set("slowlog-log-slower-than", 0)
    node.slowlog_reset()
    before = cpu([node])
    try:
        asyncio.run(load(url, key, body, requests, connections))
        time.sleep(1.5)
        used = cpu([node]) - before
        entries = slowlog(node)
    finally:
        node.config_set("slowlog-log-slower-than", 10000)
        node.slowlog_reset()
    parts: Counter = Counter()
    counts: Counter = Counter()
    inner: Counter = Counter()
    pending: list[tuple[int, list[bytes]]] = []
    for usec, args, client in entries:
        if client == b"?:0":
            pending.append((usec, args))
            continue
        if args[0].lower() in (b"slowlog", b"info", b"config"):
            continue
        part = classify(args)
        parts[part] += usec
        counts[part] += 1
        if pending:
            for inner_usec, inner_args in pending:
                inner[(part, classify(inner_args) if classify(inner_args).startswith(("usage", "in-flight"))
                       else "its limit commands")] += inner_usec
            pending = []
    total = used * 1e6 / requests
    rows = {}
    for part, usec in parts.most_common():
        rows[part] = (usec / requests, counts[part] / requests)
        for (outer, what), inner_usec in sorted(inner.items()):
            if outer == part:
                rows[f"  of which commands inside: {what}"] = (inner_usec / requests, 0)
    rows["network I/O, event loop (used_cpu minus the commands)"] = (total - sum(parts.values()) / requests, 0)
    return {"total_us": total, "rows": rows}


# --- saturation: the recorded commands of real calls, replayed from a fast pipelined client ---------

def _unrepr(text: bytes) -> list[bytes]:
    """The arguments of one MONITOR line's command part (sdscatrepr: "..." with C escapes)."""
    out, i, n = [], 0, len(text)
    escapes = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b",
               ord('"'): b'"', ord("\\"): b"\\"}
    while i < n:
        if text[i] != ord('"'):
            i += 1
            continue
        i += 1
        arg = bytearray()
        while text[i] != ord('"'):
            if text[i] == ord("\\"):
                c = text[i + 1]
                if c == ord("x"):
                    arg.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                arg += escapes.get(c, bytes([c]))
                i += 2
                continue
            arg.append(text[i])
            i += 1
        out.append(bytes(arg))
        i += 1
    return out


def record(url: str, key: str, node: redis.Redis, body: dict, calls: int) -> list[list[list[bytes]]]:
    """The top-level commands of `calls` real gateway calls made one after the other (MONITOR): per
    call, its admission script, in-flight writes and settle script, in order."""
    import threading

    conn = node.connection_pool.get_connection()
    conn.send_command("MONITOR")
    conn.read_response()
    lines: list[bytes] = []
    done = threading.Event()

    def read():
        while not done.is_set():
            try:
                lines.append(conn.read_response())
            except Exception:  # noqa: BLE001 (the connection closed at the end)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    asyncio.run(load(url, key, body, calls, 1))
    time.sleep(0.5)
    done.set()
    conn.disconnect()
    reader.join(2)
    per_call: list[list[list[bytes]]] = []
    for line in lines:
        if not isinstance(line, bytes) or b" [" not in line or b" lua] " in line:
            continue
        args = _unrepr(line.split(b"] ", 1)[1])
        part = classify(args)
        if part == "admission script":
            per_call.append([args])
        elif per_call and part in ("settle script", "in-flight writes (HSET/HDEL)", "usage XADD"):
            per_call[-1].append(args)
    return [c for c in per_call if any(classify(a) == "settle script" for a in c)]


def _resp(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class Replayed:
    """One recorded call turned into templates for tenant j: its tag and limit ids changed."""

    def __init__(self, call: list[list[bytes]], tag: bytes, new_tag: bytes, tenant: int) -> None:
        def moved(args):
            return [a.replace(tag, new_tag) for a in args]
        admit = moved(call[0])
        rules = int(admit[7])  # EVALSHA sha 1 key, then ARGV[4] (args[7]) is the rule count
        self.periods = []
        for r in range(rules):
            b = 10 + r * 12
            admit[b] = b"%d" % (int(admit[b]) * 1000 + tenant)
            if int(admit[b + 4]) or int(admit[b + 5]):
                self.periods.append(b"%slim:%s:p:%s" % (admit[3][:-8], admit[b], admit[b + 6]))
        self.admit = admit
        self.entry = 10 + rules * 12  # the in-flight entry's hash, request id, event
        self.rest = [moved(a) for a in call[1:]]

    def admit_bytes(self, now: int, rid: bytes) -> bytes:
        args = list(self.admit)
        args[4], args[5] = b"%d" % now, rid
        if len(args) > self.entry + 1 and args[self.entry]:
            args[self.entry + 1] = rid
        return _resp(args)

    def rest_bytes(self, held: bytes, rid: bytes) -> list[bytes]:
        out = []
        for args in self.rest:
            args = list(args)
            if args[0].lower() == b"evalsha":  # settle: the reservation the admission returned
                args[5] = held
                if len(args) > 10 and args[9]:  # ARGV[5], ARGV[6]: the in-flight entry deleted
                    args[10] = rid
            elif b":inflight:" in args[1]:
                args[2] = rid
            out.append(_resp(args))
        return out


async def _replay_connection(port: int, calls: list, depth: int, until: float, counts: list) -> None:
    import hiredis

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    parser = hiredis.Reader()

    async def replies(n):
        got = []
        while len(got) < n:
            item = parser.gets()
            if item is False:
                parser.feed(await reader.read(1 << 16))
                continue
            got.append(item)
        return got

    i = 0
    while time.monotonic() < until:
        now = int(time.time() * 1000)
        batch = [calls[(i + k) % len(calls)] for k in range(depth)]
        rids = [os.urandom(16).hex().encode() for _ in batch]
        i += depth
        writer.write(b"".join(c.admit_bytes(now, rid) for c, rid in zip(batch, rids, strict=True)))
        admitted = await replies(depth)
        out, expected = [], 0
        for c, rid, reply in zip(batch, rids, admitted, strict=True):
            if isinstance(reply, list) and reply[0] == 1:
                rest = c.rest_bytes(reply[11], rid)
                out += rest
                expected += len(rest)
            else:
                counts[1] += 1
        writer.write(b"".join(out))
        await replies(expected)
        counts[0] += len(batch)
    writer.close()


def _replay_process(calls_by_port, connections, depth, seconds, queue) -> None:
    async def run():
        counts = [0, 0]
        until = time.monotonic() + seconds
        await asyncio.gather(*(_replay_connection(port, calls, depth, until, counts)
                               for port, calls in calls_by_port.items() for _ in range(connections)))
        return counts
    queue.put(asyncio.run(run()))


def _drain_process(port: int, streams: list[bytes], until: float, queue) -> None:
    """The drain's commands as usage.recorder sends them, on every stream, batches of up to 500."""
    client = redis.Redis(port=port)
    for stream in streams:
        try:
            client.xgroup_create(stream, "drain", id="0", mkstream=True)
        except redis.ResponseError:
            pass
    drained = 0
    while time.monotonic() < until:
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
        busy = [s for s, n in zip(streams, pipe.execute(), strict=True) if n]
        for stream in busy:
            client.xreadgroup("drain", "bench", {stream: "0"}, count=500)
            _, entries, _ = client.xautoclaim(stream, "drain", "bench", 60000, "0-0", count=500)
            fresh = client.xreadgroup("drain", "bench", {stream: ">"}, count=500)
            for _, got in fresh or ():
                entries.extend(got)
            if entries:
                ids = [entry_id for entry_id, _ in entries]
                client.xack(stream, "drain", *ids)
                client.xdel(stream, *ids)
                drained += len(ids)
        if not busy:
            time.sleep(0.05)
    queue.put(drained)


def saturate(nodes: list[redis.Redis], recorded: list, seconds: float, processes: int, connections: int,
             depth: int, tenants: int = 64, tags: int = 16) -> dict:
    """Replay the recorded calls from `processes` client processes of `connections` pipelined connections
    each (`depth` calls a pipeline) to every master, over `tenants` tenants on `tags` shards, with a drainer
    per master: Redis's CPU per call (summed over the masters) and the calls per second of a full core. On
    a cluster, each master is sent the calls of the shard tags its slots hold."""
    import multiprocessing
    import re

    from usage import limit_scripts

    def port_of(node):
        return node.connection_pool.connection_kwargs["port"]

    owner = {}
    for t in range(tags):
        key = b"gw:{r%d}:resv:exp" % t
        if len(nodes) == 1:
            owner[t] = nodes[0]
            continue
        slot = nodes[0].execute_command("CLUSTER KEYSLOT", key)
        for first, last, (_, port, *_), *_ in nodes[0].execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                owner[t] = next(n for n in nodes if port_of(n) == port)
    tag = re.search(rb"\{[^}]*\}", recorded[0][0][3]).group(0)
    calls_by_port: dict[int, list] = {}
    for j in range(tenants):
        node = owner[j % tags]
        for call in recorded:
            replayed = Replayed(call, tag, b"{r%d}" % (j % tags), j)
            calls_by_port.setdefault(port_of(node), []).append(replayed)
            for period in replayed.periods:
                node.hset(period, mapping={"tok": 0, "cost": 0, "tokres": 0, "costres": 0})
                node.expire(period, 3600)
    for node in nodes:  # the recorded calls' scripts (by SHA) on every master
        for script in (limit_scripts.ADMIT, limit_scripts.SETTLE):
            node.script_load(script)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    for node in nodes:
        node.config_resetstat()
    before, started = cpu(nodes), time.monotonic()
    drainers = [ctx.Process(target=_drain_process, args=(
        port_of(node), sorted({b"gw:{r%d}:usage" % t for t in range(tags) if owner[t] is node}),
        started + seconds + 1.0, queue)) for node in nodes]
    for d in drainers:
        d.start()
    # The same connections in all, split over the masters.
    per_master = -(-connections // len(nodes))
    workers = [ctx.Process(target=_replay_process, args=(calls_by_port, per_master, depth, seconds, queue))
               for _ in range(processes)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in range(processes + len(drainers))]
    for w in workers + drainers:
        w.join()
    wall, used = time.monotonic() - started, cpu(nodes) - before
    made = sum(r[0] for r in results if isinstance(r, list))
    refused = sum(r[1] for r in results if isinstance(r, list))
    counts = commands(nodes)
    return {"calls": made, "refused": refused, "wall": wall, "cpu": used, "busy": used / wall,
            "us_per_call": used * 1e6 / made, "per_core": made / used, "rate": made / wall,
            "commands": {k: round(v / made, 2) for k, v in counts.most_common() if k not in ("config|resetstat", "info")}}


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
    parser.add_argument("--no-cluster", action="store_true", help="one Redis only")
    parser.add_argument("--breakdown-requests", type=int, default=1000,
                        help="calls of the round that times every command (SLOWLOG), one Redis; 0: none")
    parser.add_argument("--saturate", type=float, default=10, metavar="SECONDS",
                        help="seconds of each replay at saturation, one Redis; 0: none")
    parser.add_argument("--replay-processes", type=int, default=2)
    parser.add_argument("--replay-connections", type=int, default=8, help="per replay process")
    parser.add_argument("--replay-depth", type=int, default=16, help="calls per pipeline")
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
        targets = [("one Redis", f"redis://127.0.0.1:{single.port}/0")]
        if not opts.no_cluster:
            targets.append(("3-master cluster", cluster.url))
        for name, url in targets:
            rows[name] = measure(url, env, key, opts.requests, opts.connections,
                                 breakdown_requests=opts.breakdown_requests if name == "one Redis" else 0)
            rows[name]["idle"] = idle_cpu(url, env)
        saturated: dict[str, dict] = {name: {} for name in rows}
        if opts.saturate:
            # The calls recorded on one Redis, replayed on it and on the cluster's masters.
            for name, url in targets:
                nodes = masters(url)
                for call in BODIES:
                    if rows["one Redis"][call].get("recorded"):
                        for node in nodes:
                            node.flushall()
                        saturated[name][call] = saturate(nodes, rows["one Redis"][call]["recorded"], opts.saturate,
                                                         opts.replay_processes, opts.replay_connections,
                                                         opts.replay_depth)
        print(f"\n{opts.requests} requests per round, {opts.connections} connections, one gateway worker; "
              "limits on the key and the tenant\n")
        print("| Redis | call | Redis commands per call | Redis CPU per call, in situ | calls/s per Redis core, "
              "in situ | Redis CPU per call, replay at saturation | calls/s per Redis core, replay |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name, result in rows.items():
            for call in BODIES:
                r, sat = result[call], saturated[name].get(call)
                replay = f"{sat['us_per_call']:.0f} us | {sat['per_core']:,.0f}" if sat else "- | -"
                print(f"| {name} | {call} | {r['per_request']:.2f} | {r['cpu_ms'] * 1000:.0f} us | "
                      f"{1000 / r['cpu_ms']:,.0f} | {replay} |")
        for name, by_call in saturated.items():
            for call, sat in by_call.items():
                print(f"\n{name}, replay of {call} ({len(rows['one Redis'][call]['recorded'])} recorded calls, 64 "
                      f"tenants on 16 shards, {opts.replay_processes}x{opts.replay_connections} connections split over "
                      f"the masters, {opts.replay_depth} calls a pipeline, a drainer per master): {sat['calls']:,} calls "
                      f"in {sat['wall']:.1f} s ({sat['rate']:,.0f}/s), Redis {sat['busy']:.0%} busy (the masters' "
                      f"CPU summed), {sat['refused']} refused; commands per call {sat['commands']}")
        for call in BODIES:
            b = rows["one Redis"][call].get("breakdown")
            if not b:
                continue
            print(f"\nwhere one Redis's CPU goes, {call}: {b['total_us']:.0f} us per call "
                  f"({opts.breakdown_requests} calls, every command timed by SLOWLOG)")
            print("| part | us per call | commands per call |")
            print("| --- | ---: | ---: |")
            for part, (usec, n) in b["rows"].items():
                print(f"| {part} | {usec:.1f} | {n:.2f} |")
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
