"""The response cache: answers served again from the gateway, exact or semantic, scoped to the tenant.

policies.py resolves which policy covers a call (config, loaded with the routing
table: no query and no Redis round trip for a call no policy covers); keys.py
hashes the normalised request; store.py keeps entries in Redis (in process in
embedded mode); replay.py serves an entry through the caller's own front as if
the upstream had answered; stage.py is the lookup (at ADMITTED) and the store
(at OUTPUT) on the request path; semantic.py the similarity index.
"""
