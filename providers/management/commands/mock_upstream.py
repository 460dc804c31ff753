from django.core.management.base import BaseCommand

from providers import mock_upstream


class Command(BaseCommand):
    help = "Serve the mock upstream (every supported provider's wire format) used by tests, the demo and benchmarks."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--latency-ms", type=int)
        parser.add_argument("--chunks", type=int)
        parser.add_argument("--chunk-delay-ms", type=int)
        parser.add_argument("--require-key", help="Answer 401 unless this key is sent (in the header each provider uses)")
        parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                            help="granian costs less per chunk (bench/run.py's 10,000 slow streams)")

    def handle(self, host, port, latency_ms, chunks, chunk_delay_ms, require_key, server, **options):
        mock_upstream.configure(require_key=require_key, latency_ms=latency_ms, chunks=chunks,
                                chunk_delay_ms=chunk_delay_ms)
        mock_upstream.serve(host, port, server=server)
