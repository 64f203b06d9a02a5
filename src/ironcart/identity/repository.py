"""Identity's tables and queries. Only this context touches `identity_*` tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ironcart.identity.domain import EmailAlreadyRegistered, RefreshToken, ServiceClient, User
from ironcart.platform.database import Timestamp, UnitOfWork, metadata

users = Table(
    "identity_users",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

user_roles = Table(
    "identity_user_roles",
    metadata,
    Column(
        "user_id", String(36), ForeignKey("identity_users.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("role", String(32), primary_key=True),
)

refresh_tokens = Table(
    "identity_refresh_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("token_digest", String(64), nullable=False, unique=True),
    Column("family_id", String(36), nullable=False, index=True),
    Column(
        "user_id",
        String(36),
        ForeignKey("identity_users.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("issued_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("used_at", Timestamp, nullable=True),
    Column("revoked_at", Timestamp, nullable=True),
)

clients = Table(
    "identity_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_digest", String(64), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("created_at", Timestamp, nullable=False),
)

signing_keys = Table(
    "identity_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("private_key_sealed", LargeBinary, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("retired_at", Timestamp, nullable=True),
    Index("ix_identity_signing_keys_retired_at", "retired_at"),
)


def utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SqlUserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, user: User) -> None:
        """Insert a user; `EmailAlreadyRegistered` if the unique email index refuses it."""
        try:
            await self._session.execute(
                insert(users).values(
                    id=user.id,
                    email=user.email,
                    name=user.name,
                    password_hash=user.password_hash,
                    is_active=user.is_active,
                    created_at=user.created_at,
                    updated_at=user.created_at,
                )
            )
        except IntegrityError:
            raise EmailAlreadyRegistered from None
        if user.roles:
            await self._session.execute(
                insert(user_roles), [{"user_id": user.id, "role": role} for role in user.roles]
            )

    async def get(self, user_id: str) -> User | None:
        return await self._one(users.c.id == user_id)

    async def get_by_email(self, email: str) -> User | None:
        return await self._one(users.c.email == email)

    async def email_taken(self, email: str) -> bool:
        row = await self._session.execute(select(users.c.id).where(users.c.email == email))
        return row.first() is not None

    async def update_name(self, user_id: str, name: str, *, now: datetime) -> None:
        await self._session.execute(
            update(users).where(users.c.id == user_id).values(name=name, updated_at=now)
        )

    async def update_password_hash(
        self, user_id: str, password_hash: str, *, now: datetime
    ) -> None:
        await self._session.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(password_hash=password_hash, updated_at=now)
        )

    async def set_roles(self, user_id: str, roles: frozenset[str]) -> None:
        await self._session.execute(delete(user_roles).where(user_roles.c.user_id == user_id))
        await self._session.execute(
            insert(user_roles), [{"user_id": user_id, "role": role} for role in roles]
        )

    async def _one(self, condition: object) -> User | None:
        row = (await self._session.execute(select(users).where(condition))).mappings().first()  # type: ignore[arg-type]
        if row is None:
            return None
        roles = await self._session.execute(
            select(user_roles.c.role).where(user_roles.c.user_id == row["id"])
        )
        return User(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            roles=frozenset(roles.scalars()),
            password_hash=row["password_hash"],
            is_active=bool(row["is_active"]),
            created_at=utc(row["created_at"]),
        )


class SqlRefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, token: RefreshToken, *, digest: str, issued_at: datetime) -> None:
        await self._session.execute(
            insert(refresh_tokens).values(
                id=token.id,
                token_digest=digest,
                family_id=token.family_id,
                user_id=token.user_id,
                issued_at=issued_at,
                expires_at=token.expires_at,
            )
        )

    async def get_by_digest(self, digest: str) -> RefreshToken | None:
        query = select(refresh_tokens).where(refresh_tokens.c.token_digest == digest)
        row = (await self._session.execute(query)).mappings().first()
        if row is None:
            return None
        return RefreshToken(
            id=row["id"],
            family_id=row["family_id"],
            user_id=row["user_id"],
            expires_at=utc(row["expires_at"]),
            used_at=utc(row["used_at"]) if row["used_at"] else None,
            revoked_at=utc(row["revoked_at"]) if row["revoked_at"] else None,
        )

    async def mark_used(self, token_id: str, *, now: datetime) -> bool:
        """Atomically claim a token for rotation; False if someone used or revoked it first."""
        result = await self._session.execute(
            update(refresh_tokens)
            .where(
                refresh_tokens.c.id == token_id,
                refresh_tokens.c.used_at.is_(None),
                refresh_tokens.c.revoked_at.is_(None),
            )
            .values(used_at=now)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def revoke_family(self, family_id: str, *, now: datetime) -> None:
        await self._session.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke_all_for_user(self, user_id: str, *, now: datetime) -> None:
        await self._session.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def delete_expired(self, *, before: datetime) -> int:
        """Delete tokens that expired before `before` (their families can no longer be replayed)."""
        result = await self._session.execute(
            delete(refresh_tokens).where(refresh_tokens.c.expires_at < before)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


class SqlClientRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, client: ServiceClient, *, now: datetime) -> None:
        await self._session.execute(
            insert(clients).values(
                client_id=client.client_id,
                name=client.name,
                secret_digest=client.secret_digest,
                scopes=" ".join(sorted(client.scopes)),
                is_active=client.is_active,
                created_at=now,
            )
        )

    async def get(self, client_id: str) -> ServiceClient | None:
        query = select(clients).where(clients.c.client_id == client_id)
        row = (await self._session.execute(query)).mappings().first()
        if row is None:
            return None
        return ServiceClient(
            client_id=row["client_id"],
            name=row["name"],
            secret_digest=row["secret_digest"],
            scopes=frozenset(row["scopes"].split()),
            is_active=bool(row["is_active"]),
        )


class SqlSigningKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self, *, kid: str, public_jwk: str, private_key_sealed: bytes, now: datetime
    ) -> None:
        await self._session.execute(
            insert(signing_keys).values(
                kid=kid,
                algorithm="EdDSA",
                public_jwk=public_jwk,
                private_key_sealed=private_key_sealed,
                created_at=now,
            )
        )

    async def retire_active(self, *, now: datetime) -> None:
        await self._session.execute(
            update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now)
        )

    async def newest_active(self) -> tuple[str, bytes] | None:
        query = (
            select(signing_keys.c.kid, signing_keys.c.private_key_sealed)
            .where(signing_keys.c.retired_at.is_(None))
            .order_by(signing_keys.c.created_at.desc(), signing_keys.c.kid.desc())
            .limit(1)
        )
        row = (await self._session.execute(query)).first()
        return None if row is None else (row[0], bytes(row[1]))

    async def published(self, *, retired_after: datetime) -> list[str]:
        """Public JWKs of active keys and of keys retired after `retired_after`."""
        query = (
            select(signing_keys.c.public_jwk)
            .where(
                or_(signing_keys.c.retired_at.is_(None), signing_keys.c.retired_at > retired_after)
            )
            .order_by(signing_keys.c.created_at.desc())
        )
        return list((await self._session.execute(query)).scalars())

    async def delete_retired(self, *, before: datetime) -> int:
        result = await self._session.execute(
            delete(signing_keys).where(signing_keys.c.retired_at < before)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


class IdentityUnitOfWork(UnitOfWork):
    users: SqlUserRepository
    refresh_tokens: SqlRefreshTokenRepository
    clients: SqlClientRepository
    signing_keys: SqlSigningKeyRepository

    def _open_repositories(self, session: AsyncSession) -> None:
        self.users = SqlUserRepository(session)
        self.refresh_tokens = SqlRefreshTokenRepository(session)
        self.clients = SqlClientRepository(session)
        self.signing_keys = SqlSigningKeyRepository(session)
