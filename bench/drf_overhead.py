#!/usr/bin/env python3
"""CPU that the DRF wrapper (bench/drf_front.py) adds to one /v1 call, measured in process.

    python3 bench/drf_overhead.py [--calls 20000] [--repeats 7]

bench/run.py --drf compares whole calls under wrk, which on a busy machine
swings by more than the few percent the decision needs. This times the two
wrappers alone around the same trivial handler (the key already found, a fixed
JSON answer): routing/front/endpoint.py's `endpoint` and the DRF view, each the
best of `--repeats` rounds of process CPU time, so other processes' load
mostly falls out. Divide the difference by a whole call's CPU from bench/run.py.
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")  # no request log line per call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()

    import django

    django.setup()
    from django.test import RequestFactory

    from bench import drf_front
    from routing.front.endpoint import endpoint
    from routing.front.pipeline import json_response, key_of

    answer = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}'

    async def handler(request, call):
        await key_of(request)
        return json_response(answer)

    plain = endpoint("chat.completions", "POST")(handler)

    async def post(self, request):
        return json_response(answer)

    drf = type("BenchView", (drf_front.GatewayView,), {"endpoint": "chat.completions", "post": post}).as_view()
    factory = RequestFactory()
    body = b'{"model": "bench-chat", "messages": [{"role": "user", "content": "Hello there"}]}'

    def request():
        r = factory.post("/v1/chat/completions", body, content_type="application/json",
                         HTTP_AUTHORIZATION="Bearer sk-bench")
        r.gateway_key = object()  # found: neither wrapper reaches keys/auth.py
        return r

    async def rounds(view) -> float:
        best = float("inf")
        for _ in range(opts.repeats):
            requests = [request() for _ in range(opts.calls)]
            started = time.process_time()
            for r in requests:
                response = await view(r)
            best = min(best, time.process_time() - started)
            assert response.status_code == 200, response.content
        return best * 1000 / opts.calls

    async def measure():
        await rounds(plain), await rounds(drf)  # warm up
        return await rounds(plain), await rounds(drf)

    plain_ms, drf_ms = asyncio.run(measure())
    print(f"plain endpoint wrapper: {plain_ms * 1000:.1f} us CPU per call")
    print(f"DRF view wrapper:       {drf_ms * 1000:.1f} us CPU per call")
    print(f"DRF adds:               {(drf_ms - plain_ms) * 1000:.1f} us CPU per call")


if __name__ == "__main__":
    main()
