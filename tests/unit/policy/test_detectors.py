"""Sensitive values found in texts and validated, with the real libraries (no mocks)."""

from __future__ import annotations

import base64
import itertools
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy.detectors import NAMES, DetectorError, Finding, Scanner

ALL = Scanner(NAMES)


def found(scanner: Scanner, text: str) -> list[tuple[str, str]]:
    """(kind, matched text) of each finding."""
    return [(f.kind, text[f.start : f.end]) for f in scanner.find(text)]


def only(name: str, phone_region: str | None = None) -> Scanner:
    return Scanner([name], phone_region=phone_region)


def luhn_complete(prefix: str) -> str:
    """``prefix`` and the digit that makes it pass Luhn (computed here, not by the module)."""
    for digit in "0123456789":
        number = prefix + digit
        total = 0
        for i, ch in enumerate(reversed(number)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


# email


def test_emails_in_context() -> None:
    text = "Contact <alice.smith+tag@mail.example.co.uk>, or bob_99@Example.COM."
    assert found(only("email"), text) == [
        ("email", "alice.smith+tag@mail.example.co.uk"),
        ("email", "bob_99@Example.COM"),
    ]


def test_email_quoted_in_sql_or_url_keeps_the_text_around_it() -> None:
    text = "UPDATE u SET email='carol@example.org' -- https://dave@host.example.net/x"
    assert found(only("email"), text) == [
        ("email", "carol@example.org"),
        ("email", "dave@host.example.net"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "user@localhost",
        "a@b.c",
        "@example.com",
        "foo@.com",
        "foo@-bar.com",
        "no at sign here",
        "x" * 65 + "@example.com",
    ],
)
def test_not_emails(text: str) -> None:
    assert only("email").find(text) == []


def test_email_with_a_64_character_local_part_is_one() -> None:
    text = " " + "x" * 64 + "@example.com"
    assert found(only("email"), text) == [("email", text[1:])]


def test_email_with_an_idn_domain() -> None:
    assert found(only("email"), "to: ops@xn--bcher-kva.example.xn--p1ai;") == [
        ("email", "ops@xn--bcher-kva.example.xn--p1ai")
    ]


# card


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "378282246310005",
        "3782 822463 10005",
        "6011000990139424",
        "4000 0000 0000 0000 006",
    ],
)
def test_valid_cards(card: str) -> None:
    assert found(only("card"), f"paid with {card}, thanks") == [("card", card)]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "4111111111111112",
        luhn_complete("170000000000"),  # epoch milliseconds: no payment network starts with 1
        luhn_complete("900000000000000"),
        luhn_complete("4111111111"),  # 11 digits: 12 is the least
        luhn_complete("4111111111111111111"),  # 20 digits: 19 is the most
        "4111 1111-1111 1111",  # one separator throughout
        "0." + luhn_complete("411111111111111"),  # a decimal's digits
        "x" + luhn_complete("411111111111111"),  # part of a word
        luhn_complete("411111111111111") + "abc",
    ],
)
def test_not_cards(text: str) -> None:
    assert only("card").find(text) == []


def test_card_followed_by_other_figures() -> None:
    assert found(only("card"), "4111 1111 1111 1111 1234 and 5555-5555-5555-4444-12") == [
        ("card", "4111 1111 1111 1111"),
        ("card", "5555-5555-5555-4444"),
    ]


def test_card_preceded_by_other_figures_in_its_run() -> None:
    assert found(only("card"), "ref 2025 4111 1111 1111 1111") == [("card", "4111 1111 1111 1111")]
    # "2024 4111 1111" passes Luhn as well: the two overlap, and are covered as one.
    assert found(only("card"), "ref 2024 4111 1111 1111 1111") == [
        ("card", "2024 4111 1111 1111 1111")
    ]


# iban


