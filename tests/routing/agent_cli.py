"""What the agent-CLI tests share (test_codex_cli.py, test_claude_code.py): running the CLI, and counting
the model calls the mock answered."""

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest


def run_cli(args: list[str], env: dict[str, str], workdir: Path, timeout: float, shown: str = "stderr"
            ) -> subprocess.CompletedProcess:
    """Run a CLI in `workdir`; the npm launchers start native binaries, so on a timeout its whole
    process group goes and the test fails with what it printed (`shown`: "stderr" or "both")."""
    proc = subprocess.Popen(args, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        printed = stderr if shown == "stderr" else f"{stdout}\n{stderr}"
        pytest.fail(f"{Path(args[0]).name} did not finish in {timeout} s; its output:\n{printed}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def model_calls(mock) -> int:
    """Answers the mock gave, listings of models aside."""
    served = httpx.get(mock.url + "/_mock/stats").json()["requests"]
    return sum(count for path, count in served.items() if not path.rstrip("/").endswith("/models"))
