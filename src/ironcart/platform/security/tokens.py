"""JWT access tokens (RFC 9068 profile) signed with Ed25519 keys that rotate.

Issuing needs a private key; verifying needs only the published JWKS, so any service
can verify tokens with a `KeySource` that reads the identity context's JWKS.
Only `EdDSA` is accepted: `alg: none`, HMAC confusion and unknown `kid`s are refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from ironcart.contracts.identity import Principal
from ironcart.platform.errors import Unauthenticated

ALGORITHM = "EdDSA"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - the RFC 9068 media type, not a secret
CLOCK_SKEW_SECONDS = 30


class InvalidAccessToken(Unauthenticated):
    code = "auth.invalid_token"
    title = "Invalid access token"


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    kid: str
    private_pem: bytes
    public_jwk: dict[str, Any]


def generate_key() -> GeneratedKey:
    private = Ed25519PrivateKey.generate()
    kid = uuid.uuid4().hex
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk: dict[str, Any] = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return GeneratedKey(kid=kid, private_pem=pem, public_jwk=jwk)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: Ed25519PrivateKey

    @classmethod
    def from_pem(cls, kid: str, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing keys must be Ed25519")
        return cls(kid=kid, private_key=key)


def issue_access_token(
    key: SigningKey,
    *,
    subject: str,
    scopes: frozenset[str],
    issuer: str,
    audience: str,
    ttl_seconds: int,
    client_id: str | None = None,
    now: float | None = None,
) -> tuple[str, int]:
    """Sign an access token; returns the token and its lifetime in seconds."""
    issued_at = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(sorted(scopes)),
    }
    if client_id is not None:
        claims["client_id"] = client_id
    headers = {"kid": key.kid, "typ": TOKEN_TYPE}
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers=headers), ttl_seconds


class KeySource(Protocol):
    async def published_keys(self) -> Sequence[Mapping[str, Any]]:
        """The JWKS `keys` currently valid for verification."""
        ...


class AccessTokenVerifier:
    """Verifies access tokens against a cached JWKS; refetches on an unknown `kid`, rate-limited."""

    def __init__(
        self,
        source: KeySource,
        *,
        issuer: str,
        audience: str,
        refresh_seconds: float = 60.0,
        min_reload_interval_seconds: float = 5.0,
    ) -> None:
        self._source = source
        self._issuer = issuer
        self._audience = audience
        self._refresh_seconds = refresh_seconds
        self._min_reload = min_reload_interval_seconds
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._loaded_at = float("-inf")
        self._lock = anyio.Lock()

    async def verify(self, token: str) -> Principal:
        kid = self._kid_of(token)
        key = await self._key_for(kid)
        if key is None:
            raise InvalidAccessToken("The token was signed by an unknown key.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidAccessToken("The token has expired.") from None
        except jwt.InvalidTokenError:
            raise InvalidAccessToken("The token is invalid.") from None
        return _principal_from(claims)

    def _kid_of(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidAccessToken("The token is malformed.") from None
        if header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE:
            raise InvalidAccessToken("The token uses an unaccepted algorithm or type.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidAccessToken("The token names no key.")
        return kid

    async def _key_for(self, kid: str) -> Ed25519PublicKey | None:
        now = time.monotonic()
        stale = now - self._loaded_at > self._refresh_seconds
        unknown = kid not in self._keys and now - self._loaded_at > self._min_reload
        if stale or unknown:
            async with self._lock:
                if self._loaded_at < now:
                    await self._reload()
        return self._keys.get(kid)

    async def _reload(self) -> None:
        keys: dict[str, Ed25519PublicKey] = {}
        for jwk in await self._source.published_keys():
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
                public = OKPAlgorithm.from_jwk(dict(jwk))
                if isinstance(public, Ed25519PublicKey):
                    keys[str(jwk["kid"])] = public
        self._keys = keys
        self._loaded_at = time.monotonic()


def _principal_from(claims: Mapping[str, Any]) -> Principal:
    scope = claims.get("scope", "")
    subject = claims["sub"]
    if not isinstance(scope, str) or not isinstance(subject, str):
        raise InvalidAccessToken("The token's claims are malformed.")
    client_id = claims.get("client_id")
    is_client = isinstance(client_id, str)
    return Principal(
        subject=subject,
        scopes=frozenset(scope.split()),
        user_id=None if is_client else subject,
        client_id=client_id if is_client else None,
        token_id=str(claims["jti"]),
    )
