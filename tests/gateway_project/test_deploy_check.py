"""Production settings pass Django's deployment checklist."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_check_deploy_is_clean_with_production_settings():
    env = {**os.environ, "HTTPS": "true", "DEBUG": "false"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_without_https_the_checklist_names_what_is_missing():
    env = {**os.environ, "HTTPS": "false", "DEBUG": "false"}
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "SESSION_COOKIE_SECURE" in result.stdout + result.stderr
