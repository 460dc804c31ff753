"""The cost reports' charts: PNG images drawn by matplotlib, attached to the email by content id.

Drawn on matplotlib's Agg canvas through its object API (a Figure per chart, no
pyplot), so nothing global is shared between two reports built in one worker and
no display is needed. Every chart is WIDTH x HEIGHT pixels, whatever its data,
so mail clients lay the report out before the image loads.
"""

import io
from datetime import date
from decimal import Decimal

WIDTH, HEIGHT = 800, 280  # pixels: the main chart
MODEL_HEIGHT = 200  # pixels: each top model's chart
DPI = 100
CURRENT, PREVIOUS = "#417690", "#e65100"  # the admin's blue, and orange


def _money(value: float, _position=None) -> str:
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if abs(value) >= 0.01 else f"${value:.2g}"


def cost_per_day(title: str, days: list[date], current: list[Decimal], previous: list[Decimal],
                 labels: tuple[str, str], height: int = HEIGHT) -> bytes:
    """Bars: the spend of each day; a line: the spend of the matching day of the span before.

    `previous` is aligned by position (its day 1 under the current day 1) and may be
    shorter or longer (months differ); `labels` name the two series in the legend."""
    # Deferred: matplotlib takes about half a second to import, and only the report job draws.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(days)))
    axes.bar(positions, [float(v) for v in current], color=CURRENT, label=labels[0], width=0.7)
    before = [float(v) for v in previous[:len(days)]]
    if before:
        axes.plot(positions[:len(before)], before, color=PREVIOUS, marker="o", markersize=3, linewidth=1.5,
                  label=labels[1])
    step = max(1, len(days) // 10)
    axes.set_xticks(positions[::step], [f"{d:%b} {d.day}" for d in days[::step]], fontsize=8)
    axes.yaxis.set_major_formatter(FuncFormatter(_money))
    axes.tick_params(axis="y", labelsize=8)
    top = max([float(v) for v in current] + before + [0.0])
    axes.set_ylim(0, top * 1.3 if top else 1)  # headroom for the legend above the tallest bar
    axes.set_title(title, fontsize=10, loc="left")
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, frameon=False, loc="upper left", ncols=2)
    figure.tight_layout(pad=0.6)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()
