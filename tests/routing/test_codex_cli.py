"""The Codex CLI (the @openai/codex that package.json pins, in node_modules/) does a whole agent task
through /v1/responses whichever provider kind serves it: the mock scripts a shell command, Codex runs
it, the mock then answers in words, and every model call is billed once.

Codex runs offline: its own home under the test's folder, analytics, feedback, OpenTelemetry, the update
check and the plugin and app syncs (which clone from GitHub and call chatgpt.com) off, and web search off,
as for any model that is not OpenAI's own."""

import json
import os
import subprocess
from pathlib import Path

import openai
import pytest

from providers.mock_upstream import directive
from tests.conftest import ROOT, key_usage_records, make_provider, wait_until
from tests.routing.agent_cli import model_calls, run_cli

CODEX = ROOT / "node_modules" / ".bin" / "codex"
CODEX_VERSION = json.loads((ROOT / "package.json").read_text())["devDependencies"]["@openai/codex"]
TIMEOUT = 120
# The mock's answer in words with chunks=5.
FIVE_WORDS = "mock reply from the gateway"

CONFIG = """\
model = "{model}"
model_provider = "gateway"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false
web_search = "disabled"

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.gateway]
name = "LLM gateway"
base_url = "{base_url}"
wire_api = "responses"
env_key = "GATEWAY_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"""


def codex_exec(home: Path, workdir: Path, key: str, prompt: str) -> subprocess.CompletedProcess:
    """`codex exec` with its own home and nothing from the developer's environment but PATH. Codex's
    launcher starts a native binary: on a timeout the whole process group goes."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "CODEX_HOME": str(home), "GATEWAY_API_KEY": key}
    args = [str(CODEX), "exec", "--strict-config", "--skip-git-repo-check", "--ephemeral", "--color", "never",
            "-C", str(workdir), prompt]
    return run_cli(args, env, workdir, TIMEOUT)



def test_pinned_codex_is_installed():
    result = subprocess.run([str(CODEX), "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["codex-cli", CODEX_VERSION], result.stderr


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_codex_runs_a_shell_command_and_answers_through_the_gateway(kind, gateway, api_key, mock, tmp_path):
    # Codex also offers its sub-agent tools as a namespace, which the mock's own Responses API would refuse.
    make_provider(kind, mock.url, knobs="chunks=5,lenient_tools=1")
    models = openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key[1], max_retries=0)
    assert wait_until(lambda: f"chat-{kind}" in [m.id for m in models.models.list()])
    home, workdir = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    workdir.mkdir()
    (home / "config.toml").write_text(CONFIG.format(model=f"chat-{kind}", base_url=gateway.url + "/v1"))
    proof = workdir / "proof.txt"
    command = f"printf codex-was-here > {proof}"
    prompt = "Write the proof file. " + directive(tool="exec_command", tool_args={"cmd": command})

    result = codex_exec(home, workdir, api_key[1], prompt)

    assert result.returncode == 0, result.stderr
    assert proof.exists() and proof.read_text() == "codex-was-here", result.stderr
    assert result.stdout.strip() == FIVE_WORDS, result.stderr
    # The command, then the answer in words: two model calls, each billed once.
    assert model_calls(mock) == 2, result.stderr
    records = key_usage_records(api_key[0], 2)
    assert len(records) == 2, result.stderr
    for record in records:
        assert (record.endpoint, record.status, record.provider_name) == ("responses", "ok", kind)
        assert record.public_model == f"chat-{kind}" and record.streamed
        assert record.prompt_tokens > 0 and record.completion_tokens > 0 and not record.tokens_estimated
