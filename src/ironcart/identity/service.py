"""Identity use cases: accounts, OAuth2 grants, signing keys. One unit of work per use case."""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from ironcart.contracts.identity import CUSTOMER
from ironcart.identity.domain import (
    EmailAlreadyRegistered,
    InvalidClient,
    InvalidGrant,
    RefreshToken,
    ServiceClient,
    TokenPair,
    User,
    UserNotFound,
    WrongPassword,
    check_email,
    check_password_policy,
    granted_scopes,
    new_opaque_token,
    normalise_email,
    parse_roles,
    token_digest,
)
from ironcart.identity.repository import IdentityUnitOfWork
from ironcart.platform.ratelimit import Limit, RateLimiter
from ironcart.platform.security.crypto import SecretBox
from ironcart.platform.security.passwords import PasswordHasher
from ironcart.platform.security.tokens import SigningKey, generate_key, issue_access_token
from ironcart.platform.settings import IdentitySettings

_log = structlog.get_logger("ironcart.identity")
SIGNING_KEY_CACHE_SECONDS = 30.0
JWKS_CACHE_SECONDS = 5.0
CLOCK_SKEW = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


class IdentityService:
    def __init__(
        self,
        *,
        uow_factory: Callable[[], IdentityUnitOfWork],
        hasher: PasswordHasher,
        limiter: RateLimiter,
        settings: IdentitySettings,
        key_box: SecretBox,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._uow = uow_factory
        self._hasher = hasher
        self._limiter = limiter
        self._settings = settings
        self._key_box = key_box
        self._clock = clock
        self._signing_key: tuple[SigningKey, float] | None = None
        self._published: tuple[list[dict[str, Any]], float] | None = None
        self._login_ip = Limit("login-ip", f"{settings.login_attempts_per_ip_per_minute}/minute")
        self._login_account = Limit(
            "login-account", f"{settings.login_failures_per_account_per_hour}/hour"
        )
        self._register_ip = Limit("register-ip", f"{settings.registrations_per_ip_per_hour}/hour")

    # -- accounts ---------------------------------------------------------------------------

    async def register(self, *, email: str, password: str, name: str, client_ip: str) -> User:
        """Create a customer account.

        An address that is already registered gets the same answer, after the same work,
        as a new one (no account enumeration); nothing is stored for it.
        """
        await self._limiter.hit(self._register_ip, client_ip)
        address = normalise_email(email)
        check_email(address)
        check_password_policy(password, email=address)
        now = self._clock()
        user = User(
            id=str(uuid.uuid4()),
            email=address,
            name=name.strip(),
            roles=frozenset({CUSTOMER}),
            password_hash=await self._hasher.hash(password),
            is_active=True,
            created_at=now,
        )
        async with self._uow() as uow:
            try:
                await uow.users.add(user)
                await uow.commit()
            except EmailAlreadyRegistered:
                _log.info("registration_for_existing_email")
        return user

    async def create_user(
        self, *, email: str, password: str, name: str, roles: Sequence[str]
    ) -> User:
        """Create an account with the given roles (operators' tool; says if the email is taken)."""
        address = normalise_email(email)
        check_email(address)
        check_password_policy(password, email=address)
        user = User(
            id=str(uuid.uuid4()),
            email=address,
            name=name.strip(),
            roles=parse_roles(list(roles)),
            password_hash=await self._hasher.hash(password),
            is_active=True,
            created_at=self._clock(),
        )
        async with self._uow() as uow:
            await uow.users.add(user)
            await uow.commit()
        return user

    async def get_user(self, *, user_id: str) -> User:
        """The account of `user_id`, or `UserNotFound`."""
        async with self._uow().reading() as uow:
            user = await uow.users.get(user_id)
        if user is None or not user.is_active:
            raise UserNotFound
        return user

    async def update_profile(self, *, user_id: str, name: str) -> User:
        """Change the display name of an account."""
        async with self._uow() as uow:
            if await uow.users.get(user_id) is None:
                raise UserNotFound
            await uow.users.update_name(user_id, name.strip(), now=self._clock())
            await uow.commit()
        return await self.get_user(user_id=user_id)

    async def change_password(
        self, *, user_id: str, current_password: str, new_password: str
    ) -> None:
        """Replace the password after checking the current one; signs out every session."""
        user = await self.get_user(user_id=user_id)
        await self._limiter.check(self._login_account, user.email)
        if not await self._hasher.verify(user.password_hash, current_password):
            await self._limiter.hit(self._login_account, user.email)
            raise WrongPassword
        check_password_policy(new_password, email=user.email)
        new_hash = await self._hasher.hash(new_password)
        async with self._uow() as uow:
            now = self._clock()
            await uow.users.update_password_hash(user_id, new_hash, now=now)
            await uow.refresh_tokens.revoke_all_for_user(user_id, now=now)
            await uow.commit()

    # -- OAuth2 grants ------------------------------------------------------------------------

    async def password_grant(
        self, *, username: str, password: str, scope: frozenset[str], client_ip: str
    ) -> TokenPair:
        """RFC 6749 4.3: exchange a person's credentials for an access and a refresh token."""
        await self._limiter.hit(self._login_ip, client_ip)
        address = normalise_email(username)
        await self._limiter.check(self._login_account, address)
        user = await self._authenticate(address, password)
        if user is None:
            await self._limiter.hit(self._login_account, address)
            raise InvalidGrant("The email or password is wrong.")
        scopes = granted_scopes(allowed=user.scopes, requested=scope)
        async with self._uow() as uow:
            refresh = await self._new_refresh_token(uow, user_id=user.id, family_id=None)
            await uow.commit()
        return await self._token_pair(user.id, scopes, refresh)

    async def _authenticate(self, address: str, password: str) -> User | None:
        async with self._uow().reading() as uow:
            user = await uow.users.get_by_email(address)
        if user is None or not user.is_active:
            await self._hasher.verify_against_nothing(password)
            return None
        if not await self._hasher.verify(user.password_hash, password):
            return None
        if self._hasher.needs_rehash(user.password_hash):
            new_hash = await self._hasher.hash(password)
            async with self._uow() as uow:
                await uow.users.update_password_hash(user.id, new_hash, now=self._clock())
                await uow.commit()
        return user

    async def refresh_grant(self, *, refresh_token: str, scope: frozenset[str]) -> TokenPair:
        """RFC 6749 6: rotate a refresh token. A token used twice revokes its whole family."""
        now = self._clock()
        async with self._uow() as uow:
            stored = await uow.refresh_tokens.get_by_digest(token_digest(refresh_token))
            if stored is None or now >= stored.expires_at:
                raise InvalidGrant("The refresh token is invalid or expired.")
            if not stored.usable(now) or not await uow.refresh_tokens.mark_used(stored.id, now=now):
                await self._revoke_family(uow, stored, reason="refresh_token_reused")
                raise InvalidGrant("The refresh token was already used; its sessions are revoked.")
            user = await uow.users.get(stored.user_id)
            if user is None or not user.is_active:
                await self._revoke_family(uow, stored, reason="user_inactive")
                raise InvalidGrant("The account is no longer active.")
            scopes = granted_scopes(allowed=user.scopes, requested=scope)
            refresh = await self._new_refresh_token(
                uow, user_id=user.id, family_id=stored.family_id
            )
            await uow.commit()
        return await self._token_pair(user.id, scopes, refresh)

    async def _revoke_family(
        self, uow: IdentityUnitOfWork, token: RefreshToken, *, reason: str
    ) -> None:
        # The refusal must not roll the revocation back: commit it before raising.
        await uow.rollback()
        await uow.refresh_tokens.revoke_family(token.family_id, now=self._clock())
        await uow.commit()
        _log.warning("refresh_token_family_revoked", family_id=token.family_id, reason=reason)

    async def client_credentials_grant(
        self, *, client_id: str, client_secret: str, scope: frozenset[str]
    ) -> TokenPair:
        """RFC 6749 4.4: a service client's token, with the scopes it was registered for."""
        async with self._uow().reading() as uow:
            client = await uow.clients.get(client_id)
        expected = client.secret_digest if client is not None else "0" * 64
        matches = hmac.compare_digest(expected, token_digest(client_secret))
        if client is None or not client.is_active or not matches:
            raise InvalidClient("Client authentication failed.")
        scopes = granted_scopes(allowed=client.scopes, requested=scope)
        key = await self._current_signing_key()
        access, ttl = issue_access_token(
            key,
            subject=f"client:{client.client_id}",
            scopes=scopes,
            client_id=client.client_id,
            issuer=self._settings.issuer,
            audience=self._settings.audience,
            ttl_seconds=self._settings.access_token_ttl_seconds,
        )
        return TokenPair(access_token=access, expires_in=ttl, scope=" ".join(sorted(scopes)))

    async def revoke(self, *, token: str) -> None:
        """RFC 7009: revoke a refresh token and its family. Unknown tokens are not an error."""
        async with self._uow() as uow:
            stored = await uow.refresh_tokens.get_by_digest(token_digest(token))
            if stored is not None:
                await uow.refresh_tokens.revoke_family(stored.family_id, now=self._clock())
                await uow.commit()

    async def create_client(self, *, name: str, scopes: frozenset[str]) -> tuple[str, str]:
        """Register a service client; returns (client_id, secret). The secret is shown once."""
        client_id = f"svc_{secrets.token_hex(8)}"
        secret = new_opaque_token()
        client = ServiceClient(
            client_id=client_id,
            name=name,
            secret_digest=token_digest(secret),
            scopes=scopes,
            is_active=True,
        )
        async with self._uow() as uow:
            await uow.clients.add(client, now=self._clock())
            await uow.commit()
        return client_id, secret

    async def _new_refresh_token(
        self, uow: IdentityUnitOfWork, *, user_id: str, family_id: str | None
    ) -> str:
        token = new_opaque_token()
        now = self._clock()
        record = RefreshToken(
            id=str(uuid.uuid4()),
            family_id=family_id or str(uuid.uuid4()),
            user_id=user_id,
            expires_at=now + timedelta(seconds=self._settings.refresh_token_ttl_seconds),
            used_at=None,
            revoked_at=None,
        )
        await uow.refresh_tokens.add(record, digest=token_digest(token), issued_at=now)
        return token

    async def _token_pair(self, user_id: str, scopes: frozenset[str], refresh: str) -> TokenPair:
        key = await self._current_signing_key()
        access, ttl = issue_access_token(
            key,
            subject=user_id,
            scopes=scopes,
            issuer=self._settings.issuer,
            audience=self._settings.audience,
            ttl_seconds=self._settings.access_token_ttl_seconds,
        )
        return TokenPair(
            access_token=access,
            expires_in=ttl,
            scope=" ".join(sorted(scopes)),
            refresh_token=refresh,
        )

    async def purge_expired(self) -> tuple[int, int]:
        """Housekeeping: drop expired refresh tokens and keys no token can still need."""
        now = self._clock()
        key_grace = timedelta(seconds=self._settings.access_token_ttl_seconds) + CLOCK_SKEW
        async with self._uow() as uow:
            tokens = await uow.refresh_tokens.delete_expired(before=now)
            keys = await uow.signing_keys.delete_retired(before=now - key_grace)
            await uow.commit()
        return tokens, keys

    # -- signing keys ------------------------------------------------------------------------

    async def rotate_signing_key(self) -> str:
        """Make a new signing key current; older keys stay published until their tokens expire."""
        generated = generate_key()
        async with self._uow() as uow:
            now = self._clock()
            await uow.signing_keys.retire_active(now=now)
            await uow.signing_keys.add(
                kid=generated.kid,
                public_jwk=json.dumps(generated.public_jwk),
                private_key_sealed=self._key_box.seal(generated.private_pem),
                now=now,
            )
            await uow.commit()
        self._signing_key = None
        self._published = None
        return generated.kid

    async def ensure_signing_key(self) -> None:
        """Create the first signing key if there is none (first start of a new installation)."""
        async with self._uow() as uow:
            if await uow.signing_keys.newest_active() is not None:
                return
        await self.rotate_signing_key()

    async def published_keys(self) -> list[dict[str, Any]]:
        """The JWKS: active keys, and retired keys whose tokens may still be unexpired.

        Kept for a few seconds: verifiers and `/.well-known/jwks.json` ask for it constantly,
        and a rotation only has to be visible before the new key signs (30 s, see above).
        """
        cached = self._published
        if cached is not None and time.monotonic() - cached[1] < JWKS_CACHE_SECONDS:
            return cached[0]
        ttl = timedelta(seconds=self._settings.access_token_ttl_seconds)
        async with self._uow().reading() as uow:
            rows = await uow.signing_keys.published(retired_after=self._clock() - ttl - CLOCK_SKEW)
        keys = [json.loads(row) for row in rows]
        if keys:  # an empty set (no key made yet) is not worth keeping
            self._published = (keys, time.monotonic())
        return keys

    async def _current_signing_key(self) -> SigningKey:
        cached = self._signing_key
        if cached is not None and time.monotonic() - cached[1] < SIGNING_KEY_CACHE_SECONDS:
            return cached[0]
        async with self._uow().reading() as uow:
            newest = await uow.signing_keys.newest_active()
        if newest is None:
            await self.rotate_signing_key()
            return await self._current_signing_key()
        key = SigningKey.from_pem(newest[0], self._key_box.open(newest[1]))
        self._signing_key = (key, time.monotonic())
        return key
