"""The slow streams' upstream, as cheap as an upstream can be: an OpenAI-compatible chat stream
(the mock's wire format: a role chunk, `chunks` content chunks `chunk_delay_ms` apart, the finish
chunk, the usage chunk, `[DONE]`) served by a raw asyncio protocol on uvloop, with one timer per
process that writes the next chunk of every stream due on that tick.

The general mock (`providers.mock_upstream`) costs a task, an ASGI send and a sleep per chunk; at
10,000 streams (40,000 chunks a second) it shared the two cores with the gateway and fell behind,
and the gateway's 504s then measured the mock. This one costs one `transport.write` per chunk.

    python3 -m bench.slow_mock --port 8100 [--workers 2] [--stats-dir DIR]

With several workers every one binds the port with SO_REUSEPORT. Each writes its counters to
`<stats-dir>/<pid>.json` once a second and when it stops (`read_stats` sums them): streams begun,
completed, and cut by the other side, and how late its timer fired at most (the mock's own lag:
the figure that says whether the mock kept up).
"""

import argparse
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

KNOB = re.compile(rb"(chunks|chunk_delay_ms)=(\d+)")
MODELS = json.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in ("mock-gpt", "mock-embed")]}).encode()
WORDS = [b"mock", b" reply", b" from", b" the", b" slow", b" upstream"]


def _chunk(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(stream_id: bytes, rest: bytes) -> bytes:
    return _chunk(b'data: {"id":"' + stream_id + b'","object":"chat.completion.chunk","created":1700000000,'
                  b'"model":"mock-gpt","system_fingerprint":"fp_mock",' + rest + b"}\n\n")


def _content(stream_id: bytes, word: bytes) -> bytes:
    return _event(stream_id, b'"usage":null,"choices":[{"index":0,"delta":{"content":"' + word +
                  b'"},"logprobs":null,"finish_reason":null}]')


def _ending(stream_id: bytes, tokens: int) -> bytes:
    usage = b'{"prompt_tokens":7,"completion_tokens":%d,"total_tokens":%d}' % (tokens, tokens + 7)
    return (_event(stream_id, b'"usage":null,"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]')
            + _event(stream_id, b'"usage":' + usage + b',"choices":[]') + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class Mock:
    """One process's streams and counters, and the tick that moves them on."""

    def __init__(self, loop, tick: float) -> None:
        self.loop, self.tick, self.due, self.ticks = loop, tick, {}, 0
        self.stats = {"connections": 0, "streams": 0, "completed": 0, "cut": 0, "other_requests": 0, "max_lag_ms": 0.0}

    def start(self) -> None:
        self.started_at = self.loop.time()
        self.loop.call_at(self.started_at + self.tick, self.on_tick)

    def on_tick(self) -> None:
        self.ticks += 1
        scheduled = self.started_at + self.ticks * self.tick
        self.stats["max_lag_ms"] = max(self.stats["max_lag_ms"], (self.loop.time() - scheduled) * 1000)
        for stream in self.due.pop(self.ticks, ()):
            stream.next_chunk()
        self.loop.call_at(scheduled + self.tick, self.on_tick)

    def later(self, stream, ticks: int) -> None:
        self.due.setdefault(self.ticks + ticks, []).append(stream)


class Upstream:
    """One connection: requests read one after another (the gateway's pool keeps it alive)."""

    __slots__ = ("mock", "transport", "buffer", "stream_id", "left", "sent", "step")

    def __init__(self, mock: Mock) -> None:
        self.mock, self.transport, self.buffer, self.stream_id, self.left = mock, None, b"", None, 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.mock.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            end = head_end + 4 + (int(length.group(1)) if length else 0)
            if len(self.buffer) < end:
                return
            body, self.buffer = self.buffer[head_end + 4:end], self.buffer[end:]
            self.answer(head.split(b" ", 1)[0], body)

    def answer(self, method: bytes, body: bytes) -> None:
        if method != b"post" or b'"stream":true' not in body.replace(b" ", b""):
            self.mock.stats["other_requests"] += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(MODELS), MODELS))
            return
        knobs = {k: int(v) for k, v in KNOB.findall(body)}
        self.stream_id = b"chatcmpl-slow%d" % id(self)
        self.left, self.sent = knobs.get(b"chunks", 20), 0
        self.step = max(1, round(knobs.get(b"chunk_delay_ms", 250) / 1000 / self.mock.tick))
        self.mock.stats["streams"] += 1
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                             b"transfer-encoding: chunked\r\n\r\n" + _event(
                                 self.stream_id, b'"usage":null,"choices":[{"index":0,"delta":{"role":"assistant",'
                                 b'"content":""},"logprobs":null,"finish_reason":null}]'))
        self.mock.later(self, self.step)

    def next_chunk(self) -> None:
        if self.transport is None or self.left <= 0:
            return
        self.left -= 1
        piece = _content(self.stream_id, WORDS[self.sent % len(WORDS)])
        self.sent += 1
        if self.left:
            self.transport.write(piece)
            self.mock.later(self, self.step)
        else:
            self.transport.write(piece + _ending(self.stream_id, self.sent))
            self.mock.stats["completed"] += 1

    def connection_lost(self, exc) -> None:
        if self.left > 0:
            self.mock.stats["cut"] += 1
        self.transport, self.left = None, 0

    def eof_received(self):
        return None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def _serve(port: int, tick: float, stats_dir: Path | None) -> None:
    import asyncio

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        mock = Mock(loop, tick)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        server = await loop.create_server(lambda: Upstream(mock), sock=sock, backlog=4096)
        mock.start()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        path = stats_dir / f"{os.getpid()}.json" if stats_dir else None
        while not stop.is_set():
            if path:
                path.write_text(json.dumps(mock.stats))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
        server.close()
        if path:
            path.write_text(json.dumps(mock.stats))

    uvloop.run(main())


def read_stats(stats_dir: Path) -> dict:
    """The workers' counters summed (their worst lag, not its sum)."""
    total: dict = {}
    for path in stats_dir.glob("*.json"):
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name, value in stats.items():
            total[name] = max(total.get(name, 0), value) if name == "max_lag_ms" else total.get(name, 0) + value
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tick-ms", type=float, default=250.0, help="the timer's period; delays round to it")
    parser.add_argument("--stats-dir", type=Path)
    opts = parser.parse_args(argv)
    children = []
    for _ in range(opts.workers - 1):
        pid = os.fork()
        if pid == 0:
            _serve(opts.port, opts.tick_ms / 1000, opts.stats_dir)
            os._exit(0)
        children.append(pid)

    def forward(signum, _frame):
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        _serve(opts.port, opts.tick_ms / 1000, opts.stats_dir)
    finally:
        forward(signal.SIGTERM, None)
        deadline = time.monotonic() + 5
        for child in children:
            while time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):
                time.sleep(0.05)


if __name__ == "__main__":
    main()
