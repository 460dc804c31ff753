"""A short run of the benchmark, so that it cannot rot. No timing is asserted."""

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_runs_and_prints_its_table(django_db_setup):
    result = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| (chat|stream|embeddings)", line)]
    assert len(rows) == 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        rps, errors = float(cells[2]), int(cells[6])
        assert rps > 0 and errors == 0, row
        if cells[0] == "stream":
            assert re.match(r"[\d.]+ / [\d.]+", cells[11]), row  # time to first token measured
    slow = re.search(r"Slow streams: (\d+) at once.*: (\d+) completed, errors: none", result.stdout)
    assert slow and slow.group(1) == slow.group(2), result.stdout[-2000:]
