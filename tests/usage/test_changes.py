"""The report's "what changed" on generated usage: each measure in its sentence, against the
trailing 14 days' median, and nothing said of what held steady."""

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from usage.changes import what_changed
from usage.models import UsageRecord


def day_of_calls(tenant, key, day: date, *, prompt: int, cached: int, errors: int, route: str = "main") -> list:
    return [UsageRecord(request_id=f"req_{uuid.uuid4().hex}", tenant=tenant, api_key=key, key_prefix=key.prefix,
                        created_at=datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=9, minutes=i),
                        endpoint="chat.completions", route=route, public_model="gpt-big", provider_name="openai",
                        prompt_tokens=prompt, completion_tokens=prompt // 2, total_tokens=prompt + prompt // 2,
                        cached_tokens=cached, cost_usd=Decimal("0.10"),
                        status="upstream_error" if i < errors else "ok") for i in range(20)]


def test_what_changed_names_tokens_errors_and_cache_moves_and_not_steady_spend(tenant, api_key, settings):
    settings.REPORT_CHANGES = 20
    key = api_key[0]
    reported = date(2026, 11, 19)
    rows = []
    for back in range(1, 15):  # 20 calls a day, 150 tokens each, 80% of prompts from the cache, no errors
        rows += day_of_calls(tenant, key, reported - timedelta(days=back), prompt=100, cached=80, errors=0)
    rows += day_of_calls(tenant, key, reported, prompt=400, cached=0, errors=6)  # the same $2, but...
    UsageRecord.objects.bulk_create(rows)

    said = what_changed(UsageRecord.objects.filter(tenant=tenant), "day", reported, reported + timedelta(days=1),
                        ZoneInfo("UTC"))
    model = [s for s in said if s.startswith("model gpt-big")]
    assert model == [
        "model gpt-big read 0.0% of its prompt tokens from the cache yesterday, against a 14-day median of 80.0%.",
        "model gpt-big failed 30.0% of its requests yesterday, against a 14-day median of 0.0%.",
        "model gpt-big used 600 tokens per request yesterday, 4.0x its 14-day median of 150."]
    assert {s.split(" read ")[0] for s in said if " read " in s} == {
        f"key {key.prefix}…", "model gpt-big", "route main", "provider openai"}
    assert not [s for s in said if " spent " in s]  # $2 a day, as every day
    assert len(said) == 12

    settings.REPORT_CHANGES = 6  # the strongest first: the cache moves (8.0), then the errors (3.0)
    said = what_changed(UsageRecord.objects.filter(tenant=tenant), "day", reported, reported + timedelta(days=1),
                        ZoneInfo("UTC"))
    assert len(said) == 6 and all(" read " in s for s in said[:4]) and all(" failed " in s for s in said[4:])
