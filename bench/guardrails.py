"""CPU of the guardrail checks, in process (best of 5 rounds of process CPU time).

    python3 bench/guardrails.py

Rows: the PII, secrets and blocked-term checks together on a 2,000-character prompt
(plain prose with numbers and dates; and the same with six planted findings), and the
output checks on a 21-chunk stream through the hold-back window (what they add per stream).
"""

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402

django.setup()

from providers.adapters.base import StreamEvent  # noqa: E402
from routing.guardrails import detectors, policies, streaming  # noqa: E402
from routing.guardrails.stage import Guard  # noqa: E402

PROSE = ("The quarterly report for 2024 shows 14 new customers, 3 closed tickets and revenue of 1,250.00 EUR; "
         "version 2.3.1 shipped on 2024-05-01 to room 101. ")
CLEAN = (PROSE * 20)[:2000]
PLANTED = ("Mail jane.roe@example.org, call +1 415-555-2671, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 "
           "0130 00, key AKIAIOSFODNN7EXAMPLE, host 203.0.113.7. " + CLEAN)[:2000]


def check(kind: str, **extra) -> policies.Check:
    return policies.Check(label=f"bench/{kind}#1", kind=kind, input=True, output=True, action="redact",
                          closed=True, timeout_ms=1000, pii_types=detectors.PII_TYPES, **extra)


CHECKS = (check("pii"), check("secrets"), check("terms", compiled=(detectors.compile_terms(["falcon", "zebra"]),)))


def best(fn, n: int) -> float:
    rounds = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            fn()
        rounds.append((time.process_time() - started) / n)
    return min(rounds)


def input_checks(text: str):
    def run():
        asyncio.run(policies.run_checks(CHECKS, "input", [text], None, policies.Vault(), policies.Decisions()))
    return run


def input_checks_sync(text: str):
    def run():
        detectors.pii(text)
        detectors.secrets(text)
        CHECKS[2].compiled[0].search(text)
    return run


class FakeCall:
    def __init__(self):
        self.guard = Guard(policies.Resolved((), CHECKS[:2], False, 96))
        self.guardrails = None
        self.form = None  # the chat form (not a native Anthropic or Responses stream)


def chunks(n: int = 21):
    words = (PROSE * 3).split(" ")[:n]
    return [[StreamEvent(None, has_content=True, chunks=[{"id": "x", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": " " + w}, "finish_reason": None}]}])] for w in words] + [
        [StreamEvent(None, done=True, chunks=[{"id": "x", "choices": [{"index": 0, "delta": {},
                                                                       "finish_reason": "stop"}]}])]]


async def _drain(reads):
    async for _ in reads:
        pass


async def _source(items):
    for events in items:
        yield events


def stream(with_checks: bool):
    def run():
        items = chunks()
        reads = _source(items)
        if with_checks:
            reads = streaming.held_back(FakeCall(), reads)
        asyncio.run(_drain(reads))
    return run


if __name__ == "__main__":
    detectors.secrets("warm up")
    print("| what | CPU |")
    print("| --- | ---: |")
    print(f"| PII + secrets + terms, 2,000 clean characters | {best(input_checks_sync(CLEAN), 300) * 1e3:.3f} ms |")
    print(f"| PII + secrets + terms, 2,000 characters, 6 findings | {best(input_checks_sync(PLANTED), 300) * 1e3:.3f} ms |")
    print(f"| the same through the check runner (asyncio.run each) | {best(input_checks(CLEAN), 100) * 1e3:.3f} ms |")
    plain, checked = best(stream(False), 100), best(stream(True), 100)
    print(f"| a 21-chunk stream, no stage (asyncio.run each) | {plain * 1e3:.3f} ms |")
    print(f"| the same with PII + secrets output checks | {checked * 1e3:.3f} ms (+{(checked - plain) * 1e3:.3f} ms) |")
