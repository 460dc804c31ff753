"""Every tenant's prompt templates as the hot path reads them: loaded whole, kept per process until a
change is announced ("prompts", gateway_project.lib.config_cache), so no query runs on the path."""

from dataclasses import dataclass

from gateway_project.lib import config_cache, errors

from .models import DEFAULT_LABEL, PromptLabel, PromptTemplate, PromptVersion


@dataclass(frozen=True, slots=True)
class Version:
    template: str
    number: int
    messages: tuple[dict, ...]
    variables: frozenset[str]
    model: str
    parameters: dict


@dataclass(frozen=True, slots=True)
class Template:
    versions: dict[int, Version]
    labels: dict[str, int]

    def pick(self, wanted: str | None) -> Version | None:
        """A version by number or label; with none asked for, the `production` label's, else the latest."""
        if wanted is None:
            number = self.labels.get(DEFAULT_LABEL) or max(self.versions, default=None)
        elif wanted.isdigit():
            number = int(wanted)
        else:
            number = self.labels.get(wanted)
        return self.versions.get(number) if number is not None else None


def load() -> dict[tuple[int, str], Template]:
    names = dict(PromptTemplate.objects.values_list("id", "name"))
    tenants = dict(PromptTemplate.objects.values_list("id", "tenant_id"))
    versions: dict[int, dict[int, Version]] = {}
    for v in PromptVersion.objects.all():
        versions.setdefault(v.template_id, {})[v.number] = Version(
            names[v.template_id], v.number, tuple(v.messages), frozenset(v.variables), v.model, dict(v.parameters))
    labels: dict[int, dict[str, int]] = {}
    for label in PromptLabel.objects.select_related("version"):
        labels.setdefault(label.template_id, {})[label.name] = label.version.number
    return {(tenants[t], name): Template(versions.get(t, {}), labels.get(t, {})) for t, name in names.items()}


_table = config_cache.Reloaded("prompts", load, "prompt templates")


async def version_for(tenant_id: int, ref: dict) -> Version:
    """The version a request's reference names, of its tenant's templates only (404 otherwise)."""
    template = (await _table.get()).get((tenant_id, ref["id"]))
    param = ref["param"]
    if template is None:
        raise errors.GatewayError(404, f"No prompt template '{ref['id']}'.", param=f"{param}.id",
                                  code="prompt_not_found")
    version = template.pick(ref["version"])
    if version is None:
        raise errors.GatewayError(404, f"The prompt template '{ref['id']}' has no version or label "
                                  f"'{ref['version'] or DEFAULT_LABEL}'.", param=f"{param}.version",
                                  code="prompt_version_not_found")
    return version