@pytest.mark.parametrize(
    "iban",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
    ],
)
def test_valid_ibans(iban: str) -> None:
    assert found(only("iban"), f"IBAN: {iban}.") == [("iban", iban)]


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 33",  # mod-97 fails
        "GB00 WEST 1234 5698 7654 32",
        "DE89370400440532013001",
        "XX82WEST12345698765432",  # no such country
        "GB82WEST12345698765432abc",  # part of a word
        "NL91ABNA04171643",  # too short for NL
    ],
)
def test_not_ibans(text: str) -> None:
    assert only("iban").find(text) == []


def test_iban_followed_by_a_word_or_another_iban() -> None:
    assert found(only("iban"), "GB82 WEST 1234 5698 7654 32 PAID") == [
        ("iban", "GB82 WEST 1234 5698 7654 32")
    ]
    assert found(only("iban"), "GB82 WEST 1234 5698 7654 32 DE89 3704 0044 0532 0130 00") == [
        ("iban", "GB82 WEST 1234 5698 7654 32"),
        ("iban", "DE89 3704 0044 0532 0130 00"),
    ]


# national identity numbers


@pytest.mark.parametrize(
    "number",
    [
        "536-90-4399",  # US SSN
        "AB 12 34 56 C",  # UK NINO
        "AB123456C",
        "2 95 10 99 126 111 93",  # French NIR
        "295109912611193",
        "36 574 261 809",  # German Steuer-IdNr
        "36574261809",
        "12345678Z",  # Spanish DNI
        "54362315K",
        "X2482300W",  # Spanish NIE
        "RCCMNL83S18D969H",  # Italian codice fiscale
        "rccmnl83s18d969h",
        "880320-0016",  # Swedish personnummer
        "131052-308T",  # Finnish HETU
        "390.533.447-05",  # Brazilian CPF
    ],
)
def test_valid_national_ids(number: str) -> None:
    assert found(only("national_id"), f"id {number} on file") == [("national_id", number)]


@pytest.mark.parametrize(
    "text",
    [
        "666-12-3456",  # SSN area 666 is never issued
        "078-05-1120",  # the SSN printed on a wallet insert
        "536904399",  # a bare nine digit number is no SSN
        "GB 12 34 56 C",  # NINO prefix never issued
        "DA123456C",  # NINO's first letter cannot be D
        "AB123456E",  # NINO's suffix is A to D
        "2 95 10 99 126 111 94",  # NIR key
        "36 574 261 808",  # Steuer-IdNr check digit
        "11 111 111 111",  # Steuer-IdNr: a digit repeated too often
        "12345678A",  # DNI letter
        "X2482300A",  # NIE letter
        "RCCMNL83S18D969A",  # codice fiscale check letter
        "880320-0017",  # personnummer Luhn
        "881320-0016",  # personnummer: no 13th month
        "131052-308A",  # HETU check character
        "390.533.447-06",  # CPF check digits
        "A536-90-4399",  # part of a word
    ],
)
def test_not_national_ids(text: str) -> None:
    assert only("national_id").find(text) == []


def test_national_id_kind_tried_after_another_fails_at_the_same_place() -> None:
    # "12345678Z" is a DNI; at the same place the NIE, SSN... patterns do not match, and
    # a DNI with a wrong letter right before it must not hide it.
    text = "12345678A 12345678Z"
    assert found(only("national_id"), text) == [("national_id", "12345678Z")]


# phone


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+1 650-253-0000",
        "+1 (650) 253-0000",
        "+33 1 23 45 67 89",
        "+4930123456",
    ],
)
def test_valid_international_phones(phone: str) -> None:
    assert found(only("phone"), f"call {phone} today") == [("phone", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "+1 650-253-000",  # too short for its plan
        "+44 20 7946 095",
        "+999 1234 5678",  # no such country code
        "(650) 253-0000",  # national: needs a region
        "650-253-0000",
        "x+44 20 7946 0958",  # part of a word
        "+44 20 7946 0958abc",
    ],
)
def test_not_international_phones(text: str) -> None:
    assert only("phone").find(text) == []


