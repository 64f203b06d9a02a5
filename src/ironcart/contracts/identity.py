"""What other contexts may know of identity: who is calling, and with which rights."""

from __future__ import annotations

from dataclasses import dataclass, field

CUSTOMER = "customer"
STAFF = "staff"
ADMIN = "admin"

# A role grants its own scope and the scopes of the roles it includes.
ROLE_GRANTS: dict[str, frozenset[str]] = {
    CUSTOMER: frozenset({CUSTOMER}),
    STAFF: frozenset({STAFF}),
    ADMIN: frozenset({ADMIN, STAFF}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a person (user_id set) or a service client (client_id set)."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    user_id: str | None = None
    client_id: str | None = None
    token_id: str | None = None

    @property
    def is_user(self) -> bool:
        return self.user_id is not None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def scopes_for_roles(roles: frozenset[str] | set[str]) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_GRANTS.get(role, frozenset())
    return frozenset(granted)
