"""Publishing a version and moving a label: the two writes of a template's life, each audited by name.

The admin, the management API and tests call these; both run in one transaction and write their
audit row (`prompt.publish`, `prompt.label`) with the version's or label's diff.
"""

import difflib

from django.db import transaction
from django.db.models import Max

from tenants import audit

from .models import DEFAULT_LABEL, PromptLabel, PromptTemplate, PromptVersion


def prompt_publish(template: PromptTemplate, messages: list, *, model: str = "", parameters: dict | None = None,
                   note: str = "", author=None, label: str | None = None) -> PromptVersion:
    """A new version of `template` (numbered after the last); `label` moves that label onto it.
    ValidationError when the messages or parameters are not a template's."""
    with transaction.atomic():
        PromptTemplate.objects.select_for_update().filter(pk=template.pk).first()  # one number at a time
        last = template.versions.aggregate(last=Max("number"))["last"] or 0
        version = PromptVersion(template=template, number=last + 1, messages=messages, model=model,
                                parameters=parameters or {}, note=note, author=author)
        version.full_clean(exclude=["template", "author"])
        with audit.named("prompt.publish", version):
            version.save()
        if label:
            label_move(template, label, version)
    return version


def label_move(template: PromptTemplate, name: str, version: PromptVersion) -> PromptLabel:
    """Point `name` at `version` (creating the label if new)."""
    with transaction.atomic():
        label = PromptLabel.objects.select_for_update().filter(template=template, name=name).first()
        label = label or PromptLabel(template=template, name=name or DEFAULT_LABEL)
        label.version = version
        label.full_clean(exclude=["template", "version"], validate_unique=False)
        label.clean()
        with audit.named("prompt.label", label):
            label.save()
    return label


def as_text(version: PromptVersion) -> list[str]:
    """A version as the lines a diff compares."""
    lines = [f"model: {version.model or '(the request’s)'}"]
    lines += [f"parameter {name}: {value!r}" for name, value in sorted((version.parameters or {}).items())]
    for i, message in enumerate(version.messages):
        lines.append(f"[{i}] {message['role']}:")
        lines += ["    " + line for line in message["content"].splitlines() or [""]]
    return lines


def version_diff(old: PromptVersion | None, new: PromptVersion) -> list[str]:
    """The unified diff from `old` to `new` (everything added, against none)."""
    before = as_text(old) if old is not None else []
    return list(difflib.unified_diff(before, as_text(new), f"v{old.number}" if old else "(none)",
                                     f"v{new.number}", lineterm=""))
