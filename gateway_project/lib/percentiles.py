"""Percentiles as PostgreSQL's percentile_cont computes them, for figures computed in Python."""


def percentile(values: list[int], fraction: float) -> float:
    """percentile_cont: linear interpolation between the closest ranks (`values` not empty)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
