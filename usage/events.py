"""A usage event fits the ledger from the moment it is built.

Its text comes partly from the caller (the model name they asked for) and the
upstream (error codes, usage counts); PostgreSQL refuses NUL in text and
values longer than a column or beyond an integer column's range, and one
refused event would stop the whole batch it is written in. So every string
field has NUL and invalid UTF-8 replaced (U+FFFD, visible, and never merged
into another real name) and is cut to its column, and every count is clamped
to its column's range: the record is still written, with the call's real
tokens and cost. What the database still refuses goes to a dead letter
(usage.recorder).
"""

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations

from .models import UsageRecord

_TEXT: dict[str, int] = {}
_COUNTS: dict[str, tuple[int, int]] = {}
for _field in UsageRecord._meta.concrete_fields:
    if isinstance(_field, models.CharField):
        _TEXT[_field.attname] = _field.max_length
    elif isinstance(_field, models.IntegerField) and not _field.is_relation:
        _COUNTS[_field.attname] = BaseDatabaseOperations.integer_field_ranges[_field.get_internal_type()]


def safe_text(value: str, limit: int | None = None) -> str:
    """`value` without NUL or lone surrogates, at most `limit` characters."""
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value if limit is None else value[:limit]


def clean(event: dict) -> dict:
    """The event made safe to write, in place (and returned)."""
    for name, limit in _TEXT.items():
        value = event.get(name)
        if isinstance(value, str) and (len(value) > limit or not value.isprintable()):
            event[name] = safe_text(value, limit)
    for name, (low, high) in _COUNTS.items():
        value = event.get(name)
        if isinstance(value, int) and not low <= value <= high:
            event[name] = min(max(value, low), high)
    if isinstance(event.get("prompt"), str):
        event["prompt"] = safe_text(event["prompt"])
    return event
