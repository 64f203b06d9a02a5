"""The one authentication dependency every protected route uses.

401 (with `WWW-Authenticate: Bearer`) when there is no valid token;
403 (with `error="insufficient_scope"`) when the token lacks the scope.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Depends, Request, params

from ironcart.contracts.identity import Principal
from ironcart.platform.errors import Forbidden, Unauthenticated
from ironcart.platform.security.tokens import AccessTokenVerifier, InvalidAccessToken

REALM = 'Bearer realm="ironcart"'
# Where a middleware that already verified the request's token leaves its principal.
VERIFIED_PRINCIPAL = "ironcart.principal"


class InsufficientScope(Forbidden):
    code = "auth.insufficient_scope"
    title = "Insufficient scope"


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "A bearer access token is required.", headers={"WWW-Authenticate": REALM}
        )
    return token.strip()


async def current_principal(request: Request) -> Principal:
    verified: Principal | None = request.scope.get(VERIFIED_PRINCIPAL)
    if verified is not None:  # the rate limiter verified this request's token already
        return verified
    token = _bearer_token(request)
    verifier: AccessTokenVerifier = request.app.state.token_verifier
    try:
        return await verifier.verify(token)
    except InvalidAccessToken as error:
        error.headers["WWW-Authenticate"] = (
            f'{REALM}, error="invalid_token", error_description="{error.detail}"'
        )
        raise


def require_scope(*scopes: str) -> object:
    """A dependency that admits a principal holding any one of `scopes`."""

    async def dependency(
        principal: Annotated[Principal, Depends(current_principal)],
    ) -> Principal:
        if not any(principal.has_scope(scope) for scope in scopes):
            wanted = " ".join(scopes)
            raise InsufficientScope(
                f"This operation needs one of the scopes: {wanted}.",
                headers={
                    "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{wanted}"'
                },
            )
        return principal

    return Depends(dependency)


async def current_user(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    if not principal.is_user:
        raise InsufficientScope(
            "This operation is for signed-in people, not service clients.",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
        )
    return principal


async def current_user_id(principal: Annotated[Principal, Depends(current_user)]) -> str:
    if principal.user_id is None:  # current_user admits people only; kept for the type checker
        raise Unauthenticated(headers={"WWW-Authenticate": REALM})
    return principal.user_id


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentUser = Annotated[Principal, Depends(current_user)]
CurrentUserId = Annotated[str, Depends(current_user_id)]
StaffOnly = Annotated[Principal, require_scope("staff")]
AdminOnly = Annotated[Principal, require_scope("admin")]


def internal_router(context: str) -> APIRouter:
    """The router of `context`'s internal API (`/internal/v1/<context>`): for services holding
    the scope `service:<context>` only, and left out of the public OpenAPI document."""
    return APIRouter(
        prefix=f"/internal/v1/{context}",
        dependencies=[cast(params.Depends, require_scope(f"service:{context}"))],
        include_in_schema=False,
    )
