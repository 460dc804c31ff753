"""The cost report as staff and tenant admins receive it, on a real SMTP server: the chart images
travel inside the HTML's multipart/related part, referenced by content id, and decode as PNGs of
the promised size; the text part carries the same figures; the forecast and the run-out day are
the arithmetic on the generated records; "what changed" names the key that jumped. The HTML as
Chromium renders it is kept with the browser screenshots."""

import base64
import io
import os
import re
import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from PIL import Image
from playwright.sync_api import sync_playwright

from keys import services as key_services
from tenants.models import Membership
from tests.conftest import ROOT
from usage import reports
from usage.models import Limit, UsageRecord

SHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", ROOT / "tests" / "screenshots"))
BLUE = (0x41, 0x76, 0x90)  # the bars' colour (usage/charts.py)


def backend_cost(day: int) -> Decimal:
    return Decimal(2 + day % 3)  # $2, $3 or $4 a day


def generate(tenant) -> tuple:
    """November 1st to 19th: key "backend" spends $2-4 a day on gpt-big; key "batch" $1 a day on
    gpt-small from the 5th, then $20 on the 19th ($19 of it on gpt-big)."""
    backend, _ = key_services.issue(tenant, "backend")
    batch, _ = key_services.issue(tenant, "batch")
    rows, spend = [], {}

    def add(key, day: int, model: str, cost: Decimal, n: int = 10) -> None:
        for i in range(n):
            rows.append(UsageRecord(
                request_id=f"req_{uuid.uuid4().hex}", created_at=datetime(2026, 11, day, 8, tzinfo=UTC)
                + timedelta(minutes=7 * i), tenant=tenant, api_key=key, key_prefix=key.prefix,
                endpoint="chat.completions", public_model=model, provider_name="openai", prompt_tokens=100,
                completion_tokens=50, total_tokens=150, cost_usd=cost / n))
        spend[day] = spend.get(day, Decimal(0)) + cost

    for day in range(1, 20):
        add(backend, day, "gpt-big", backend_cost(day))
        if 5 <= day <= 18:
            add(batch, day, "gpt-small", Decimal(1))
    add(batch, 19, "gpt-big", Decimal(19))
    add(batch, 19, "gpt-small", Decimal(1))
    UsageRecord.objects.bulk_create(rows)
    return backend, batch, spend


def images(message) -> dict[str, tuple]:
    """content id -> (the part, the multipart it sits in)."""
    found = {}
    for container in message.walk():
        if container.is_multipart():
            for part in container.iter_parts():
                if part.get_content_type() == "image/png":
                    found[part["Content-ID"].strip("<>")] = (part, container)
    return found


def test_the_emailed_report_has_its_charts_inline_and_the_same_figures_in_text(tenant, smtp, monkeypatch):
    owner = get_user_model().objects.create_user("olga", "olga@example.com", "x")
    Membership.objects.create(tenant=tenant, user=owner, role="owner")
    get_user_model().objects.create_superuser("sam", "sam@example.com", "x")
    Limit.objects.create(tenant=tenant, budget_usd=Decimal("100"), period="month")
    _, batch, spend = generate(tenant)

    assert reports.send_reports("day", today=date(2026, 11, 20)) == 2
    message = next(m for to, m in smtp.messages if to == ["olga@example.com"])
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()

    # The images: in multipart/related beside the HTML, each referenced by cid:, PNGs of the set size.
    found = images(message)
    assert set(found) == {"cost-per-day", "cost-model-1", "cost-model-2"}  # the chart, and gpt-big's, gpt-small's
    for cid, (part, container) in found.items():
        assert container.get_content_type() == "multipart/related"
        assert next(container.iter_parts()).get_content_type() == "text/html"
        assert f'src="cid:{cid}"' in html
        picture = Image.open(io.BytesIO(part.get_content()))
        assert picture.format == "PNG"
        assert picture.size == ((800, 280) if cid == "cost-per-day" else (800, 200))
        assert BLUE in {colour[:3] for _, colour in picture.convert("RGBA").getcolors(1 << 20)}  # bars were drawn
    assert message.get_content_type() == "multipart/mixed" and next(message.iter_attachments()).get_filename(
    ).endswith(".csv")

    # The chart's figures, day by day (the 13th to the 19th against the 6th to the 12th), in both parts.
    for offset in range(7):
        day = date(2026, 11, 13 + offset)
        line = f"{day:%a %Y-%m-%d}  ${spend[day.day]:.6f}  (${spend[day.day - 7]:.6f})"
        assert line in text
        assert f"<td>{day:%a %Y-%m-%d}</td><td align=\"right\">${spend[day.day]:.6f}</td>" in html

    # The forecast: spent to the 19th, plus 11 days at the mean of the 13th to the 19th (least, most).
    week = [spend[d] for d in range(13, 20)]
    spent, rate = sum(spend.values()), sum(week) / 7
    estimate = (spent + 11 * rate).quantize(Decimal("0.000001"))
    low, high = spent + 11 * min(week), spent + 11 * max(week)
    assert f"the month ends at ${estimate} (${low:.6f} to ${high:.6f}); ${spent:.6f} spent so far." in text
    assert f"<strong>${estimate}</strong> (${low:.6f} to ${high:.6f})" in html
    # The budget: $100 a month, reached at that rate during the day (100 - spent) / rate days after the 20th.
    runs_out = date(2026, 11, 20) + timedelta(days=int((100 - spent) / rate))
    assert spent < 100 and runs_out == date(2026, 11, 21)
    assert f"whole tenant, Calendar month: ${spent:.6f} of $100.000000 ({round(spent)}%), runs out on 2026-11-21" in text
    assert "runs out on 2026-11-21 at this rate" in html

    # What changed: the batch key's jump, against its own 14-day median, and where it went.
    jump = f"key {batch.prefix}… spent $20.00 yesterday, 20.0x its 14-day median of $1.00; 95% of it on gpt-big."
    assert jump in text and jump in html
    assert text.index("What changed") < text.index(jump)

    # The HTML as a mail client shows it: Chromium, with the attached images in place of their cids.
    shown = html
    for cid, (part, _) in found.items():
        shown = shown.replace(f"cid:{cid}", "data:image/png;base64," + base64.b64encode(part.get_content()).decode())
    SHOTS.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # no ORM call below; Django's teardown after it
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 900, "height": 1000})
        page.set_content(shown)
        assert page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth)") == [800, 800, 800]
        page.screenshot(path=str(SHOTS / "cost-report-email.png"), full_page=True)
        browser.close()
    assert (SHOTS / "cost-report-email.png").stat().st_size > 30_000


def test_the_monthly_and_overall_reports_chart_the_whole_month(tenant, smtp):
    get_user_model().objects.create_superuser("sam", "sam@example.com", "x")
    _, _, spend = generate(tenant)
    assert reports.send_reports("month", today=date(2026, 12, 1)) == 1  # staff only: the tenant has no admins
    [(to, message)] = smtp.messages
    text = message.get_body(("plain",)).get_content()
    assert to == ["sam@example.com"] and "All tenants: monthly cost report" in text
    days = re.findall(r"^  \w{3} 2026-11-\d\d  \$", text, re.M)
    assert len(days) == 3 * 30  # the chart, gpt-big's and gpt-small's: every day of November
    assert f"Tue 2026-11-03  ${spend[3]:.6f}  ($0.000000)" in text  # against October, which spent nothing
    assert "Forecast for December 2026" in text  # the month the report is read in
    assert set(images(message)) == {"cost-per-day", "cost-model-1", "cost-model-2"}
