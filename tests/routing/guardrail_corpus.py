"""A corpus of prompts with planted findings and near-misses, for the guardrail detectors.

Each prompt is filler text with one value planted: either a real finding of a type (a
valid checksum, a parseable number) or a near-miss that looks like one (a card number
failing Luhn, an IBAN with wrong check digits, an e-mail-like string with no domain).
`python3 -m tests.routing.guardrail_corpus` prints recall and precision per type
(the figures in docs/guardrails.md).
"""

import random

from stdnum import luhn

FILLER = ["Please summarise the meeting notes", "The quarterly report is attached", "Our order ships on 2024-05-01",
          "Version 2.3.1 fixed 14 bugs in 3 days", "Call the office at extension 42", "Room 101 is free at 10:30",
          "Invoice 88213 totals 1,250.00 EUR", "Ticket #4521 was closed"]

REAL = {
    "email": ["jane.roe@example.org", "j.smith+news@mail.example.co.uk", "ops-team@sub.example.com",
              "first_last@example.io", "a1b2@example.net"],
    "phone": ["+1 415-555-2671", "+44 20 7946 0958", "+49 30 901820", "(415) 555-2671", "+33 1 42 68 53 00",
              "+81 3-1234-5678", "020 7946 0958"],  # the last in the UK's own form: the check's region is US
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
             "NL91ABNA0417164300", "ES9121000418450200051332"],
    "national_id": ["123-45-6789", "12345678Z", "2345 6789 0124", "943 476 5919"],
    "ip": ["203.0.113.7", "10.0.0.1", "192.168.1.20", "2001:db8::1", "fe80::1ff:fe23:4567:890a"],
    "secret": ["AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
               "xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx",
               "sk_live_" + "a" * 24, "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n"
               "-----END RSA PRIVATE KEY-----",
               "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
}
NEAR = {
    "email": ["JANE.ROE@EXAMPLE", "john@localhost", "user@@example.com", "name@example", "@example.com", "mail at example dot com"],
    "phone": ["+1 000-000-0000", "12345", "2024-05-01"],
    "iban": ["DE00 3704 0044 0532 0130 00", "GB00WEST12345698765432", "XX1420041010050500013M02606"],
    "national_id": ["000-12-3456", "666-12-3456", "12345678A", "1234 5678 9012"],
    "ip": ["999.1.1.1", "1.2.3.4.5", "256.256.256.256"],
    "secret": ["AKIA1234", "ghp_short", "sk_test_", "the key is in the drawer"],
}


def cards(rng: random.Random, count: int) -> tuple[list[str], list[str]]:
    """Card numbers passing Luhn, and the same numbers with the last digit off by one."""
    real, near = [], []
    for _ in range(count):
        body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
        number = body + luhn.calc_check_digit(body)
        wrong = body + str((int(number[-1]) + 1) % 10)
        spaced = lambda n: " ".join(n[i:i + 4] for i in range(0, 16, 4))  # noqa: E731
        real.append(spaced(number) if len(real) % 2 else number)
        near.append(spaced(wrong) if len(near) % 2 else wrong)
    return real, near


def corpus(seed: int = 7) -> list[tuple[str, str | None, tuple[int, int] | None]]:
    """(prompt, planted type or None for a near-miss, planted span)."""
    rng = random.Random(seed)
    real, near = dict(REAL), dict(NEAR)
    real["card"], near["card"] = cards(rng, 10)
    prompts = []
    for kind, values in real.items():
        for value in values:
            head = f"{rng.choice(FILLER)}. Contact: "
            prompts.append((head + value + f". {rng.choice(FILLER)}.", kind, (len(head), len(head) + len(value))))
    for values in near.values():
        for value in values:
            prompts.append((f"{rng.choice(FILLER)}. Reference: {value}. {rng.choice(FILLER)}.", None, None))
    return prompts


def scores() -> dict[str, tuple[float, float, int, int, int]]:
    """Per type: (recall, precision, true positives, false negatives, false positives)."""
    from routing.guardrails import detectors

    types = (*detectors.PII_TYPES, "secret")
    tp = dict.fromkeys(types, 0)
    fn, fp = dict(tp), dict(tp)
    for text, kind, span in corpus():
        found = detectors.pii(text) + detectors.secrets(text)
        hit = False
        for finding in found:
            if kind == finding.type and finding.start < span[1] and span[0] < finding.end:
                hit = True
            else:
                fp[finding.type] += 1
        if kind is not None:
            tp[kind] += hit
            fn[kind] += not hit
    return {t: (tp[t] / ((tp[t] + fn[t]) or 1), tp[t] / ((tp[t] + fp[t]) or 1), tp[t], fn[t], fp[t]) for t in types}


if __name__ == "__main__":
    import django

    django.setup()
    print("| type | recall | precision | found | missed | false alarms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, (recall, precision, tp, fn, fp) in scores().items():
        print(f"| {kind} | {recall:.2f} | {precision:.2f} | {tp} | {fn} | {fp} |")
