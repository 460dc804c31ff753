"""The settings the request path reads on every call, as plain attributes.

`django.conf.settings` is a LazyObject: every read of it runs a Python-level
`__getattribute__` (about 0.5 us on these machines), and a call read it some
thirty times. `conf.NAME` reads the setting once and keeps it; a test that
changes a setting (override_settings, pytest-django's `settings` fixture)
sends Django's `setting_changed`, which drops the kept value, so the next
read sees the change. Settings are not changed at run time otherwise.
"""

from django.conf import settings
from django.core.signals import setting_changed


class _Settings:
    def __getattr__(self, name: str):  # a first read: kept in the instance, read directly from then on
        value = getattr(settings, name)
        setattr(self, name, value)
        return value


conf = _Settings()


def _forget(setting: str, **kwargs) -> None:
    conf.__dict__.pop(setting, None)


setting_changed.connect(_forget, dispatch_uid="gateway_project.lib.settings_cache")
