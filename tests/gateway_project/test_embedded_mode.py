"""The run command's embedded mode: nothing but Python, SQLite and in-process state.

A newcomer runs `python manage.py demo`; this drives the same steps: set up the
demo data, serve (granian), call the printed key with curl, stop the server
normally, and find every call in the usage table.
"""

import json
import os
import sqlite3
import subprocess
import sys

from tests.conftest import ROOT, Server, stop


def test_demo_in_embedded_mode_serves_the_printed_key_and_loses_no_usage(tmp_path, mock_upstream):
    env = {"GATEWAY_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
           "REDIS_URL": "", "CELERY_BROKER_URL": "memory://",
           # Far longer than the test: only the shutdown flush can write the usage.
           "USAGE_FLUSH_INTERVAL": "3600"}
    setup = subprocess.run(
        [sys.executable, "manage.py", "demo", "--setup-only", "--mock-port", str(mock_upstream.port)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert setup.returncode == 0, setup.stderr
    assert "login admin / " in setup.stdout and "/admin/" in setup.stdout
    key = setup.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-gw-")

    server = Server(["manage.py", "serve", "--port", "{port}"], env=env, ready_path="/admin/login/")
    try:
        body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}]})
        curl = subprocess.run(
            ["curl", "-sS", "-f", f"{server.url}/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
             "-H", "content-type: application/json", "-d", body],
            capture_output=True, text=True, timeout=30,
        )
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["choices"][0]["message"]["content"]
        stream = subprocess.run(
            ["curl", "-sS", "-N", f"{server.url}/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
             "-H", "content-type: application/json", "-d", json.dumps({**json.loads(body), "stream": True})],
            capture_output=True, text=True, timeout=30,
        )
        assert stream.stdout.rstrip().endswith("data: [DONE]")
        embed = subprocess.run(
            ["curl", "-sS", "-f", f"{server.url}/v1/embeddings", "-H", f"Authorization: Bearer {key}",
             "-H", "content-type: application/json", "-d", json.dumps({"model": "mock-embed", "input": "hi"})],
            capture_output=True, text=True, timeout=30,
        )
        assert len(json.loads(embed.stdout)["data"][0]["embedding"]) == 1536
    finally:
        stop(server.proc)
    # A graceful stop: the server exits cleanly (uvicorn re-raises SIGTERM, hence -15), and the usage
    # below, which only the lifespan's shutdown could write, is all there.
    assert server.proc.returncode in (0, -15), server.output()[-2000:]

    db = sqlite3.connect(tmp_path / "db.sqlite3")
    rows = db.execute("SELECT endpoint, streamed, status, completion_tokens FROM usage_usagerecord").fetchall()
    assert sorted(rows) == [("chat.completions", 0, "ok", 20), ("chat.completions", 1, "ok", 20),
                            ("embeddings", 0, "ok", 0)]
    assert db.execute("SELECT last_used_at IS NOT NULL FROM keys_apikey WHERE revoked_at IS NULL").fetchone() == (1,)
