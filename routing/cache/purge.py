"""Purging cached answers: the one write the admin, the management API and the CLI share."""

from tenants import audit

from . import store


def cache_purge(tenant, model: str = "", entry: str = "") -> int:
    """Delete `tenant`'s cached answers (of one model or route, or one entry by its id); audited."""
    gone = store.purge(tenant.id, model, entry)
    audit.record("cache.purge", tenant, changes={"model": model, "entry": entry, "entries": gone})
    return gone
