"""Identity rules, without I/O."""

from __future__ import annotations

import pytest

from ironcart.contracts.identity import scopes_for_roles
from ironcart.identity.domain import (
    InvalidScope,
    WeakPassword,
    check_password_policy,
    granted_scopes,
    normalise_email,
    parse_scopes,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob@example.com \n", "bob@example.com"),
        ("ｃａｒｏｌ@example.com", "carol@example.com"),  # full-width letters fold (NFKC)
    ],
    ids=["case", "whitespace", "full-width"],
)
def test_emails_are_normalised(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    "password",
    [
        "short-pass1",  # 11 characters
        "a" * 129,
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "aaaaaaaaaaaaaaaa",
        "ababababababab",
    ],
    ids=["too-short", "too-long", "is-email", "is-email-upper", "one-char", "two-chars"],
)
def test_password_policy_refuses(password: str) -> None:
    with pytest.raises(WeakPassword):
        check_password_policy(password, email="alice@example.com")


def test_password_policy_refuses_the_local_part() -> None:
    with pytest.raises(WeakPassword):
        check_password_policy("alice.wonderland", email="Alice.Wonderland@example.com")


@pytest.mark.parametrize(
    "password",
    ["exactly-12ch", "correct horse battery staple", "ü" * 6 + "ßéèêàç", "x1" * 32 + "yz"],
    ids=["twelve", "passphrase", "unicode", "sixty-six"],
)
def test_password_policy_accepts(password: str) -> None:
    check_password_policy(password, email="alice@example.com")


def test_admin_role_grants_staff_scope() -> None:
    assert scopes_for_roles({"admin"}) == frozenset({"admin", "staff"})
    assert scopes_for_roles({"customer"}) == frozenset({"customer"})
    assert scopes_for_roles({"unknown"}) == frozenset()


def test_scope_requests_are_checked_against_what_is_allowed() -> None:
    allowed = frozenset({"staff", "admin"})
    assert granted_scopes(allowed=allowed, requested=frozenset()) == allowed
    assert granted_scopes(allowed=allowed, requested=frozenset({"staff"})) == {"staff"}
    with pytest.raises(InvalidScope):
        granted_scopes(allowed=allowed, requested=frozenset({"root"}))


@pytest.mark.parametrize(
    "raw",
    ["UPPER", "a" * 80, "bad scope!", " ".join(["s"] * 33)],
    ids=["upper", "long", "punctuation", "too-many"],
)
def test_malformed_scopes_are_refused(raw: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scopes(raw)
