"""Log lines a person can read in a terminal, JSON for collectors everywhere else (LOG_FORMAT=auto,
the default): `serve` and the demo under a pseudo-terminal, and `serve` writing to a pipe."""

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time

import httpx

from tests.conftest import ROOT, free_port, stop, wait_for, wait_until

TEXT_REQUEST = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO gateway\.request request .*status=401")


class Terminal:
    """A process whose standard output and error are a pseudo-terminal; what it wrote, as lines."""

    def __init__(self, argv: list[str], env: dict) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, args=(master,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            self.chunks.append(chunk)
        os.close(fd)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")

    def finish(self) -> list[str]:
        stop(self.proc)
        self.reader.join(timeout=10)
        return [line for line in self.text().splitlines() if line.strip()]


def environment(**extra) -> dict:
    env = {**os.environ, "LOG_LEVEL": "INFO", **extra}
    env.pop("LOG_FORMAT", None)
    return env


def unauthenticated_call(url: str) -> None:
    assert httpx.get(url + "/v1/models").status_code == 401


def test_serve_writes_text_lines_to_a_terminal(gateway_env):
    port = free_port()
    terminal = Terminal([sys.executable, "manage.py", "serve", "--port", str(port)], environment(**gateway_env))
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", terminal.proc)
        unauthenticated_call(f"http://127.0.0.1:{port}")
        assert wait_until(lambda: "gateway.request" in terminal.text(), timeout=10)
    finally:
        lines = terminal.finish()
    assert any(TEXT_REQUEST.match(line) for line in lines), lines
    assert not any(line.startswith("{") for line in lines), lines


def test_log_format_json_holds_in_a_terminal_too(gateway_env):
    """LOG_FORMAT=json (a terminal that feeds a collector, `kubectl logs -f` piped on): no text lines."""
    port = free_port()
    terminal = Terminal([sys.executable, "manage.py", "serve", "--port", str(port)],
                        {**environment(**gateway_env), "LOG_FORMAT": "json"})
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", terminal.proc)
        unauthenticated_call(f"http://127.0.0.1:{port}")
        assert wait_until(lambda: "gateway.request" in terminal.text(), timeout=10)
    finally:
        lines = terminal.finish()
    requests = [json.loads(line) for line in lines if '"gateway.request"' in line]
    assert requests and requests[0]["http_status"] == 401, lines
    assert not any(TEXT_REQUEST.match(line) for line in lines), lines


def test_serve_writes_json_lines_to_a_pipe(gateway_env, tmp_path):
    port = free_port()
    with open(tmp_path / "serve.log", "w+") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
                                env=environment(**gateway_env), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(f"http://127.0.0.1:{port}/healthz", proc)
            unauthenticated_call(f"http://127.0.0.1:{port}")
            assert wait_until(lambda: "gateway.request" in (tmp_path / "serve.log").read_text(), timeout=10)
        finally:
            stop(proc)
    lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    requests = [line for line in lines if line["logger"] == "gateway.request"]
    assert requests and requests[0]["http_status"] == 401 and requests[0]["message"] == "request"
    assert any(line["logger"] in ("_granian", "granian.access") for line in lines)  # the ASGI server's own lines too


def test_the_demo_reads_like_a_tool_in_a_terminal(tmp_path):
    """Embedded mode (SQLite, no Redis), as a newcomer runs it."""
    port, mock_port = free_port(), free_port()
    env = environment(GATEWAY_DATA_DIR=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                      REDIS_URL="", CELERY_BROKER_URL="memory://")
    terminal = Terminal([sys.executable, "manage.py", "demo", "--port", str(port), "--mock-port", str(mock_port)],
                        env)
    try:
        assert wait_until(lambda: "API key:" in terminal.text(), timeout=120, interval=0.2), terminal.text()
        wait_for(f"http://127.0.0.1:{port}/healthz", terminal.proc)
        key = wait_until(lambda: re.search(r"^sk-gw-\w+$", terminal.text(), re.M), timeout=5).group(0)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "mock-gpt", "messages": [{"role": "user", "content": "Hi"}]}, timeout=30)
        assert answer.status_code == 200, answer.text
        unauthenticated_call(f"http://127.0.0.1:{port}")
        assert wait_until(lambda: "status=401" in terminal.text(), timeout=10)
        time.sleep(0.2)
    finally:
        lines = terminal.finish()
    assert any(TEXT_REQUEST.match(line) for line in lines), lines
    assert any(" gateway.request request " in line and "status=200" in line and "model=mock-gpt" in line
               for line in lines), lines
    assert not any(line.startswith("{") for line in lines), lines
    assert any(line.startswith("Applied ") and "gateway.yaml" in line for line in lines)
