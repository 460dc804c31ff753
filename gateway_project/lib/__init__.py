"""The lower layer: what every app may import, importing no app itself.

Errors in OpenAI's shape, request ids, the reloading configuration cache, the
Redis pool and its health memo, metrics, the ORM thread, the job lock, log
formats, calendar periods, percentiles and the REST helpers. An app's code
never lives here; the architecture test (tests/gateway_project/test_architecture.py) holds it so.
"""
