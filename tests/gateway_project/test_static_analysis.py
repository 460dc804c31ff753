"""bandit finds nothing that was not reviewed (see [tool.bandit] in pyproject.toml)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_bandit_reports_nothing_unreviewed():
    result = subprocess.run([sys.executable, "-m", "bandit", "-q", "-c", "pyproject.toml", "-r", ".", "-f", "csv"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    findings = result.stdout.strip().splitlines()[1:]
    assert result.returncode == 0 and not findings, "\n".join(findings) + result.stderr[-2000:]
