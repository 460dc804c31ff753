"""Redis CPU of the limit scripts alone: ADMIT and SETTLE of a call with limits on the key and the tenant.

No gateway: a Redis of this run's own (AOF on, as in bench/redis_load.py), 64 tenants on 16 shard tags,
the admissions of `--calls` calls sent `--depth` to a pipeline, then their settlements (each with its usage
event and in-flight entry, as the gateway sends them). Prints Redis CPU per admission, per settlement and
calls per second of a full core. With `--compare DIR`, the scripts of another checkout too, in rounds that
alternate with this one's, on the same Redis (load on the machine changes minute to minute).

    flock /tmp/bench.lock python3 bench/redis_scripts.py [--compare /path/to/main] [--rounds 3]
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.redis_servers import Node, free_ports  # noqa: E402

TENANTS, TAGS = 64, 16
EVENT = (b'{"request_id":"0123456789abcdef0123456789abcdef","tenant_id":1,"api_key_id":1,"public_model":'
         b'"bench-chat","upstream_model":"mock-gpt","provider":"bench-mock","status":200,"prompt_tokens":9,'
         b'"completion_tokens":16,"cost_usd":"0.0000110","latency_ms":3,"ts":1796347722.1,"stream":false}')
PERIOD = (1796342400000, 1799020800000)


def scripts_of(root: Path):
    spec = importlib.util.spec_from_file_location(f"limit_scripts_{abs(hash(root))}", root / "usage/limit_scripts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def one_round(client: redis.Redis, module, calls: int, depth: int) -> tuple[float, float]:
    client.flushall()
    for t in range(TENANTS):
        client.hset(f"gw:{{r{t % TAGS}}}:lim:{t * 1000 + 1}:p:{PERIOD[0]}",
                    mapping={"tok": 0, "cost": 0, "tokres": 0, "costres": 0})
    admit, settle = client.script_load(module.ADMIT), client.script_load(module.SETTLE)
    held = []
    before = cpu(client)
    for i in range(0, calls, depth):
        now = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        batch = []
        for k in range(depth):
            t, rid = (i + k) % TENANTS, os.urandom(16).hex()
            tag = f"{{r{t % TAGS}}}"
            # The bench's limits (bench/run.py): on the tenant, requests and a monthly budget; on the key,
            # requests and tokens. Then the in-flight entry.
            args = [now, rid, 600000, 2, 300000, 1,
                    t * 1000 + 1, 10**7, 0, 0, 0, 10**12, *PERIOD, 26, 40, 4096, 3000,
                    t * 1000 + 2, 10**7, 10**9, 0, 0, 0, 0, 0, 26, 40, 4096, 3000,
                    f"gw:{tag}:inflight:w1", rid, EVENT]
            pipe.evalsha(admit, 1, f"gw:{tag}:resv:exp", *args)
            batch.append((tag, rid))
        for (tag, rid), reply in zip(batch, pipe.execute(), strict=True):
            assert reply[0] == 1, reply
            held.append((tag, rid, reply[11]))
    admitted = cpu(client)
    for i in range(0, calls, depth):
        pipe = client.pipeline(transaction=False)
        for tag, rid, reservation in held[i:i + depth]:
            pipe.evalsha(settle, 2, f"gw:{tag}:resv:exp", f"gw:{tag}:usage", reservation, 25, 41, EVENT,
                         f"gw:{tag}:inflight:w1", rid)
        pipe.execute()
    settled = cpu(client)
    return (admitted - before) * 1e6 / calls, (settled - admitted) * 1e6 / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--depth", type=int, default=32, help="calls per pipeline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="another checkout whose scripts to measure in turn")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scripts-"))
    node = Node(free_ports(1)[0], tmp, "--appendfsync", "everysec")
    node.start()
    checkouts = {"this checkout": Path(__file__).resolve().parent.parent}
    if opts.compare:
        checkouts["--compare"] = opts.compare.resolve()
    modules = {name: scripts_of(root) for name, root in checkouts.items()}
    results: dict[str, list] = {name: [] for name in modules}
    try:
        client = redis.Redis(port=node.port)
        for _ in range(opts.rounds):
            for name, module in modules.items():
                results[name].append(one_round(client, module, opts.calls, opts.depth))
    finally:
        node.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{opts.calls} calls a round, {opts.depth} a pipeline, {TENANTS} tenants; Redis CPU per call "
          f"(median of {opts.rounds} rounds, each round's figures in brackets)\n")
    print("| scripts | admission | settlement | both | calls/s per Redis core |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        a = sorted(r[0] for r in rows)[len(rows) // 2]
        s = sorted(r[1] for r in rows)[len(rows) // 2]
        each = ", ".join(f"{x:.0f}+{y:.0f}" for x, y in rows)
        print(f"| {name} ({checkouts[name]}) | {a:.1f} us | {s:.1f} us | {a + s:.1f} us [{each}] | {1e6 / (a + s):,.0f} |")


if __name__ == "__main__":
    main()
