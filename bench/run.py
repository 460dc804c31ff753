#!/usr/bin/env python3
"""The benchmark: the gateway against a bare Django relay and the mock upstream itself.

    python3 bench/run.py [--duration 10] [--connections 16] [--workers 1] [--rounds 3] [--smoke] [--drf]
                         [--compare DIR] [--scenario NAME ...]

Starts the mock upstream, the gateway in production mode (PostgreSQL and Redis
from DATABASE_URL / REDIS_URL, default loopback; a database `<name>_bench`
beside DATABASE_URL's, recreated each run)
with the full path on (key auth, limits on the key and the tenant, routing,
usage recording; `--no-limits` leaves the limits out), and the floor (a
bare async Django view relaying through the same client), then loads each with
wrk for JSON chat, streamed chat (21 events) and embeddings. It prints a
Markdown table: requests per second, CPU time of the measured server per
request, and latency p50/p99 at N connections and at one connection (the
median of `--rounds` rounds that take the servers in turn).

`--compare DIR` also runs the gateway of another checkout (a git worktree of an
earlier commit, say: `git worktree add /tmp/before <commit>`) with its own database
`<name>_bench_compare`, measured in the same rounds, and prints this checkout's
CPU per request and added latency as ratios of that one's.

`--drf` also runs a second gateway whose /v1 endpoints are async DRF views
(bench/drf_front.py, served with GATEWAY_API_URLCONF=bench.drf_front), measured
in the same rounds, and prints what DRF adds to each call beside the plain views.
"""

import argparse
import asyncio
import collections
import functools
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

try:
    from bench import slow_mock
except ImportError:  # run as a script: bench/ is the first entry of sys.path, not the checkout
    import slow_mock

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
DRF = "gateway, DRF views"
COMPARED = "gateway, --compare checkout"
# The gateway under each candidate ASGI server (docs/benchmarks.md, "Choosing the ASGI server"):
# "gateway" is what `manage.py serve` runs (granian); the others serve the same application, measured
# in the same rounds on the scenarios that decide the choice.
CANDIDATES = {
    "gateway under uvicorn": ["manage.py", "serve", "--server", "uvicorn", "--port", "{port}"],
    "gateway under hypercorn": ["-m", "hypercorn", "gateway_project.asgi:application", "--bind",
                                "127.0.0.1:{port}", "--worker-class", "uvloop", "--log-level", "warning"],
}
CANDIDATE_SCENARIOS = ("chat", "stream")

SCENARIOS = {
    "chat": ("/v1/chat/completions", '{"model": "bench-chat", "messages": [{"role": "user", "content": "Hello there"}]}'),
    "stream": ("/v1/chat/completions", '{"model": "bench-chat", "stream": true, '
               '"messages": [{"role": "user", "content": "Hello there"}]}'),
    "embeddings": ("/v1/embeddings", '{"model": "bench-embed", "input": "Hello there", "dimensions": 256}'),
    # The same JSON chat through a route of three targets (three providers, priority strategy).
    "chat, 3-target route": ("/v1/chat/completions", '{"model": "bench-route", "messages": '
                             '[{"role": "user", "content": "Hello there"}]}'),
    # The same chat as a Responses API call (stored, as by default), served through the chat form.
    "responses": ("/v1/responses", '{"model": "bench-chat", "input": "Hello there"}'),
    "responses, stream": ("/v1/responses", '{"model": "bench-chat", "input": "Hello there", "stream": true}'),
    # Anthropic's Messages API (as Claude Code calls it) on an Anthropic deployment: relayed as sent.
    "messages": ("/v1/messages", '{"model": "bench-claude", "max_tokens": 1024, '
                 '"messages": [{"role": "user", "content": "Hello there"}]}'),
    "messages, stream": ("/v1/messages", '{"model": "bench-claude", "max_tokens": 1024, "stream": true, '
                         '"messages": [{"role": "user", "content": "Hello there"}]}'),
    # The same on the OpenAI-compatible deployment: translated to chat and back.
    "messages, translated": ("/v1/messages", '{"model": "bench-chat", "max_tokens": 1024, '
                             '"messages": [{"role": "user", "content": "Hello there"}]}'),
    # The same chat on a model whose answers the response cache keeps (routing/cache/): the same
    # question every time (a hit after the first), and a new question every time ({n}: the
    # request's number), a lookup that misses and a store.
    "chat, cache hit": ("/v1/chat/completions", '{"model": "bench-cached", "messages": '
                        '[{"role": "user", "content": "Hello there"}]}'),
    "chat, cache miss": ("/v1/chat/completions", '{"model": "bench-cached", "messages": '
                         '[{"role": "user", "content": "Hello there {n}"}]}'),
    # What a miss is measured against: the same new question every time, on a model no policy caches
    # (a new prompt costs its own token count, and wrk's Lua its own body).
    "chat, new question": ("/v1/chat/completions", '{"model": "bench-chat", "messages": '
                           '[{"role": "user", "content": "Hello there {n}"}]}'),
    "stream, cache hit": ("/v1/chat/completions", '{"model": "bench-cached", "stream": true, "messages": '
                          '[{"role": "user", "content": "Hello there"}]}'),
    # Semantic only, the questions embedded by the tenant's embedding model on the mock (a call of
    # its own, routed, admitted and recorded): the same question (a hit), a new one (a miss).
    "chat, semantic hit": ("/v1/chat/completions", '{"model": "bench-semantic", "messages": '
                           '[{"role": "user", "content": "Hello there"}]}'),
    "chat, semantic miss": ("/v1/chat/completions", '{"model": "bench-semantic", "messages": '
                            '[{"role": "user", "content": "Hello there {n}"}]}'),
}
CACHED = ("chat, cache hit", "chat, cache miss", "stream, cache hit", "chat, semantic hit", "chat, semantic miss")
# A 2,000-character prompt of prose with numbers and dates (bench/guardrails.py's), plain and on a
# model whose guardrail policy runs the PII (input and output, redact), secrets (both, block) and
# blocked-term (input) checks on it; and the plain stream on that model (output checks on every chunk).
PROSE = ("The quarterly report for 2024 shows 14 new customers, 3 closed tickets and revenue of 1,250.00 EUR; "
         "version 2.3.1 shipped on 2024-05-01 to room 101. ")
