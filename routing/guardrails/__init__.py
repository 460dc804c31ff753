"""Guardrails: checks on a call's prompt and answer, as stages of the request path (docs/guardrails.md).

models.py holds the policies, detectors.py what is recognised, remote.py the checks that call out
(moderation, webhooks), policies.py how a call's checks are found and run, stage.py the stages.
"""
