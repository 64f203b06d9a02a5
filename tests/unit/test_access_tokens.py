"""Access-token verification refuses everything but a valid EdDSA token from a published key."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from ironcart.platform.security.tokens import (
    AccessTokenVerifier,
    InvalidAccessToken,
    SigningKey,
    generate_key,
    issue_access_token,
)

pytestmark = pytest.mark.anyio
ISSUER, AUDIENCE = "ironcart", "ironcart-api"


class StaticKeys:
    def __init__(self, *jwks: Mapping[str, Any]) -> None:
        self.keys = list(jwks)
        self.loads = 0

    async def published_keys(self) -> Sequence[Mapping[str, Any]]:
        self.loads += 1
        return self.keys


def _key() -> tuple[SigningKey, dict[str, Any]]:
    generated = generate_key()
    return SigningKey.from_pem(generated.kid, generated.private_pem), generated.public_jwk


def _token(key: SigningKey, **overrides: Any) -> str:
    token, _ = issue_access_token(
        key,
        subject="user-1",
        scopes=frozenset({"customer"}),
        issuer=ISSUER,
        audience=AUDIENCE,
        ttl_seconds=900,
        **overrides,
    )
    return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_valid_token_gives_the_principal() -> None:
    key, jwk = _key()
    verifier = AccessTokenVerifier(StaticKeys(jwk), issuer=ISSUER, audience=AUDIENCE)
    principal = await verifier.verify(_token(key))
    assert principal.user_id == "user-1"
    assert principal.scopes == {"customer"}
    assert principal.client_id is None


async def test_expired_token_is_refused() -> None:
    key, jwk = _key()
    verifier = AccessTokenVerifier(StaticKeys(jwk), issuer=ISSUER, audience=AUDIENCE)
    expired = _token(key, now=time.time() - 900 - 31)  # past the 30 s clock-skew leeway
    with pytest.raises(InvalidAccessToken, match="expired"):
        await verifier.verify(expired)


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "admin staff"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _alg_none(token: str) -> str:
    header = jwt.get_unverified_header(token)
    payload = token.split(".")[1]
    forged = _b64(json.dumps({**header, "alg": "none"}).encode())
    return f"{forged}.{payload}."


def _hmac_with_public_key(token: str, jwk: Mapping[str, Any]) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    secret = base64.urlsafe_b64decode(jwk["x"] + "==")
    return jwt.encode(
        claims, secret, algorithm="HS256", headers={"kid": jwk["kid"], "typ": "at+jwt"}
    )


@pytest.mark.parametrize(
    "attack", ["tampered", "alg-none", "hs256-confusion", "wrong-audience", "garbage", "id-token"]
)
async def test_forged_tokens_are_refused(attack: str) -> None:
    key, jwk = _key()
    verifier = AccessTokenVerifier(StaticKeys(jwk), issuer=ISSUER, audience=AUDIENCE)
    genuine = _token(key)
    forged = {
        "tampered": lambda: _tampered(genuine),
        "alg-none": lambda: _alg_none(genuine),
        "hs256-confusion": lambda: _hmac_with_public_key(genuine, jwk),
        "wrong-audience": lambda: issue_access_token(
            key, subject="u", scopes=frozenset(), issuer=ISSUER, audience="other", ttl_seconds=60
        )[0],
        "garbage": lambda: "not.a.token",
        "id-token": lambda: jwt.encode(
            {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60},
            key.private_key,
            algorithm="EdDSA",
            headers={"kid": key.kid, "typ": "JWT"},
        ),
    }[attack]()
    with pytest.raises(InvalidAccessToken):
        await verifier.verify(forged)


async def test_token_from_an_unknown_key_is_refused_and_reloads_are_rate_limited() -> None:
    _known, jwk = _key()
    stranger, _ = _key()
    source = StaticKeys(jwk)
    verifier = AccessTokenVerifier(
        source, issuer=ISSUER, audience=AUDIENCE, min_reload_interval_seconds=60
    )
    for _ in range(20):
        with pytest.raises(InvalidAccessToken, match="unknown key"):
            await verifier.verify(_token(stranger))
    assert source.loads == 1  # garbage kids cannot make us hammer the key store


async def test_a_new_key_is_picked_up_after_rotation() -> None:
    old, old_jwk = _key()
    new, new_jwk = _key()
    source = StaticKeys(old_jwk)
    verifier = AccessTokenVerifier(
        source, issuer=ISSUER, audience=AUDIENCE, min_reload_interval_seconds=0
    )
    await verifier.verify(_token(old))
    source.keys.append(new_jwk)
    assert (await verifier.verify(_token(new))).user_id == "user-1"
    assert (await verifier.verify(_token(old))).user_id == "user-1"


def test_private_key_never_appears_in_the_public_jwk() -> None:
    generated = generate_key()
    assert "d" not in generated.public_jwk
    private = serialization.load_pem_private_key(generated.private_pem, password=None)
    assert private is not None