LONG_PROMPT = (PROSE * 20)[:2000]
SCENARIOS["chat, 2,000 characters"] = ("/v1/chat/completions", json.dumps(
    {"model": "bench-chat", "messages": [{"role": "user", "content": LONG_PROMPT}]}))
SCENARIOS["chat, 2,000 characters, guardrails"] = ("/v1/chat/completions", json.dumps(
    {"model": "bench-guarded", "messages": [{"role": "user", "content": LONG_PROMPT}]}))
SCENARIOS["stream, guardrails"] = ("/v1/chat/completions", '{"model": "bench-guarded", "stream": true, '
                                   '"messages": [{"role": "user", "content": "Hello there"}]}')
# The same stream on a model whose policy has the output checks only (PII redact, secrets block):
# what issue 21's "streamed output checks add at most 10% CPU to a stream" measures, with no
# input check's per-call cost in it (the 2,000-character chat rows measure the input checks).
SCENARIOS["stream, output checks"] = ("/v1/chat/completions", '{"model": "bench-output-checked", "stream": true, '
                                      '"messages": [{"role": "user", "content": "Hello there"}]}')
GUARDED = ("chat, 2,000 characters, guardrails", "stream, guardrails", "stream, output checks")
# Scenarios only the gateway serves (the mock and the floor would answer the same as plain chat).
GATEWAY_ONLY = ("chat, 3-target route", "responses", "responses, stream", "messages", "messages, stream",
                "messages, translated", "chat, new question", *CACHED, *GUARDED)
# Scenarios a --compare checkout from before the Responses API (or today's Messages API, the
# response cache or the guardrails) lacks: measured on it only if its own bench/run.py has them (`knows`).
NEWER = ("responses", "responses, stream", "messages", "messages, stream", "messages, translated", *CACHED, *GUARDED)
# Each scenario of another API beside the chat scenario it is measured against.
AGAINST_CHAT = {"responses": "chat", "responses, stream": "stream", "messages": "chat",
                "messages, stream": "stream", "messages, translated": "chat",
                "chat, 2,000 characters, guardrails": "chat, 2,000 characters", "stream, guardrails": "stream",
                "stream, output checks": "stream"}


def knows(root: Path, scenario: str) -> bool:
    """Whether another checkout's benchmark has `scenario` (one from before it was added has not)."""
    return f'"{scenario}":' in (root / "bench" / "run.py").read_text()


def raise_open_files(wanted: int) -> None:
    """Let this process and the servers it starts hold `wanted` sockets (root may raise the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, hard), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_async(coroutine):
    """Run on uvloop when it is there (the slow streams' 10,000 clients cost the bench less CPU)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (loopback only)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"not up: {url}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children."""
    total = 0.0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def settle(pid: int, timeout: float = 60) -> None:
    """Wait until a process has started up: it spends next to no CPU for half a second."""
    deadline, used = time.monotonic() + timeout, cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - used < 0.02:
            return
        used = now


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print("installing wrk (Debian package)…", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk")


# A prefix unique to each thread of each wrk run (a run's random id, the thread's number), so that
# no request of a warm-up, round or thread repeats another's body.
_NUMBERED = """local run = ""
do
  local f = io.open("/dev/urandom", "rb")
  local bytes = f:read(8)
  f:close()
  for i = 1, #bytes do run = run .. string.format("%02x", bytes:byte(i)) end
end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", run .. "-" .. threads)
end
counter = 0
"""


def wrk_script(tmp: Path, name: str, body: str, key: str | None) -> Path:
    headers = ['wrk.headers["content-type"] = "application/json"']
    if key:
        headers.append(f'wrk.headers["authorization"] = "Bearer {key}"')
    script = tmp / f"{name}.lua"
    text = 'wrk.method = "POST"\n' + "\n".join(headers) + f"\nwrk.body = [[{body}]]\n"
    if "{n}" in body:  # a body of its own for every request, of every thread, of every run of the script
        text += _NUMBERED + ("request = function()\n  counter = counter + 1\n  return wrk.format(nil, nil, nil, "
                             f"string.format([[{body.replace('{n}', '%s')}]], prefix .. '-' .. counter))\nend\n")
    script.write_text(text)
    return script


def parse_wrk(output: str) -> dict:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    bad = int(errors.group(1)) if errors else 0
    if socket_errors:
        bad += sum(int(x) for x in socket_errors.groups())
    return {"rps": rps, "requests": total, "p50": latency("50"), "p99": latency("99"), "errors": bad}


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: float, pid: int,
            behind: "Behind | None" = None) -> dict:
    """One wrk run; with `behind`, also the CPU the run's calls cost after the answer (the usage
    drain and PostgreSQL), taken once the drainer has written them all."""
    threads = 1 if connections == 1 else 2
    before, behind_before = cpu_seconds(pid), behind.cpu() if behind else 0.0
    out = subprocess.run(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    used = cpu_seconds(pid) - before
    result = parse_wrk(out)
    result["cpu_ms"] = used * 1000 / max(result["requests"], 1)
    if behind:
        behind.settle()
        result["behind_ms"] = (behind.cpu() - behind_before) * 1000 / max(result["requests"], 1)
    return result


class Behind:
    """What a call costs after its answer, outside the gateway process: the usage drainer's CPU
    and that of the PostgreSQL backends of the bench database (the drainer's inserts, the
    gateway's own queries), read from /proc (PostgreSQL on this machine)."""

    def __init__(self, env: dict, drainer_pid: int) -> None:
        import psycopg
        import redis

        self.drainer_pid = drainer_pid
        self.database = env["DATABASE_URL"].rsplit("/", 1)[1]
        self.pg = psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True)
        self.redis = redis.Redis.from_url(env["REDIS_URL"])
        self.seen: dict[int, float] = {}  # backend pid -> its CPU when last read (a backend gone keeps it)

    def cpu(self) -> float:
        pids = [row[0] for row in self.pg.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,)).fetchall()]
        for backend in pids:
            try:
                fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.seen[backend] = (int(fields[11]) + int(fields[12])) / TICKS
        return cpu_seconds(self.drainer_pid) + sum(self.seen.values())

    def settle(self, timeout: float = 30) -> None:
        """Wait until the drainer has written every buffered event (then one more of its rounds)."""
        deadline = time.monotonic() + timeout
        streams = [k for pattern in ("gw:*:usage", "gw:*:responses") for k in self.redis.scan_iter(match=pattern)]
        while time.monotonic() < deadline and any(self.redis.xlen(stream) for stream in streams):
            time.sleep(0.1)
        time.sleep(0.6)


