"""Identity's HTTP API: registration, profile, the OAuth2 token endpoints and the JWKS."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, EmailStr, Field

from ironcart.identity.domain import (
    EMAIL_MAX_LENGTH,
    NAME_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    OAuthInvalidRequest,
    TokenPair,
    UnsupportedGrantType,
    User,
    parse_scopes,
)
from ironcart.identity.service import IdentityService
from ironcart.platform.http.auth import CurrentUserId
from ironcart.platform.http.schemas import StrictModel

MAX_FORM_FIELD = 4096
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


async def get_identity_service(request: Request) -> IdentityService:
    service: IdentityService = request.app.state.container.identity
    return service


Identity = Annotated[IdentityService, Depends(get_identity_service)]


Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=r"\S")]
Password = Annotated[str, Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)]


class UserRegister(StrictModel):
    email: Annotated[EmailStr, Field(max_length=EMAIL_MAX_LENGTH)]
    password: Password
    name: Name


class UserUpdate(StrictModel):
    name: Name


class PasswordChange(StrictModel):
    current_password: Password
    new_password: Password


class UserRead(BaseModel):
    id: str
    email: str
    name: str
    roles: list[str]
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserRead:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            roles=sorted(user.roles),
            created_at=user.created_at,
        )


class TokenRead(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the RFC 6750 token type, not a secret
    expires_in: int
    scope: str
    refresh_token: str | None = None


router = APIRouter(tags=["identity"])


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/api/v1/auth/register", status_code=201, response_model=UserRead)
async def register(body: UserRegister, request: Request, identity: Identity) -> UserRead:
    user = await identity.register(
        email=body.email, password=body.password, name=body.name, client_ip=_client_ip(request)
    )
    return UserRead.of(user)


@router.get("/api/v1/me", response_model=UserRead)
async def read_me(user_id: CurrentUserId, identity: Identity) -> UserRead:
    return UserRead.of(await identity.get_user(user_id=user_id))


@router.patch("/api/v1/me", response_model=UserRead)
async def update_me(body: UserUpdate, user_id: CurrentUserId, identity: Identity) -> UserRead:
    return UserRead.of(await identity.update_profile(user_id=user_id, name=body.name))


@router.post("/api/v1/me/password", status_code=204)
async def change_password(
    body: PasswordChange, user_id: CurrentUserId, identity: Identity
) -> Response:
    await identity.change_password(
        user_id=user_id,
        current_password=body.current_password,
        new_password=body.new_password,
    )
    return Response(status_code=204)


async def _oauth_form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthInvalidRequest("The body must be application/x-www-form-urlencoded.")
    form = await request.form(max_files=0, max_fields=32, max_part_size=MAX_FORM_FIELD)
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str) or len(value) > MAX_FORM_FIELD or "\x00" in value:
            raise OAuthInvalidRequest(f"The parameter {key!r} is malformed.")
        if key in fields:
            raise OAuthInvalidRequest(f"The parameter {key!r} is repeated.")
        fields[key] = value
    return fields


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "")
    if not value:
        raise OAuthInvalidRequest(f"The parameter {name!r} is missing.")
    return value


def _client_credentials(request: Request, fields: dict[str, str]) -> tuple[str, str]:
    """RFC 6749 2.3.1: HTTP Basic (preferred) or client_id/client_secret in the body."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            raise OAuthInvalidRequest("The Basic authorization header is malformed.") from None
        client_id, separator, secret = decoded.partition(":")
        if not separator:
            raise OAuthInvalidRequest("The Basic authorization header is malformed.")
        return unquote(client_id), unquote(secret)
    return _required(fields, "client_id"), _required(fields, "client_secret")


def _token_response(pair: TokenPair) -> Response:
    body: dict[str, Any] = TokenRead(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        scope=pair.scope,
        refresh_token=pair.refresh_token,
    ).model_dump(exclude_none=True)
    return Response(orjson.dumps(body), media_type="application/json", headers=NO_STORE)


@router.post(
    "/api/v1/auth/token",
    response_model=TokenRead,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            name: {"type": "string", "maxLength": MAX_FORM_FIELD}
                            for name in (
                                "grant_type",
                                "username",
                                "password",
                                "refresh_token",
                                "scope",
                                "client_id",
                                "client_secret",
                            )
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def token(request: Request, identity: Identity) -> Response:
    fields = await _oauth_form(request)
    grant_type = _required(fields, "grant_type")
    scope = parse_scopes(fields.get("scope"))
    if grant_type == "password":
        pair = await identity.password_grant(
            username=_required(fields, "username"),
            password=_required(fields, "password"),
            scope=scope,
            client_ip=_client_ip(request),
        )
    elif grant_type == "refresh_token":
        pair = await identity.refresh_grant(
            refresh_token=_required(fields, "refresh_token"), scope=scope
        )
    elif grant_type == "client_credentials":
        client_id, secret = _client_credentials(request, fields)
        pair = await identity.client_credentials_grant(
            client_id=client_id, client_secret=secret, scope=scope
        )
    else:
        raise UnsupportedGrantType(f"The grant type {grant_type[:64]!r} is not supported.")
    return _token_response(pair)


@router.post(
    "/api/v1/auth/revoke",
    status_code=200,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["token"],
                        "properties": {
                            "token": {"type": "string"},
                            "token_type_hint": {"type": "string"},
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def revoke(request: Request, identity: Identity) -> Response:
    fields = await _oauth_form(request)
    await identity.revoke(token=_required(fields, "token"))
    return Response(status_code=200, headers=NO_STORE)


@router.get("/.well-known/jwks.json")
async def jwks(identity: Identity) -> Response:
    body = orjson.dumps({"keys": await identity.published_keys()})
    return Response(body, media_type="application/json", headers={"Cache-Control": "max-age=60"})
