"""Identity rules: accounts, password policy, OAuth2 grants. Pure Python, no I/O.

IronCartError
 ├── OAuthError                  RFC 6749 error responses (`error` field)
 │    ├── InvalidRequest         error=invalid_request
 │    ├── InvalidClient          error=invalid_client (401)
 │    ├── InvalidGrant           error=invalid_grant (bad credentials, used/revoked refresh token)
 │    ├── UnsupportedGrantType   error=unsupported_grant_type
 │    └── InvalidScope           error=invalid_scope
 ├── WeakPassword                the password policy refused a new password
 ├── WrongPassword               the current password given to change it is wrong
 ├── EmailAlreadyRegistered      (raised to staff tools only; self-registration hides it)
 └── UserNotFound
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from ironcart.contracts.identity import ADMIN, CUSTOMER, STAFF, scopes_for_roles
from ironcart.platform.errors import BadRequest, Conflict, ErrorKind, InvalidRequest, NotFound

ROLES = frozenset({CUSTOMER, STAFF, ADMIN})
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 128
NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
SCOPE_PATTERN = re.compile(r"^[a-z][a-z0-9:._-]{0,63}$")


class OAuthError(BadRequest):
    code = "identity.oauth_error"
    error: ClassVar[str] = "invalid_request"

    def __init__(self, description: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            description, headers=headers, error=self.error, error_description=description
        )


class OAuthInvalidRequest(OAuthError):
    code = "identity.invalid_request"
    title = "Invalid token request"
    error = "invalid_request"


class InvalidClient(OAuthError):
    code = "identity.invalid_client"
    title = "Client authentication failed"
    kind = ErrorKind.UNAUTHENTICATED
    error = "invalid_client"


class InvalidGrant(OAuthError):
    code = "identity.invalid_grant"
    title = "Invalid grant"
    error = "invalid_grant"


class UnsupportedGrantType(OAuthError):
    code = "identity.unsupported_grant_type"
    title = "Unsupported grant type"
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    code = "identity.invalid_scope"
    title = "Invalid scope"
    error = "invalid_scope"


class WeakPassword(InvalidRequest):
    code = "identity.weak_password"
    title = "Password does not meet the policy"


class WrongPassword(InvalidRequest):
    code = "identity.wrong_password"
    title = "Current password is wrong"


class EmailAlreadyRegistered(Conflict):
    code = "identity.email_already_registered"
    title = "Email already registered"


class UserNotFound(NotFound):
    code = "identity.user_not_found"
    title = "User not found"


def normalise_email(raw: str) -> str:
    """Trim, apply Unicode NFKC and lower-case the whole address: one account per mailbox."""
    return unicodedata.normalize("NFKC", raw).strip().lower()


def check_email(address: str) -> None:
    """A normalised address must still fit (NFKC can lengthen it) and hold one `@`."""
    local, at, domain = address.rpartition("@")
    if len(address) > EMAIL_MAX_LENGTH or not at or not local or not domain:
        raise InvalidRequest(
            f"The email must be an address of at most {EMAIL_MAX_LENGTH} characters."
        )


def check_password_policy(password: str, *, email: str) -> None:
    """ASVS 2.1: at least 12 characters, up to 128, not the email or its local part."""
    length = len(password)
    if length < PASSWORD_MIN_LENGTH:
        raise WeakPassword(f"The password must have at least {PASSWORD_MIN_LENGTH} characters.")
    if length > PASSWORD_MAX_LENGTH:
        raise WeakPassword(f"The password must have at most {PASSWORD_MAX_LENGTH} characters.")
    folded = normalise_email(password)
    address = normalise_email(email)
    if folded in {address, address.partition("@")[0]}:
        raise WeakPassword("The password must not be the email address.")
    if len(set(password)) < 4:
        raise WeakPassword("The password must use more than three different characters.")


def parse_roles(roles: str | list[str] | frozenset[str]) -> frozenset[str]:
    values = roles.split() if isinstance(roles, str) else list(roles)
    unknown = set(values) - ROLES
    if unknown:
        raise InvalidRequest(f"Unknown roles: {', '.join(sorted(unknown))}.")
    return frozenset(values)


def parse_scopes(raw: str | None) -> frozenset[str]:
    if not raw:
        return frozenset()
    scopes = raw.split()
    if len(scopes) > 32 or not all(SCOPE_PATTERN.match(scope) for scope in scopes):
        raise InvalidScope("The scope parameter is malformed.")
    return frozenset(scopes)


def granted_scopes(*, allowed: frozenset[str], requested: frozenset[str]) -> frozenset[str]:
    """RFC 6749 3.3: no scope asked means all that is allowed; asking for more is refused."""
    if not requested:
        return allowed
    if not requested <= allowed:
        raise InvalidScope("The requested scope exceeds what this account may have.")
    return requested


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Refresh tokens and client secrets are high-entropy: a SHA-256 digest is enough to store."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    name: str
    roles: frozenset[str]
    password_hash: str
    is_active: bool
    created_at: datetime

    @property
    def scopes(self) -> frozenset[str]:
        return scopes_for_roles(self.roles)


@dataclass(frozen=True, slots=True)
class RefreshToken:
    id: str
    family_id: str
    user_id: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.used_at is None and self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class ServiceClient:
    client_id: str
    name: str
    secret_digest: str
    scopes: frozenset[str]
    is_active: bool


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None = None