def median_run(runs: list[dict]) -> dict:
    """Rounds of one measurement as one: the median of their latencies, the sum of their counts."""
    middle = lambda name: sorted(run[name] for run in runs)[len(runs) // 2]  # noqa: E731
    merged = {"rps": middle("rps"), "p50": middle("p50"), "p99": middle("p99"), "cpu_ms": middle("cpu_ms"),
              "requests": sum(run["requests"] for run in runs), "errors": sum(run["errors"] for run in runs)}
    if all("behind_ms" in run for run in runs):
        # The whole call: the gateway, the drain and the database in the same run, the median of the rounds.
        merged["behind_ms"] = middle("behind_ms")
        merged["whole_ms"] = sorted(run["cpu_ms"] + run["behind_ms"] for run in runs)[len(runs) // 2]
    return merged


def family(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers when there are several)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its live children."""
    total = 0
    for p in family(pid):
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) * 1024 if m else 0
    return total


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else float("nan")


def time_to_first_token(url: str, path: str, body: str, key: str | None, n: int) -> tuple[float, float]:
    """p50 and p99 (ms) from sending a streamed request to its first SSE event, one at a time."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    samples = []
    for i in range(n + 5):
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        first = response.read1(65536)
        while b"data:" not in first:
            first += response.read1(65536)
        elapsed = (time.perf_counter() - started) * 1000
        response.read()
        if i >= 5:  # the first few warm the connection up
            samples.append(elapsed)
    conn.close()
    return percentile(samples, 50), percentile(samples, 99)


class _SlowStream(asyncio.Protocol):
    """One slow stream's client, as cheap as a client can be (10,000 of them share the bench's one
    process with its sampler): the request written once, the answer only scanned for its status,
    an error event and its end (`[DONE]`, then the last chunk of the chunked body)."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request, self.done, self.head, self.tail, self.error = request, done, b"", b"", False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if len(self.head) < 12:
            self.head += data[:12]
        self.error = self.error or b'"error"' in data
        self.tail = (self.tail + data)[-64:]
        if self.tail.endswith(b"\r\n0\r\n\r\n"):
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.done.done():
            return
        if not self.head.startswith(b"HTTP/1.1 200"):
            self.done.set_result(f"HTTP {self.head[9:12].decode(errors='replace') or 'none'}")
        elif self.error:
            self.done.set_result("error event")
        else:
            self.done.set_result("ok" if b"data: [DONE]" in self.tail else "cut")


async def _one_client(wrk: str, url: str, script: Path, seconds: float) -> dict:
    """One connection's latency with wrk (another process: the bench's loop holds the streams)."""
    process = await asyncio.create_subprocess_exec(
        wrk, "-t", "1", "-c", "1", "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(script), url,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = await process.communicate()
    return parse_wrk(out.decode())


async def hold_slow_streams(url: str, key: str, n: int, chunks: int, delay_ms: int, pid: int,
                            probe: tuple | None = None, ramp: float = 0.0) -> dict:
    """Open n streams, each one chunk every delay_ms, the openings spread evenly over `ramp` seconds
    (0: all in one burst); report errors, how many were open at once at most and the memory they
    hold, and, with `probe` (wrk, mock URL, mock script, gateway script), one client's JSON chat
    latency to the mock and through the gateway while they are all open."""
    body = json.dumps({"model": "bench-slow", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content":
                                     f"Hello [[mock chunks={chunks} chunk_delay_ms={delay_ms}]]"}]}).encode()
    host, port = url.removeprefix("http://").split(":")
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {key}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    idle = rss_bytes(pid)
    cpu_before = cpu_seconds(pid)
    peak, opened, done = idle, 0, asyncio.Event()
    open_now, open_most, lag_most = 0, 0, 0.0
    clients_cpu = time.process_time()

    async def sample():
        # Also how late this loop wakes: the clients' own lag, apart from the gateway's.
        nonlocal peak, lag_most
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            due = time.monotonic() + 0.25
            await asyncio.sleep(0.25)
            lag_most = max(lag_most, time.monotonic() - due)

    async def one(i: int) -> str:
        nonlocal opened, open_now, open_most
        if ramp:
            await asyncio.sleep(ramp * i / n)
        outcome = loop.create_future()
        for attempt in range(20):  # a full accept queue refuses a connection now and then: try again
            try:
                transport, _ = await loop.create_connection(lambda: _SlowStream(request, outcome), host, int(port))
                break
            except OSError as exc:
                if attempt == 19:
                    return f"client: {type(exc).__name__}"
                await asyncio.sleep(0.05 * (attempt + 1))
        opened += 1
        open_now += 1
        open_most = max(open_most, open_now)
        try:
            return await outcome
        except asyncio.CancelledError:
            transport.close()  # still open when the run's time was up
            return "unfinished"
        finally:
            open_now -= 1

    async def probe_latency() -> dict:
        # Once every stream is open, a third into their life: the mock alone, then through the gateway.
        while opened < n and not done.is_set():
            await asyncio.sleep(0.1)
        await asyncio.sleep(min(5.0, chunks * delay_ms / 3000))
        wrk, mock_url, mock_script, gateway_script = probe
        seconds = max(1.0, min(5.0, chunks * delay_ms / 6000))
        direct = await _one_client(wrk, mock_url, mock_script, seconds)
        through = await _one_client(wrk, url + "/v1/chat/completions", gateway_script, seconds)
        return {"open": opened, "direct": direct, "through": through}

    started = time.monotonic()
    sampler = asyncio.create_task(sample())
    prober = asyncio.create_task(probe_latency()) if probe else None
    # Streams still open 300 s after the last should have ended count as "unfinished": the machine could
    # not relay them in time, which the run then reports rather than dying with it.
    streams = [asyncio.ensure_future(one(i)) for i in range(n)]
    _, late = await asyncio.wait(streams, timeout=ramp + chunks * delay_ms / 1000 + 300)
    for stream in late:
        stream.cancel()
    outcomes = [o if isinstance(o, str) else "unfinished" for o in await asyncio.gather(*streams, return_exceptions=True)]
    seconds = time.monotonic() - started
    probed = await prober if prober else None
    done.set()
    await sampler
    return {"streams": n, "ok": outcomes.count("ok"), "errors": collections.Counter(o for o in outcomes if o != "ok"),
            "open_most": open_most, "ramp": ramp,
            "seconds": seconds, "idle_mib": idle / 2**20, "peak_mib": peak / 2**20,
            "kib_per_stream": (peak - idle) / 1024 / n, "cpu_ms_per_stream": (cpu_seconds(pid) - cpu_before) * 1000 / n,
            "clients_cpu_s": time.process_time() - clients_cpu, "clients_lag_ms": lag_most * 1000, "probe": probed}


def slow_failures(env: dict) -> str:
    """What the gateway recorded of the slow streams that did not end well (status and error type)."""
    time.sleep(2)  # the drainer's last batch
    out = manage(env, "shell", "-c", (
        "from django.db.models import Count; from usage.models import UsageRecord; "
        "print(list(UsageRecord.objects.filter(public_model='bench-slow').exclude(status='ok')"
        ".values_list('status', 'http_status', 'error_type').annotate(n=Count('id')).order_by('-n')))")).strip()
    out = out.splitlines()[-1] if out else ""  # the shell may say first what it imported
    return "" if out in ("", "[]") else f" (recorded by the gateway: {out})"


def profile(wrk: str, url: str, script: Path, pid: int, duration: float, tmp: Path) -> list[tuple[str, float, float]]:
    """Sample the gateway with py-spy under load: (function, self %, inclusive %) for the top frames."""
    out = tmp / "profile.txt"
    # --subprocesses: under granian the Python that serves is the server's worker process.
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--subprocesses",
                            "--duration", str(max(1, round(duration))),
                            "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_wrk(wrk, url, script, 16, duration, pid)
    spy.wait(timeout=duration + 30)
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if not f.startswith("process ")]
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return [(frame, own[frame] * 100 / total, inclusive[frame] * 100 / total) for frame, _ in own.most_common(15)]


def manage(env: dict, *args: str, root: Path = ROOT) -> str:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env, check=True,
                          capture_output=True, text=True).stdout


def prepare_database(env: dict, mock_url: str, with_limits: bool, root: Path = ROOT,
                     slow_mock_url: str | None = None) -> str:
    import psycopg

    url = env["DATABASE_URL"]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    # Its Redis database starts empty too: the new database numbers its tenant 1 again, so the last
    # run's cache entries (the semantic cache's list grows by each run's misses) would be this run's.
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    run = functools.partial(manage, env, root=root)
    run("migrate", "--noinput")
    run("create_tenant", "bench")
    run("add_provider", "bench-mock", "--kind", "openai_compatible", "--base-url", mock_url,
        "--allow-private-network",
        "--model", "bench-chat=mock-gpt", "--embedding-model", "bench-embed=mock-embed",
        "--input-price", "0.15", "--output-price", "0.60")
    for n in (2, 3):
        run("add_provider", f"bench-mock-{n}", "--kind", "openai_compatible", "--base-url", mock_url,
            "--allow-private-network",
            "--model", f"bench-chat-{n}=mock-gpt", "--input-price", "0.15", "--output-price", "0.60")
    # The mock answers Anthropic's format on its root (/v1/messages), as api.anthropic.com does.
    run("add_provider", "bench-claude", "--kind", "anthropic", "--base-url", mock_url.removesuffix("/v1"),
        "--allow-private-network", "--model", "bench-claude=mock-claude",
        "--input-price", "0.15", "--output-price", "0.60")
    run("shell", "-c", (
        "from routing.models import Route, RouteTarget; from providers.models import Deployment; "
        "r = Route.objects.create(name='bench-route'); "
        "[RouteTarget.objects.create(route=r, deployment=d, priority=i) for i, d in enumerate("
        "Deployment.objects.filter(public_model__in=['bench-chat', 'bench-chat-2', 'bench-chat-3'])"
        ".order_by('public_model'))]"))
    run("shell", "-c", (
        "from providers.models import Deployment, Provider; from tenants.models import Tenant\n"
        "try:\n from routing.models import CachePolicy\nexcept ImportError:\n CachePolicy = None\n"
        "if CachePolicy:\n"
        " Deployment.objects.create(provider=Provider.objects.get(name='bench-mock'), public_model='bench-cached',"
        " upstream_model='mock-gpt', input_price_per_mtok='0.15', output_price_per_mtok='0.60')\n"
        " CachePolicy.objects.create(tenant=Tenant.objects.get(slug='bench'), model='bench-cached')\n"
        " Deployment.objects.create(provider=Provider.objects.get(name='bench-mock'), public_model='bench-semantic',"
        " upstream_model='mock-gpt', input_price_per_mtok='0.15', output_price_per_mtok='0.60')\n"
        " CachePolicy.objects.create(tenant=Tenant.objects.get(slug='bench'), model='bench-semantic',"
        " mode='semantic', semantic_embedding_model='bench-embed')"))
    run("shell", "-c", (
        "from providers.models import Deployment, Provider; from tenants.models import Tenant\n"
        "try:\n from routing.models import GuardrailCheck, GuardrailPolicy\nexcept ImportError:\n GuardrailPolicy = None\n"
        "if GuardrailPolicy:\n"
        " Deployment.objects.create(provider=Provider.objects.get(name='bench-mock'), public_model='bench-guarded',"
        " upstream_model='mock-gpt', input_price_per_mtok='0.15', output_price_per_mtok='0.60')\n"
        " p = GuardrailPolicy.objects.create(tenant=Tenant.objects.get(slug='bench'), route='bench-guarded', name='bench')\n"
        " GuardrailCheck.objects.create(policy=p, order=0, kind='pii', stage='both', action='redact')\n"
        " GuardrailCheck.objects.create(policy=p, order=1, kind='secrets', stage='both', action='block')\n"
        " GuardrailCheck.objects.create(policy=p, order=2, kind='terms', stage='input', action='block',"
        " terms=['falcon', 'zebra'])\n"
        " Deployment.objects.create(provider=Provider.objects.get(name='bench-mock'), public_model='bench-output-checked',"
        " upstream_model='mock-gpt', input_price_per_mtok='0.15', output_price_per_mtok='0.60')\n"
        " p = GuardrailPolicy.objects.create(tenant=Tenant.objects.get(slug='bench'), route='bench-output-checked',"
        " name='bench output')\n"
        " GuardrailCheck.objects.create(policy=p, order=0, kind='pii', stage='output', action='redact')\n"
        " GuardrailCheck.objects.create(policy=p, order=1, kind='secrets', stage='output', action='block')"))
    if slow_mock_url:  # the slow streams' own mock (bench/slow_mock.py, cheap per chunk)
        run("add_provider", "bench-slow", "--kind", "openai_compatible", "--base-url", slow_mock_url,
            "--allow-private-network", "--model", "bench-slow=mock-gpt", "--input-price", "0.15",
            "--output-price", "0.60")
    key = run("create_api_key", "--tenant", "bench", "--name", "bench").strip().splitlines()[-1]
    if with_limits:
        # Limits on the tenant and the key, high enough never to refuse: the
        # admission script runs on every request, as in production.
        run("shell", "-c", (
            "from usage.models import Limit; from keys.models import ApiKey; from tenants.models import Tenant; "
            "t = Tenant.objects.get(slug='bench'); k = ApiKey.objects.get(tenant=t); "
            "Limit.objects.create(tenant=t, requests_per_minute=10**7, budget_usd=10**6, period='month'); "
            "Limit.objects.create(tenant=t, api_key=k, requests_per_minute=10**7, tokens_per_minute=10**9)"))
    return key


def start(args: list[str], env: dict, root: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--smoke", action="store_true", help="one short run of each, to prove the bench works")
    parser.add_argument("--no-limits", action="store_true",
                        help="measure without limits on the key and tenant (they are on by default)")
    parser.add_argument("--slow-streams", type=int, default=10_000,
                        help="streams held open at once in the slow-stream run (0 skips it)")
    parser.add_argument("--slow-seconds", type=float, default=30.0, help="how long each slow stream lasts")
    parser.add_argument("--slow-ramp", type=float, default=5.0,
                        help="seconds over which the slow streams are opened (0: in one burst); all must still "
                             "be open at once, which the run reports")
    parser.add_argument("--slow-mock-workers", type=int, default=2,
                        help="processes of the slow streams' mock (bench/slow_mock.py, SO_REUSEPORT)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the gateway")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the one-connection runs, each server in turn (the median is shown)")
    parser.add_argument("--drf", action="store_true",
                        help="also measure the gateway with the /v1 endpoints as async DRF views (bench/drf_front.py)")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also measure the gateway of another checkout, and print this one's figures as ratios of it")
    parser.add_argument("--no-candidates", action="store_true",
                        help="measure the gateway under its own server only (not under the other candidates)")
    parser.add_argument("--scenario", action="append", dest="scenarios", metavar="NAME", choices=list(SCENARIOS),
                        help="measure only this scenario (repeat for more; all by default)")
    opts = parser.parse_args()
    if opts.smoke:
        opts.slow_streams, opts.slow_seconds, opts.no_profile = min(opts.slow_streams, 20), 1.0, True
    duration = 1.0 if opts.smoke else opts.duration

    wrk = ensure_wrk()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gateway")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    # A database of its own beside DATABASE_URL's: <name>_bench.
    env = {**os.environ, "DATABASE_URL": base + "_bench",
           "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
           "GATEWAY_DATA_DIR": str(tmp), "LOG_LEVEL": "WARNING", "DEBUG": "false"}
    mock_port, gw_port, floor_port, drf_port = free_port(), free_port(), free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    procs = [start([sys.executable, "-m", "providers.mock_upstream", "--port", str(mock_port)], env)]
    slow_mock_url = None
    if opts.slow_streams:
        # Each open stream holds a socket to the client and one upstream: room for both, in every process.
        raise_open_files(4 * opts.slow_streams + 4096)
        env["GATEWAY_UPSTREAM_POOL_SIZE"] = str(max(2048, opts.slow_streams + 512))
        slow_port = free_port()
        slow_mock_url = f"http://127.0.0.1:{slow_port}/v1"
        # A raw asyncio server with one timer per process (bench/slow_mock.py): the general mock's
        # per-chunk task and ASGI send fell behind at 40,000 chunks a second beside the gateway.
        slow_stats = tmp / "slow-mock"
        slow_stats.mkdir()
        procs.append(start([sys.executable, "-m", "bench.slow_mock", "--port", str(slow_port),
                            "--workers", str(opts.slow_mock_workers), "--stats-dir", str(slow_stats)], env))
    try:
        wait_http(mock_url + "/models")
        if slow_mock_url:
            wait_http(slow_mock_url + "/models")
        key = prepare_database(env, mock_url, not opts.no_limits, slow_mock_url=slow_mock_url)
        # As in production, usage is drained by a process of its own (Celery there),
        # not by the gateway; its CPU is reported separately.
        def serve(port: int, root: Path = ROOT, environ: dict = env, **extra) -> subprocess.Popen:
            return start([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", str(opts.workers),
                          "--log-level", "warning"], {**environ, "USAGE_DRAIN_IN_PROCESS": "false", **extra}, root)

        gateway = serve(gw_port)
        floor = start([sys.executable, "-m", "uvicorn", "bench.floor_app:application", "--port",
                       str(floor_port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                       "--log-level", "warning", "--lifespan", "off"], {**env, "UPSTREAM_URL": mock_url})
        procs += [gateway, floor]
        drainer = start([sys.executable, "manage.py", "drain_usage", "--loop", "--interval", "0.5"], env)
        procs.append(drainer)
        behind = Behind(env, drainer.pid)
        wait_http(f"http://127.0.0.1:{gw_port}/v1/models")
        wait_http(f"http://127.0.0.1:{floor_port}/v1/models")
        targets = {
            "mock upstream, direct": (f"http://127.0.0.1:{mock_port}", procs[0].pid, None, "upstream"),
            "bare Django relay (floor)": (f"http://127.0.0.1:{floor_port}", floor.pid, None, "upstream"),
            "gateway": (f"http://127.0.0.1:{gw_port}", gateway.pid, key, "gateway"),
        }
        for name, args in CANDIDATES.items():
            if opts.no_candidates or opts.scenarios and not set(opts.scenarios) & set(CANDIDATE_SCENARIOS):
                break
            port = free_port()
            proc = start([sys.executable, *[a.replace("{port}", str(port)) for a in args]],
                         {**env, "USAGE_DRAIN_IN_PROCESS": "false"})
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/v1/models")
            targets[name] = (f"http://127.0.0.1:{port}", proc.pid, key, "gateway")
        if opts.drf:
            drf = serve(drf_port, GATEWAY_API_URLCONF="bench.drf_front")
            procs.append(drf)
            wait_http(f"http://127.0.0.1:{drf_port}/v1/models")
            targets[DRF] = (f"http://127.0.0.1:{drf_port}", drf.pid, key, "gateway")
        if opts.compare:
            # The other checkout's gateway: its own database, Redis database and usage drainer.
            other = opts.compare.resolve()
            other_env = {**env, "DATABASE_URL": base + "_bench_compare",
                         "REDIS_URL": os.environ.get("BENCH_COMPARE_REDIS_URL", "redis://127.0.0.1:6379/13"),
                         "GATEWAY_DATA_DIR": str(tmp / "compare")}
            (tmp / "compare").mkdir()
            other_key = prepare_database(other_env, mock_url, not opts.no_limits, other)
            compared_port = free_port()
            compared = serve(compared_port, other, other_env)
            procs.append(compared)
            procs.append(start([sys.executable, "manage.py", "drain_usage", "--loop", "--interval", "0.5"],
                               other_env, other))
            wait_http(f"http://127.0.0.1:{compared_port}/v1/models")
            targets[COMPARED] = (f"http://127.0.0.1:{compared_port}", compared.pid, other_key, "gateway")
        settle(drainer.pid)  # its start-up (Django's setup) is not the drain's cost
        rows, drain_before, gateway_requests = [], cpu_seconds(drainer.pid), 0
        gateway_scripts: dict[str, tuple[str, int, Path]] = {}
        rounds = 1 if opts.smoke else opts.rounds
        for scenario, (path, body) in SCENARIOS.items():
            if opts.scenarios and scenario not in opts.scenarios:
                continue
            measured = []
            for target, (url, pid, auth, names) in targets.items():
                if target in CANDIDATES and scenario not in CANDIDATE_SCENARIOS:
                    continue
                if scenario in GATEWAY_ONLY and names != "gateway" or (
                        scenario in NEWER and target == COMPARED and not knows(opts.compare, scenario)):
                    continue
                payload = body if names == "gateway" else body.replace("bench-chat", "mock-gpt").replace(
                    "bench-embed", "mock-embed").replace("bench-route", "mock-gpt")
                script = wrk_script(tmp, f"{scenario.replace(' ', '_').replace(',', '')}-{names}-{len(measured)}",
                                    payload, auth)
                # Warm up pools, caches and the routing table (the drainer writes those calls too).
                warm = run_wrk(wrk, url + path, script, 4, 1, pid)
                gateway_requests += warm["requests"] if names == "gateway" else 0
                measured.append((target, url, pid, auth, names, payload, script))
                if target == "gateway":
                    gateway_scripts[scenario] = (url + path, pid, script)
            # Under load and then one client at a time, in rounds that take each server in turn: the
            # machine's noise then falls on all of them alike, and each figure is the median of its rounds.
            loads, singles = collections.defaultdict(list), collections.defaultdict(list)
            for _ in range(rounds):
                for target, url, pid, _auth, names, _payload, script in measured:
                    loads[target].append(run_wrk(wrk, url + path, script, opts.connections, duration, pid,
                                                 behind if names == "gateway" else None))
            for _ in range(rounds):
                for target, url, pid, _auth, _names, _payload, script in measured:
                    singles[target].append(run_wrk(wrk, url + path, script, 1, duration / 2, pid))
            for target, url, _pid, auth, names, payload, _script in measured:
                loaded, single = median_run(loads[target]), median_run(singles[target])
                if scenario == "stream":
                    single["ttft"] = time_to_first_token(url, path, payload, auth, 20 if opts.smoke else 300)
                rows.append((scenario, target, loaded, single))
                if names == "gateway":
                    gateway_requests += loaded["requests"] + single["requests"]
        paired = paired_rounds(wrk, gateway_scripts, opts.connections, duration, rounds)
        gateway_requests += sum(p["requests"] for p in paired)
        time.sleep(1.5)  # let the drainer finish
        drain_ms = (cpu_seconds(drainer.pid) - drain_before) * 1000 / max(gateway_requests, 1)
        print_table(rows, opts, duration)
        print_against_floor(rows)
        if opts.drf:
            print_drf(rows)
        if opts.compare:
            print_compare(rows, opts.compare)
        print_responses(rows)
        print_paired(paired)
        print(f"\nUsage drain (its own process, bulk inserts into PostgreSQL): {drain_ms:.2f} ms CPU per "
              "gateway request.")
        gateway_url, gateway_pid = targets["gateway"][0], targets["gateway"][1]
        if opts.slow_streams:
            delay = 250
            probe = (wrk, f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                     wrk_script(tmp, "probe-mock", SCENARIOS["chat"][1].replace("bench-chat", "mock-gpt"), None),
                     wrk_script(tmp, "probe-gateway", SCENARIOS["chat"][1], key))
            held = run_async(hold_slow_streams(gateway_url, key, opts.slow_streams,
                                               max(1, round(opts.slow_seconds * 1000 / delay)), delay, gateway_pid,
                                               probe, 0.0 if opts.smoke else opts.slow_ramp))
            print(f"\nSlow streams: {held['streams']} at once (opened over {held['ramp']:g} s, {held['open_most']} "
                  f"open together at most), one chunk every {delay} ms for "
                  f"{opts.slow_seconds:g} s, on one gateway worker: {held['ok']} completed, errors: "
                  f"{dict(held['errors']) or 'none'}{slow_failures(env)}, {held['seconds']:.1f} s in all; gateway memory "
                  f"{held['idle_mib']:.0f} MiB idle, {held['peak_mib']:.0f} MiB at peak: "
                  f"{held['kib_per_stream']:.1f} KiB per open stream; {held['cpu_ms_per_stream']:.1f} ms CPU per stream.")
            mock = slow_mock.read_stats(slow_stats)
            print(f"The load side: the slow mock ({opts.slow_mock_workers} processes) began {mock.get('streams', 0)} "
                  f"streams, completed {mock.get('completed', 0)}, saw {mock.get('cut', 0)} cut by the gateway, its "
                  f"timer {mock.get('max_lag_ms', 0):.0f} ms late at most; the clients (this process) used "
                  f"{held['clients_cpu_s']:.1f} s of CPU, their loop {held['clients_lag_ms']:.0f} ms late at most "
                  "(errors named `client: ...` are theirs, the rest the gateway's answers).")
            if probed := held["probe"]:
                direct, through = probed["direct"], probed["through"]
                print(f"One client's JSON chat while {probed['open']} of them were open: mock direct p50 "
                      f"{direct['p50']:.2f} ms, p99 {direct['p99']:.2f} ms; through the gateway p50 {through['p50']:.2f} ms, "
                      f"p99 {through['p99']:.2f} ms: added p50 {through['p50'] - direct['p50']:.2f} ms, "
                      f"p99 {through['p99'] - direct['p99']:.2f} ms ({through['requests']} requests, "
                      f"{through['errors']} errors).")
        if not opts.no_profile:
            path, body = SCENARIOS["chat"]
            script = wrk_script(tmp, "profile", body, key)
            print(f"\nProfile of the gateway worker under JSON chat load (py-spy, {duration:g} s), top frames "
                  "by own time:\n")
            print("| function (file) | own % | inclusive % |\n| --- | ---: | ---: |")
            for frame, own, inclusive in profile(wrk, gateway_url + path, script, gateway_pid, duration, tmp):
                print(f"| `{frame}` | {own:.1f} | {inclusive:.1f} |")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def print_against_floor(rows) -> None:
    """Each gateway row's CPU per request, and its whole call's, as a share of the floor's (issue 26:
    at most 0.7x for JSON chat and streams), with the drain's and the database's part apart."""
    by = {(scenario, target): loaded for scenario, target, loaded, _ in rows}
    print("\nAgainst the floor (the bare Django relay under uvicorn), same run, CPU per request under the "
          "load above; whole call = gateway + usage drain + PostgreSQL backends:\n")
    print("| scenario | server | CPU ms/req | CPU/floor | drain + PostgreSQL ms/req | whole call ms/req "
          "| whole/floor |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for scenario, target, loaded, _ in rows:
        floor = by.get((scenario, "bare Django relay (floor)"))
        if not floor or "whole_ms" not in loaded:
            continue
        print(f"| {scenario} | {target} | {loaded['cpu_ms']:.3f} | {loaded['cpu_ms'] / floor['cpu_ms']:.2f} "
              f"| {loaded['behind_ms']:.3f} | {loaded['whole_ms']:.3f} | {loaded['whole_ms'] / floor['cpu_ms']:.2f} |")


def print_drf(rows) -> None:
    """What the DRF views add to each call, beside the plain views measured in the same rounds."""
    by = {(scenario, target): (loaded, single) for scenario, target, loaded, single in rows}
    print("\nDRF views against the plain views, same run (CPU per request under the load above, "
          "latency at one connection):\n")
    print("| scenario | plain CPU ms/req | DRF CPU ms/req | DRF/plain | DRF added CPU ms/req "
          "| plain p50 ms @1 | DRF p50 ms @1 | DRF added p50 ms @1 | DRF added p99 ms @1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        if (scenario, DRF) not in by:
            continue
        (plain, plain_one), (drf, drf_one) = by[(scenario, "gateway")], by[(scenario, DRF)]
        print(f"| {scenario} | {plain['cpu_ms']:.3f} | {drf['cpu_ms']:.3f} | {drf['cpu_ms'] / plain['cpu_ms']:.3f} "
              f"| {drf['cpu_ms'] - plain['cpu_ms']:+.3f} | {plain_one['p50']:.2f} | {drf_one['p50']:.2f} "
              f"| {drf_one['p50'] - plain_one['p50']:+.2f} | {drf_one['p99'] - plain_one['p99']:+.2f} |")


def print_responses(rows) -> None:
    """A Responses API or Messages API call against the same chat completion, same run."""
    by = {(scenario, target): loaded for scenario, target, loaded, _ in rows}
    pairs = [(r, c) for r, c in AGAINST_CHAT.items() if (r, "gateway") in by and (c, "gateway") in by]
    if not pairs:
        return
    print("\nThe Responses and Messages APIs, and the guardrails, against the plain call (gateway CPU per "
          "request, under the load above):\n")
    print("| scenario | chat CPU ms/req | its CPU ms/req | it/chat |\n| --- | ---: | ---: | ---: |")
    for other, chat in pairs:
        this, that = by[(other, "gateway")], by[(chat, "gateway")]
        print(f"| {other} | {that['cpu_ms']:.3f} | {this['cpu_ms']:.3f} | {this['cpu_ms'] / that['cpu_ms']:.3f} |")


def paired_rounds(wrk: str, scripts: dict, connections: int, duration: float, rounds: int) -> list[dict]:
    """Each AGAINST_CHAT pair measured again on the gateway in rounds that alternate the two (which
    goes first alternates too): the machine's drift between two scenarios' blocks then falls on
    both alike. The ratio of each round, and their median."""
    results = []
    for other, plain in AGAINST_CHAT.items():
        if other not in GUARDED or other not in scripts or plain not in scripts:
            continue  # the guardrails' pairs: issue 21's 10% is within what one block's drift moves
        ratios, requests = [], 0
        for round_ in range(rounds if rounds == 1 else max(rounds, 3)):
            order = (plain, other) if round_ % 2 == 0 else (other, plain)
            cpu = {}
            for scenario in order:
                url, pid, script = scripts[scenario]
                run = run_wrk(wrk, url, script, connections, duration, pid)
                cpu[scenario], requests = run["cpu_ms"], requests + run["requests"]
            ratios.append(cpu[other] / cpu[plain])
        results.append({"scenario": other, "against": plain, "ratios": ratios,
                        "median": statistics.median(ratios), "requests": requests})
    return results


def print_paired(paired: list[dict]) -> None:
    if not paired:
        return
    print("\nThe same pairs in alternating rounds (gateway CPU per request at the load above; each round runs "
          "both, in turn; the median of the rounds' ratios):\n")
    print("| scenario | against | rounds | ratio each round | median |\n| --- | --- | ---: | --- | ---: |")
    for p in paired:
        each = ", ".join(f"{r:.3f}" for r in p["ratios"])
        print(f"| {p['scenario']} | {p['against']} | {len(p['ratios'])} | {each} | {p['median']:.3f} |")


def print_compare(rows, other: Path) -> None:
    """This checkout's gateway as ratios of the other's, measured in the same rounds."""
    by = {(scenario, target): (loaded, single) for scenario, target, loaded, single in rows}
    direct = {scenario: single for scenario, target, _, single in rows if target.startswith("mock")}
    print(f"\nThis checkout against {other} (CPU per request under the load above; latency added to the "
          "mock's at one connection):\n")
    print("| scenario | other CPU ms/req | this CPU ms/req | CPU this/other | other added p50 ms @1 "
          "| this added p50 ms @1 | added p50 this/other | other req/s | this req/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for scenario in SCENARIOS:
        if (scenario, COMPARED) not in by:
            continue
        (this, this_one), (that, that_one) = by[(scenario, "gateway")], by[(scenario, COMPARED)]
        floor = direct[scenario.split(",")[0]]["p50"]
        this_added, that_added = this_one["p50"] - floor, that_one["p50"] - floor
        print(f"| {scenario} | {that['cpu_ms']:.3f} | {this['cpu_ms']:.3f} | {this['cpu_ms'] / that['cpu_ms']:.3f} "
              f"| {that_added:.2f} | {this_added:.2f} | {this_added / that_added:.3f} "
              f"| {that['rps']:.0f} | {this['rps']:.0f} |")


def print_table(rows, opts, duration) -> None:
    print(f"\n{opts.connections} connections, {duration:g}s per run, gateway workers: {opts.workers}, "
          f"limits on key and tenant: {'no' if opts.no_limits else 'yes'}, {os.cpu_count()} CPUs\n")
    print(f"| scenario | server | req/s @{opts.connections} | CPU ms/req | whole call CPU ms/req | p50 ms | p99 ms "
          "| errors | p50 ms @1 | p99 ms @1 | added p50 ms @1 | added p99 ms @1 | TTFT p50/p99 ms @1 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    direct = {scenario: single for scenario, target, _, single in rows if target.startswith("mock")}
    for scenario, target, loaded, single in rows:
        base = direct.get(scenario) or direct.get(AGAINST_CHAT.get(scenario, scenario.split(",")[0]))
        added = (f"{single['p50'] - base['p50']:.2f} | {single['p99'] - base['p99']:.2f}"
                 if base and not target.startswith("mock") else "- | -")
        ttft = single.get("ttft")
        ttft_text = f"{ttft[0]:.2f} / {ttft[1]:.2f}" if ttft else "-"
        if ttft and base and not target.startswith("mock"):
            ttft_text += f" (+{ttft[0] - base['ttft'][0]:.2f})"
        whole = f"{loaded['whole_ms']:.2f}" if "whole_ms" in loaded else "-"
        print(f"| {scenario} | {target} | {loaded['rps']:.0f} | {loaded['cpu_ms']:.2f} | {whole} | {loaded['p50']:.2f} "
              f"| {loaded['p99']:.2f} | {loaded['errors'] + single['errors']} | {single['p50']:.2f} "
              f"| {single['p99']:.2f} | {added} | {ttft_text} |")


if __name__ == "__main__":
    main()