def test_phone_followed_by_other_figures() -> None:
    assert found(only("phone"), "+44 20 7946 0958 2024") == [("phone", "+44 20 7946 0958")]


def test_phones_of_a_region() -> None:
    us = only("phone", phone_region="us")
    text = "call (650) 253-0000 or 650.253.0001, list: 650-253-0002 650-253-0003 +44 20 7946 0958"
    assert found(us, text) == [
        ("phone", "(650) 253-0000"),
        ("phone", "650.253.0001"),
        ("phone", "650-253-0002"),
        ("phone", "650-253-0003"),
        ("phone", "+44 20 7946 0958"),
    ]
    # Not US numbers: an area code cannot start with 1, nor is a timestamp a number.
    assert us.find("150-253-0000") == []
    assert us.find("at 2024-05-01 12:00:00 ok") == []
    assert us.find("2024050112:30") == []


def test_phone_region_must_be_known() -> None:
    with pytest.raises(DetectorError, match="phone_region 'XX'"):
        Scanner(["phone"], phone_region="XX")


# aws_key


@pytest.mark.parametrize(
    "key", ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A", "AROA3XFRBF535PLBIFPI"]
)
def test_aws_key_ids(key: str) -> None:
    assert found(only("aws_key"), f'{{"AccessKeyId": "{key}"}}') == [("aws_key", key)]


@pytest.mark.parametrize(
    "text",
    [
        "AKIAIOSFODNN7EXAMPL",  # too short
        "AKIAIOSFODNN7EXAMPLEX",  # too long
        "xAKIAIOSFODNN7EXAMPLE",
        "AKIBIOSFODNN7EXAMPLE",  # no such prefix
    ],
)
def test_not_aws_key_ids(text: str) -> None:
    assert only("aws_key").find(text) == []


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "text",
    [
        f"aws_secret_access_key = {SECRET}\n",
        f"export AWS_SECRET_ACCESS_KEY='{SECRET}'",
        f'{{"SecretAccessKey": "{SECRET}", "SessionToken": "x"}}',
        f"secretAccessKey: {SECRET}",
    ],
)
def test_labelled_aws_secret_keys(text: str) -> None:
    assert found(only("aws_key"), text) == [("aws_key", SECRET)]


def test_unlabelled_40_characters_are_not_a_secret_key() -> None:
    assert only("aws_key").find(f"checksum {SECRET}") == []
    assert only("aws_key").find(f"aws_secret_access_key = {SECRET}X") == []


# jwt


def test_real_jwt_in_a_header() -> None:
    token = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, "k" * 32, algorithm="HS256")
    assert found(only("jwt"), f"Authorization: Bearer {token}\r\n") == [("jwt", token)]


def test_jwt_signed_with_an_ec_key_and_one_with_no_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = jwt.encode({"sub": "bob"}, key, algorithm="ES256", headers={"kid": "k1"})
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    unsigned = f"{header}.eyJzdWIiOiJib2IifQ."
    assert found(only("jwt"), f"{signed} {unsigned}") == [("jwt", signed), ("jwt", unsigned)]


def test_jwe_compact_with_five_segments() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"dir","enc":"A256GCM"}').rstrip(b"=").decode()
    token = f"{header}..bm9uY2Vub25jZQ.Y2lwaGVydGV4dA.dGFndGFndGFndGFn"
    assert found(only("jwt"), f"token={token}") == [("jwt", token)]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text",
    [
        "abc.def.ghi",
        "eyJhbGciOiJIUzI1NiJ9abc.def",  # two segments
        "eyJhbGciOiJIUzI1Ni.eyJzdWIiOiIxIn0.c2ln",  # header is not valid base64url JSON
        f"{b64(json.dumps({'typ': 'JWT'}).encode())}.eyJzdWIiOiIxIn0.c2ln",  # no alg
        f"{b64(b'[1, 2]')}.eyJzdWIiOiIxIn0.c2ln",  # not an object
        "eyJ8kq2Lz0pQmW3xV7.rT5yU1iO9pA.sD4fG6hJ8kL",  # random base64url
        f"x{b64(json.dumps({'alg': 'HS256'}).encode())}.eyJzdWIiOiIxIn0.c2ln",  # in a word
    ],
)
def test_not_jwts(text: str) -> None:
    assert only("jwt").find(text) == []


