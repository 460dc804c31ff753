#!/usr/bin/env python3
"""Load: N concurrent streams for a while, none dropped, every one recorded.

    python3 bench/soak.py [--streams 200] [--seconds 120] [--workers 2]

Starts the mock upstream and the gateway in production mode (PostgreSQL
database `<name>_bench`, Redis db 14 or BENCH_REDIS_URL, limits on the key and
the tenant), then keeps `--streams` streams open at all times for `--seconds`:
each stream is 20 chunks 100 ms apart (about 2 s), and a new one starts as
soon as one ends. Every stream must end with `[DONE]` and no error event; at
the end the usage records in PostgreSQL must match the streams served,
token for token. Prints one summary line and exits non-zero on any drop.
"""

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import ROOT, free_port, prepare_database, start, wait_http  # noqa: E402

CHUNKS, DELAY_MS = 20, 100


async def soak(url: str, key: str, streams: int, seconds: float) -> tuple[Counter, int, list[float]]:
    import aiohttp

    outcomes: Counter = Counter()
    ttfts: list[float] = []
    deadline = time.monotonic() + seconds
    body = {"model": "bench-chat", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Soak [[mock chunks={CHUNKS} chunk_delay_ms={DELAY_MS}]]"}]}

    async def one_after_another(session):
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with session.post(url + "/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {key}"}) as response:
                    if response.status != 200:
                        outcomes[f"HTTP {response.status}"] += 1
                        continue
                    last, first, chunks = b"", None, 0
                    async for line in response.content:
                        if not line.startswith(b"data:"):
                            continue
                        first = first or time.monotonic()
                        if b'"error"' in line:
                            last = b"error"
                            break
                        chunks += 1
                        last = line.strip()
                    outcome = "ok" if last == b"data: [DONE]" else ("error event" if last == b"error" else "cut")
                    outcomes[outcome] += 1
                    if first:
                        ttfts.append((first - started) * 1000)
            except (TimeoutError, aiohttp.ClientError) as exc:
                outcomes[type(exc).__name__] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(one_after_another(session) for _ in range(streams)))
    return outcomes, sum(outcomes.values()), ttfts


def recorded(env: dict, since: float) -> tuple[int, int]:
    """(records, completion tokens) the gateway wrote since `since`."""
    import psycopg

    url = env["DATABASE_URL"].replace("postgres://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*), coalesce(sum(completion_tokens), 0) FROM usage_usagerecord "
                           "WHERE streamed AND created_at >= to_timestamp(%s)", [since]).fetchone()
    return row[0], row[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    opts = parser.parse_args()

    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    env = {**os.environ, "DATABASE_URL": base + "_bench",
           "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
           "GATEWAY_DATA_DIR": str(tmp), "LOG_LEVEL": "WARNING", "DEBUG": "false", "LOG_FORMAT": "text"}
    mock_port, gw_port = free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    procs = [start([sys.executable, "-m", "providers.mock_upstream", "--port", str(mock_port)], env)]
    try:
        wait_http(mock_url + "/models")
        key = prepare_database(env, mock_url, with_limits=True)
        procs.append(start([sys.executable, "manage.py", "serve", "--port", str(gw_port), "--workers",
                            str(opts.workers), "--log-level", "warning"], env))
        wait_http(f"http://127.0.0.1:{gw_port}/v1/models")
        since = time.time()
        started = time.monotonic()
        outcomes, total, ttfts = asyncio.run(soak(f"http://127.0.0.1:{gw_port}", key, opts.streams, opts.seconds))
        elapsed = time.monotonic() - started
        time.sleep(3)  # the last usage events reach PostgreSQL
        records, tokens = recorded(env, since)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    ttfts.sort()
    p50 = ttfts[len(ttfts) // 2] if ttfts else float("nan")
    p99 = ttfts[int(len(ttfts) * 0.99)] if ttfts else float("nan")
    dropped = total - outcomes["ok"]
    print(f"{opts.streams} concurrent streams for {elapsed:.0f} s on {opts.workers} worker(s): {total} streams, "
          f"{outcomes['ok']} completed, {dropped} dropped {dict(outcomes - Counter(ok=outcomes['ok'])) or ''}; "
          f"time to first token p50 {p50:.0f} ms, p99 {p99:.0f} ms; usage records {records} with "
          f"{tokens} completion tokens (expected {outcomes['ok']} and {outcomes['ok'] * CHUNKS})")
    return 0 if dropped == 0 and records == outcomes["ok"] and tokens == outcomes["ok"] * CHUNKS else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
