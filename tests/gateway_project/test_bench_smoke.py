"""A short run of the benchmark, so that it cannot rot. No timing is asserted."""

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_runs_and_prints_its_table(django_db_setup):
    result = subprocess.run([sys.executable, "bench/run.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # The main table's rows (13 cells) of chat, stream and embeddings scenarios.
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| (chat|stream|embeddings)", line)
            and len(line.strip("|").split("|")) == 13]
    # 10, the response cache's 5 (exact hit, miss, streamed hit, semantic hit, miss), the new-question chat
    # the miss is measured against, and the 2,000-character chat on the mock, the floor and the gateway,
    # then on the guarded model, the guarded stream and the stream with output checks only; and the gateway
    # under the other candidate servers (uvicorn, hypercorn) on chat and stream.
    assert len(rows) == 26, result.stdout[-3000:]
    candidates = {tuple(c.strip() for c in line.strip("|").split("|")[:2]) for line in rows}
    assert {("chat", "gateway under uvicorn"), ("stream", "gateway under hypercorn")} <= candidates
    beside = [line for line in result.stdout.splitlines() if line.startswith("| stream, guardrails |")
              and len(line.strip("|").split("|")) == 4]
    assert len(beside) == 1, result.stdout[-3000:]  # the guarded stream as a ratio of the plain one
    # The guardrails' pairs again in alternating rounds: each round's ratio, and their median.
    paired = re.search(r"^\| stream, output checks \| stream \| 1 \| ([\d.]+) \| ([\d.]+) \|$", result.stdout, re.M)
    assert paired and paired.group(1) == paired.group(2), result.stdout[-3000:]  # one round in a smoke run
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        rps, cpu, whole, errors = float(cells[2]), float(cells[3]), cells[4], int(cells[7])
        assert rps > 0 and errors == 0, row
        if cells[1].startswith("gateway"):  # the whole call: the gateway's CPU and the drain's and database's
            assert float(whole) > cpu, row
        if cells[0] == "stream":
            assert re.match(r"[\d.]+ / [\d.]+", cells[12]), row  # time to first token measured
    slow = re.search(r"Slow streams: (\d+) at once.*: (\d+) completed, errors: none", result.stdout)
    assert slow and slow.group(1) == slow.group(2), result.stdout[-2000:]
    # The load side counted apart: the slow mock began and ended every stream the gateway relayed.
    load = re.search(r"the slow mock \(\d+ processes\) began (\d+) streams, completed (\d+), saw 0 cut", result.stdout)
    assert load and load.group(1) == load.group(2) == slow.group(1), result.stdout[-2000:]
    # One client's latency measured while they were all open, and the whole call beside the floor.
    assert re.search(r"One client's JSON chat while \d+ of them were open: .* \(\d+ requests, 0 errors\)",
                     result.stdout), result.stdout[-2000:]
    assert re.search(r"^\| chat \| gateway \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$", result.stdout,
                     re.M), result.stdout[-3000:]


def test_instruction_count_runs_and_counts(django_db_setup):
    """bench/instructions.py under callgrind: a JSON chat, a stream and a Responses call, each counted in
    the millions of instructions, and the Responses row beside chat. Ten requests are too few to order
    the scenarios (a background task's tick falls on one or another): the load benchmark's figures are
    in docs/benchmarks.md."""
    result = subprocess.run([sys.executable, "bench/instructions.py", "--requests", "10", "--warm", "10",
                             "--scenario", "chat", "--scenario", "stream", "--scenario", "responses"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {cells[0]: cells[1:] for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in result.stdout.splitlines()
        if line.startswith("| ") and "---" not in line)}
    chat, stream = float(rows["chat"][0]), float(rows["stream"][0])
    assert 1 < chat < 50 and 1 < stream < 50, result.stdout
    beside_chat, responses, ratio = map(float, rows["responses"])  # the responses/chat table's row
    assert beside_chat == chat and 1 < responses < 50, result.stdout
    assert abs(ratio - responses / chat) < 0.001, result.stdout
