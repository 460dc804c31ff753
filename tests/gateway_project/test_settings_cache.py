"""The request path reads its settings once (gateway_project/lib/settings_cache.py), and still sees a
setting that a test, or override_settings, changes."""

from django.conf import settings as django_settings
from django.test import override_settings

from gateway_project.lib.settings_cache import conf


def test_a_changed_setting_is_read_again(settings):
    settings.GATEWAY_MAX_MESSAGES = 7
    assert conf.GATEWAY_MAX_MESSAGES == 7
    settings.GATEWAY_MAX_MESSAGES = 9
    assert conf.GATEWAY_MAX_MESSAGES == 9


def test_an_override_ends_with_its_block():
    before = conf.GATEWAY_MAX_MESSAGES
    assert before == django_settings.GATEWAY_MAX_MESSAGES
    with override_settings(GATEWAY_MAX_MESSAGES=before + 1):
        assert conf.GATEWAY_MAX_MESSAGES == before + 1
    assert conf.GATEWAY_MAX_MESSAGES == before


def test_a_setting_added_by_an_override_is_gone_after_it():
    with override_settings(GATEWAY_NOT_A_SETTING=1):
        assert conf.GATEWAY_NOT_A_SETTING == 1
    assert not hasattr(conf, "GATEWAY_NOT_A_SETTING")
