"""Experiments: a route's traffic split between variants by weight, sticky per user (docs/templates.md)."""
