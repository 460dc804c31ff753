"""Configuration as code: one YAML file declaring tenants, members, providers, deployments, routes,
limits and the cache and guardrail policies (docs/config.md).

`schema` reads and checks a file (errors name the path and the line), `apply` turns it into a plan
of changes and applies it, `export` writes the database back in the same form. The management
commands `apply_config` and `export_config` are thin shells around them.
"""