# private_key


def pem(
    key: PrivateKeyTypes, fmt: serialization.PrivateFormat, password: bytes | None = None
) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@pytest.mark.parametrize(
    ("make", "fmt", "password", "label"),
    [
        ("rsa", serialization.PrivateFormat.PKCS8, None, "PRIVATE KEY"),
        ("rsa", serialization.PrivateFormat.TraditionalOpenSSL, None, "RSA PRIVATE KEY"),
        ("ec", serialization.PrivateFormat.TraditionalOpenSSL, None, "EC PRIVATE KEY"),
        ("ed", serialization.PrivateFormat.OpenSSH, None, "OPENSSH PRIVATE KEY"),
        ("rsa", serialization.PrivateFormat.PKCS8, b"pw", "ENCRYPTED PRIVATE KEY"),
        ("rsa", serialization.PrivateFormat.TraditionalOpenSSL, b"pw", "RSA PRIVATE KEY"),
    ],
)
def test_private_key_blocks(
    rsa_key: rsa.RSAPrivateKey,
    make: str,
    fmt: serialization.PrivateFormat,
    password: bytes | None,
    label: str,
) -> None:
    keys: dict[str, PrivateKeyTypes] = {
        "rsa": rsa_key,
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }
    block = pem(keys[make], fmt, password).strip()
    assert block.startswith(f"-----BEGIN {label}-----")
    text = f"key:\n{block}\nthat was the key"
    assert found(only("private_key"), text) == [("private_key", block)]


def test_private_key_escaped_in_json_and_public_key_alone() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    block = pem(key, serialization.PrivateFormat.PKCS8).strip()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    escaped = json.dumps({"private_key": block, "public_key": public})
    findings = found(only("private_key"), escaped)
    assert findings == [("private_key", json.dumps(block)[1:-1])]
    assert only("private_key").find(public) == []


