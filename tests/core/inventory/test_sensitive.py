"""Sensitive data rules: a labelled corpus (recall >= 95%, no hits on negatives), locations, no values."""

from __future__ import annotations

import base64
import json
import random

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from tlsmirror.inventory.sensitive import (
    DEFAULT_NEEDS_CHAR,
    DEFAULT_NEEDS_PREFIX,
    DEFAULT_RULES,
    SensitiveRules,
    luhn_ok,
    scan_request,
)

RULES = SensitiveRules()
RND = random.Random(95)


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(str(RND.randrange(10)) for _ in range(length - len(prefix) - 1))
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def alnum(n: int, chars: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") -> str:
    return "".join(RND.choice(chars) for _ in range(n))


def corpus() -> list[tuple[str, str | None]]:
    """(text, expected type or None)."""
    items: list[tuple[str, str | None]] = []
    for prefix, length in [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                           ("6011", 16), ("35", 16), ("4", 19), ("4", 13)] * 5:
        n = luhn_complete(prefix, length)
        fmt = RND.choice(["plain", "spaces", "dashes"])
        if fmt != "plain" and length == 16:
            n = (" " if fmt == "spaces" else "-").join(n[i:i + 4] for i in range(0, 16, 4))
        items.append((f"card {n} exp 12/29", "card_number"))
        bad = n[:-1] + str((int(n[-1]) + 1) % 10)
        items.append((f"card {bad} exp 12/29", None))
    for user, dom in [("jane.doe", "example.com"), ("a+tag", "mail.example.org"), ("x_y", "sub.domain.io"),
                      ("first.last", "company.co.uk"), ("k", "b.de")] * 4:
        items.append((f"mail me at {user}@{dom}, ok", "email"))
    for _ in range(20):
        tok = (b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "."
               + b64url(json.dumps({"sub": alnum(8), "exp": RND.randrange(10**9)}).encode()) + "." + b64url(
                   RND.randbytes(64)))
        items.append((f"Bearer {tok}", "jwt"))
    for _ in range(10):
        items.append(("key=AKIA" + alnum(16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), "aws_access_key"))
        items.append(("ghp_" + alnum(36), "github_token"))
        items.append(("k=AIza" + alnum(35), "gcp_api_key"))
        items.append(("ya29." + alnum(60), "gcp_oauth_token"))
        items.append(("sk_live_" + alnum(24), "stripe_key"))
    key = ec.generate_private_key(ec.SECP256R1())
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()
        items.append((pem, "private_key"))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    items.append((public, None))
    for iban in ["DE89370400440532013000", "GB82WEST12345698765432", "FR1420041010050500013M02606",
                 "NL91ABNA0417164300", "DE89 3704 0044 0532 0130 00", "CH9300762011623852957"]:
        items.append((f"iban {iban}", "iban"))
    items.append(("iban DE89370400440532013001", None))
    for phone in ["+49 30 1234567", "+1 (415) 555-2671", "+442071838750", "+33 1 23 45 67 89"]:
        items.append((f"call {phone}", "phone_number"))
    for ssn in ["123-45-6789", "078-05-1120", "219-09-9999"]:
        items.append((f"ssn {ssn}", "us_ssn"))
    items.append(("ssn 000-12-3456", None))
    for nino in ["AB123456C", "JG 10 37 59 A"]:
        items.append((f"nino {nino}", "uk_nino"))
    items.append(("nino GB123456C", None))
    items.append(("dni 12345678Z", "es_dni"))
    items.append(("dni 12345678A", None))
    for neg in ["order 1234", "version 2024-05-01", "uuid 0b7c5e2d-1c9a-4f7e-9a63-0c5a2f0e8d11", "hello world",
                "ts 1714557600123"]:
        items.append((neg, None))
    return items


def test_corpus_recall_and_precision() -> None:
    items = corpus()
    positives = [(t, e) for t, e in items if e]
    hits = sum(1 for t, e in positives if e in RULES.types_in(t))
    recall = hits / len(positives)
    missed = [(e, t[:40]) for t, e in positives if e not in RULES.types_in(t)]
    assert recall >= 0.95, missed
    negatives = [t for t, e in items if e is None]
    false = [(t, RULES.types_in(t)) for t in negatives if RULES.types_in(t)]
    assert not false
    # every default rule is exercised by the corpus
    assert {r.type for r in DEFAULT_RULES} - {e for _, e in positives} <= {"aws_secret_key", "slack_token",
                                                                             "gcp_service_account"}


def test_random_16_digit_non_luhn_never_hit() -> None:
    rnd = random.Random(16)
    n = 0
    while n < 20000:
        s = str(rnd.randrange(10**15, 10**16))
        if luhn_ok(s):
            continue
        n += 1
        assert not RULES.types_in(s), s
        assert not RULES.types_in(f"id {s} end"), s


def test_locations_and_no_values() -> None:
    card = luhn_complete("4", 16)
    found = scan_request(RULES, ["users", "jane%40example.com"], [("card", card)],
                         [("Authorization", "Bearer x"), ("X-Contact", "+49 30 1234567")],
                         request_body={"user": {"emails": ["a@b.example"], "iban": "DE89370400440532013000"}},
                         response_text="-----BEGIN PRIVATE KEY-----\nxx\n")
    assert found == {("email", "path"), ("card_number", "query:card"), ("phone_number", "header:x-contact"),
                     ("email", "request.body:user.emails[]"), ("iban", "request.body:user.iban"),
                     ("private_key", "response.body:$")}
    text = json.dumps(sorted(found))
    for value in (card, "jane", "a@b.example", "DE89", "1234567"):
        assert value not in text


def test_configurable() -> None:
    rules = SensitiveRules.configured(disabled=["email"], extra={"employee_id": r"\bEMP-\d{6}\b"})
    assert rules.types_in("x@y.example EMP-123456") == {"employee_id"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text(s: str) -> None:
    RULES.types_in(s)
    scan_request(RULES, [s], [(s, s)], [(s, s)], request_text=s)


def _needed(text: str) -> bool:
    return DEFAULT_NEEDS_CHAR.search(text) is not None or DEFAULT_NEEDS_PREFIX.search(text) is not None


_EXTRA_POSITIVES = ["AWS secret = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"[:40], "xoxb-abcdefghijkl",
                    '{"type": "service_account"}', "AIza" + "b" * 35, "ghp_" + "a" * 36,
                    "AKIAIOSFODNN" + "ABCDEFGH", "github_pat_" + "a" * 82]


def test_every_default_match_holds_what_the_quick_filter_needs() -> None:
    # QuickRules answers "nothing" for a string neither search finds: sound only if every match of every
    # default rule holds one of those characters or prefixes
    texts = [t for t, _ in corpus()] + _EXTRA_POSITIVES
    for r in DEFAULT_RULES:
        matched = 0
        for t in texts:
            for m in r.pattern.finditer(t):
                matched += 1
                assert _needed(m.group(0)), (r.type, m.group(0)[:40])
        assert matched, r.type


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("AKIzaSxoghpuEYJeyb_-.@+0123456789 \"'=:\u0663sSecrtw/"), max_size=80))
def test_quick_filter_never_hides_a_match(s: str) -> None:
    if not _needed(s):
        assert RULES.types_in(s) == set()
