"""The shipped price catalogue (price_catalogue.json): list prices of the common models of OpenAI,
Anthropic, Gemini and Cohere, with the date and page each provider's were taken from.

A deployment created with no price at all (every price empty or 0, no long-context threshold) gets
its upstream model's catalogue prices when it is saved (Deployment.save), from the admin, the
management API and `add_provider` alike; they stay editable, and a deployment created with any
price of its own is left as given. Read once per process, on the first deployment created.
"""

import functools
import json
import re
from decimal import Decimal
from pathlib import Path

# Catalogue entry names -> Deployment fields.
FIELDS = {
    "input": "input_price_per_mtok",
    "output": "output_price_per_mtok",
    "cached_input": "cached_input_price_per_mtok",
    "cache_write": "cache_write_price_per_mtok",
    "cache_write_1h": "cache_write_1h_price_per_mtok",
    "long_context_threshold": "long_context_threshold",
    "long_input": "long_input_price_per_mtok",
    "long_output": "long_output_price_per_mtok",
    "long_cached_input": "long_cached_input_price_per_mtok",
    "long_cache_write": "long_cache_write_price_per_mtok",
    "long_cache_write_1h": "long_cache_write_1h_price_per_mtok",
}
_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest|0)$")


@functools.cache
def catalogue() -> dict[str, dict]:
    with open(Path(__file__).with_name("price_catalogue.json"), encoding="utf-8") as f:
        return json.load(f)["models"]


def prices_for(upstream_model: str) -> dict[str, object] | None:
    """The Deployment fields the catalogue gives `upstream_model`, or None when it does not list it."""
    name = upstream_model.strip().lower().removeprefix("models/")
    entry = catalogue().get(name)
    while entry is None and _SUFFIX.search(name):
        name = _SUFFIX.sub("", name)
        entry = catalogue().get(name)
    if entry is None:
        return None
    return {FIELDS[key]: (int(value) if key == "long_context_threshold" else Decimal(value))
            for key, value in entry.items()}


def fill(deployment) -> bool:
    """Set the deployment's prices from the catalogue; whether it lists the upstream model."""
    prices = prices_for(deployment.upstream_model or "")
    for field, value in (prices or {}).items():
        setattr(deployment, field, value)
    return prices is not None