def test_private_key_cut_short_runs_to_the_end() -> None:
    block = pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8)
    cut = "x " + block[: len(block) // 2]
    assert only("private_key").find(cut) == [Finding(2, len(cut), "private_key")]


# custom patterns


def test_custom_patterns_by_name() -> None:
    scanner = Scanner(patterns=[("ticket", r"(?i)tkt-[a-z0-9]{8}"), ("employee", r"EMP-\d{6}")])
    # One pattern's flag does not reach the other (they are also searched as one).
    assert found(scanner, "EMP-123456 filed TKT-AB12cd34 for EMP-12345 and emp-654321") == [
        ("employee", "EMP-123456"),
        ("ticket", "TKT-AB12cd34"),
    ]
    assert scanner.find("nothing here") == []


def test_custom_patterns_that_cannot_be_joined_are_searched_alone() -> None:
    # \Q quotes to the end of its pattern, so the joined pattern would not close.
    scanner = Scanner(patterns=[("literal", r"\Qa.b"), ("digits", r"\d{4}")])
    assert found(scanner, "axb a.b 1234") == [("literal", "a.b"), ("digits", "1234")]


def test_custom_pattern_matches_of_nothing_are_ignored() -> None:
    # Not refused (it matches no empty text), yet it matches nothing at each word boundary.
    scanner = Scanner(patterns=[("emp", r"(?:EMP-\d+)?\b")])
    assert found(scanner, "a EMP-12 b") == [("emp", "EMP-12")]


def test_custom_pattern_offsets_are_characters_not_bytes() -> None:
    scanner = Scanner(patterns=[("code", r"C-\d+")])
    text = "été 😀 C-42 ü"
    assert found(scanner, text) == [("code", "C-42")]


def test_custom_pattern_on_a_lone_surrogate() -> None:
    scanner = Scanner(patterns=[("code", r"C-\d+")])
    text = b"\xff C-42".decode("utf-8", "surrogateescape")
    assert found(scanner, text) == [("code", "C-42")]


def test_backtracking_bait_finishes() -> None:
    scanner = Scanner(patterns=[("bait", r"(a+)+$"), ("bait2", r"(x+x+)+y")])
    text = "a" * 100_000 + "!" + "x" * 100_000
    began = time.perf_counter()
    assert scanner.find(text) == []
    assert time.perf_counter() - began < 2


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [(r"(a)\1", "backreference"), (r"foo(?=bar)", "lookaround"), (r"(?<!x)y", "lookaround")],
)
def test_patterns_re2_refuses_name_the_pattern(pattern: str, reason: str) -> None:
    with pytest.raises(DetectorError, match="pattern 'mine'") as raised:
        Scanner(patterns=[("ok", "x"), ("mine", pattern)])
    assert reason in str(raised.value) or "not supported" in str(raised.value)


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ([("empty", "a*")], "matches the empty text"),
        ([("bad", "(")], "pattern 'bad'"),
        ([("", "x")], "pattern name ''"),
        ([("two words", "x")], "pattern name 'two words'"),
        ([("card", "x")], "already taken"),
        ([("x", "a"), ("x", "b")], "already taken"),
        ([("x",)], "pair"),
    ],
)
def test_bad_patterns(patterns: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(DetectorError, match=message):
        Scanner(patterns=patterns)


def test_bad_detector_names() -> None:
    with pytest.raises(DetectorError, match="unknown detector 'ssn'"):
        Scanner(["email", "ssn"])
    with pytest.raises(DetectorError, match="list of names"):
        Scanner("email")


def test_empty() -> None:
    assert Scanner().empty
    assert Scanner().find("alice@example.com") == []
    assert Scanner().redact("alice@example.com", lambda f, s: "x") is None
    assert not Scanner(["email"]).empty
    assert not Scanner(patterns=[("p", "x")]).empty


# overlaps and redaction


def test_overlapping_findings_are_merged_under_the_longest_kind() -> None:
    scanner = Scanner(patterns=[("left", "abc-def"), ("right", "def-ghi-jkl"), ("inner", "e")])
    assert scanner.find("abc-def-ghi-jkl and e") == [
        Finding(0, 15, "right"),
        Finding(20, 21, "inner"),
    ]


def test_overlap_tie_goes_to_the_first_then_to_the_built_in() -> None:
    scanner = Scanner(patterns=[("left", "abc-d"), ("right", "c-def")])
    assert scanner.find("abc-def") == [Finding(0, 7, "left")]
    same = Scanner(["email"], [("mail", r"\S+@\S+")])
    assert same.find("a@example.com") == [Finding(0, 13, "email")]


def test_a_card_inside_an_email_is_one_finding() -> None:
    text = "4111111111111111@example.com"
    assert ALL.find(text) == [Finding(0, len(text), "email")]


def test_redact_marks_each_finding() -> None:
    text = "mail alice@example.com, card 4111 1111 1111 1111."
    seen: list[tuple[Finding, str]] = []

    def mark(finding: Finding, value: str) -> str:
        seen.append((finding, value))
        return f"[{finding.kind}]"

    assert ALL.redact(text, mark) == "mail [email], card [card]."
    assert [value for _, value in seen] == ["alice@example.com", "4111 1111 1111 1111"]
    assert ALL.redact("nothing to see, 42 times", mark) is None


def test_scanner_is_reusable_and_findings_are_in_order() -> None:
    text = "+44 20 7946 0958 then alice@example.com then AKIAIOSFODNN7EXAMPLE"
    first = ALL.find(text)
    assert [f.kind for f in first] == ["phone", "email", "aws_key"]
    assert ALL.find(text) == first


# large and hostile texts: every scan is linear, so each finishes well within the bound


HOSTILE = {
    "letters": "a" * 100_000,
    "at signs": "a@" * 50_000,
    "dotted local parts": "a." * 50_000 + "@x",
    "long domain": "x@" + "a-" * 50_000,
    "digits": "1" * 100_000,
    "digit groups": "4111 " * 20_000,
    "dashed digits": "1-" * 50_000,
    "plus signs": "+1 2 " * 20_000,
    "iban-like": "GB82 " * 20_000,
    "iban prefix then letters": "GB82" + "A" * 100_000,
    "key id prefixes": "AKIA" * 25_000,
    "jwt-like": "eyJhbGciOi." * 9_000,
    "dotted jwt": "eyJ" + "a." * 50_000,
    "pem begins": "-----BEGIN PRIVATE KEY-----\n" * 3_500,
    "secret labels": "aws_secret_access_key=" * 4_500,
    "nino-like": "AB 12 34 56 " * 8_000,
    "timestamps": "2024-05-01 12:00:00 " * 5_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_texts_finish(name: str) -> None:
    scanners = [
        Scanner(NAMES, [("emp", r"EMP-\d{6}")]),
        Scanner(NAMES, phone_region="FR"),
    ]
    for scanner in scanners:
        began = time.perf_counter()
        scanner.find(HOSTILE[name])
        assert time.perf_counter() - began < 5


# properties

VALUES = {
    "email": ["alice@example.com", "bob.smith+x@mail.example.org"],
    "card": ["4111 1111 1111 1111", "5555555555554444", "3782 822463 10005"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "national_id": ["536-90-4399", "12345678Z", "RCCMNL83S18D969H", "2 95 10 99 126 111 93"],
    "phone": ["+44 20 7946 0958", "+1 650-253-0000"],
    "aws_key": ["AKIAIOSFODNN7EXAMPLE"],
    "jwt": [jwt.encode({"sub": "carol"}, "s" * 32, algorithm="HS256")],
    "private_key": [
        pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.PKCS8).strip()
    ],
}
SENSITIVE = [(kind, value) for kind, values in VALUES.items() for value in values]
FILLER = st.text(alphabet="abcd ,;:", max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(FILLER, st.sampled_from(SENSITIVE)), max_size=8),
)
def test_redact_leaves_no_validated_value(parts: list[str | tuple[str, str]]) -> None:
    pieces: list[str] = []
    placed: list[tuple[int, int, str]] = []  # where each sensitive value was put, and its kind
    pos = 0
    for part in parts:
        piece = part if isinstance(part, str) else part[1]
        if not isinstance(part, str):
            placed.append((pos, pos + len(piece), part[0]))
        pieces.append(piece)
        pos += len(piece) + 1
    text = " ".join(pieces)
    findings = ALL.find(text)
    out = ALL.redact(text, lambda finding, value: f"<{finding.kind}>")
    if not placed:
        assert findings == []
        assert out is None
        return
    assert out is not None
    for start, end, kind in placed:
        # Found, whole, though values next to each other may be merged into one finding.
        assert any(f.start <= start and end <= f.end for f in findings), (kind, text)
        assert text[start:end] not in out
    for finding in findings:
        assert text[finding.start : finding.end] not in out
    assert ALL.find(out) == []


TEXT = st.text(
    alphabet=st.sampled_from([*"0123456789 -.+@()AKIGBXYZaeyJw:/\n", "é", "😀"]),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_findings_are_sorted_apart_and_redact_splices_them(text: str) -> None:
    scanner = Scanner(NAMES, [("digits", r"\d{3}-\d{3}")], phone_region="GB")
    findings = scanner.find(text)
    for finding in findings:
        assert 0 <= finding.start < finding.end <= len(text)
    for before, after in itertools.pairwise(findings):
        assert before.end <= after.start
    values: list[str] = []

    def keep(finding: Finding, value: str) -> str:
        values.append(value)
        return value

    out = scanner.redact(text, keep)
    assert out == (text if findings else None)
    assert values == [text[f.start : f.end] for f in findings]
