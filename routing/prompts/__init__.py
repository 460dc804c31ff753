"""Prompt templates: per tenant, immutable published versions, labels; expanded by a stage (docs/templates.md)."""
