"""Claude Code (the @anthropic-ai/claude-code that package.json pins, in node_modules/) does a whole agent
task through /v1/messages whichever provider kind serves it: the mock scripts a Write tool call, Claude
Code writes the file, the mock then answers in words, and every model call is billed once.

Claude Code runs offline (docs/claude-code-notes.md): its own home and config folder under the test's
folder, nonessential traffic (telemetry, error reports, the update check) off, every model it would use
(the main one and the small fast one) the gateway's model, and the Write tool allowed up front so that
it asks nobody."""

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from providers.mock_upstream import directive
from tests.conftest import ROOT, key_usage_records, make_provider, wait_until
from tests.routing.agent_cli import model_calls, run_cli

CLAUDE = ROOT / "node_modules" / ".bin" / "claude"
CLAUDE_VERSION = json.loads((ROOT / "package.json").read_text())["devDependencies"]["@anthropic-ai/claude-code"]
TIMEOUT = 120
FIVE_WORDS = "mock reply from the gateway"  # the mock's answer in words with chunks=5


def claude_env(home: Path, base_url: str, key: str, model: str) -> dict[str, str]:
    """Claude Code's environment: nothing from the developer's but PATH."""
    return {
        "PATH": os.environ["PATH"], "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model, "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
        "CLAUDE_CODE_ENABLE_TELEMETRY": "0", "CLAUDE_CODE_MAX_RETRIES": "0", "API_TIMEOUT_MS": "60000",
    }


def claude_print(home: Path, workdir: Path, env: dict[str, str], prompt: str) -> subprocess.CompletedProcess:
    """`claude -p` in `workdir`; on a timeout its whole process group goes."""
    args = [str(CLAUDE), "-p", "--allowedTools", "Write", "--output-format", "text", prompt]
    return run_cli(args, env, workdir, TIMEOUT, shown="both")



def test_pinned_claude_code_is_installed(tmp_path):
    result = subprocess.run([str(CLAUDE), "--version"], capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert result.stdout.split()[0] == CLAUDE_VERSION, result.stderr


@pytest.mark.parametrize("kind", ["anthropic", "openai", "gemini"])
def test_claude_code_writes_a_file_and_answers_through_the_gateway(kind, gateway, api_key, mock, tmp_path):
    make_provider(kind, mock.url, knobs="chunks=5,reasoning_tokens=3")
    headers = {"authorization": f"Bearer {api_key[1]}"}
    assert wait_until(lambda: f"chat-{kind}" in [m["id"] for m in httpx.get(
        gateway.url + "/v1/models", headers=headers).json()["data"]])
    home, workdir = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    proof = workdir / "proof.txt"
    prompt = "Write the proof file. " + directive(tool="Write", tool_args={
        "file_path": str(proof), "content": "claude-was-here"})
    env = claude_env(home, gateway.url, api_key[1], f"chat-{kind}")

    result = claude_print(home, workdir, env, prompt)

    assert result.returncode == 0, result.stdout + result.stderr
    assert proof.exists() and proof.read_text() == "claude-was-here", result.stdout + result.stderr
    assert result.stdout.strip() == FIVE_WORDS, result.stdout + result.stderr
    calls = model_calls(mock)
    records = key_usage_records(api_key[0], calls)
    assert len(records) == calls >= 2, result.stderr  # the Write call and the answer, at least; each billed once
    for record in records:
        assert (record.endpoint, record.status, record.provider_name) == ("messages", "ok", kind)
        assert record.public_model == f"chat-{kind}" and record.streamed
        assert record.prompt_tokens > 0 and record.completion_tokens > 0 and not record.tokens_estimated
    # The tokens billed are the tokens the provider reported, call for call summed.
    served = httpx.get(mock.url + "/_mock/stats").json()["tokens"]
    assert (sum(r.prompt_tokens for r in records), sum(r.completion_tokens for r in records)) == (
        served["prompt"], served["completion"])
