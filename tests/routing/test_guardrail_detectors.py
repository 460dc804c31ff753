"""The detectors on a corpus of planted findings and near-misses (tests/routing/guardrail_corpus.py),
and the redaction and restore they feed."""

import pytest

from routing.guardrails import detectors, policies
from tests.routing.guardrail_corpus import corpus, scores


@pytest.mark.parametrize("kind", [*detectors.PII_TYPES, "secret"])
def test_each_type_is_found_with_high_recall_and_precision(kind):
    recall, precision, found, missed, false_alarms = scores()[kind]
    assert found > 0
    assert recall >= 0.8 and precision >= 0.9, (recall, precision, missed, false_alarms)


def test_near_misses_that_fail_their_checksum_are_not_findings():
    for text, kind, _ in corpus():
        if kind is None:
            found = [f for f in detectors.pii(text) if f.type in ("card", "iban", "national_id")]
            assert found == [], (text, found)


def test_redaction_numbers_placeholders_by_type_and_restore_reverses_it():
    vault = policies.Vault()
    text = "a@example.com, b@example.com and a@example.com"
    redacted = policies.redacted(text, detectors.pii(text), vault)
    assert redacted == "[EMAIL_1], [EMAIL_2] and [EMAIL_1]"
    assert vault.restore("see [EMAIL_2] and [EMAIL_9]") == "see b@example.com and [EMAIL_9]"


def test_a_blocked_term_is_matched_as_a_whole_word_in_any_case():
    terms = detectors.compile_terms(["Project Falcon", "c++"])
    assert [m.group() for m in terms.finditer("project falcon and Project Falconry")] == ["project falcon"]
