"""RFC 9457 problem details: the only error shape a client ever sees.

`install_problem_handlers` registers the one mapping from exceptions to responses.
Unexpected exceptions are turned into a bare 500 by `RequestContextMiddleware` (the
outermost edge), which logs the traceback with the request id; no text of theirs reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ironcart.platform.errors import ErrorKind, IronCartError, RateLimited
from ironcart.platform.observability import current_request_id
from ironcart.platform.txn.fence import FenceError

_log = structlog.get_logger("ironcart.http")
PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ironcart:problem:"

STATUS_BY_KIND: Mapping[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.INVALID: 422,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.PAYMENT_REQUIRED: 402,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.PRECONDITION_FAILED: 412,
    ErrorKind.PRECONDITION_REQUIRED: 428,
    ErrorKind.UNAVAILABLE: 503,
}

_HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "content_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def problem(
    status: int,
    code: str,
    *,
    title: str | None = None,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build an `application/problem+json` response."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or title or HTTPStatus(status).phrase,
    }
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


def _field_path(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location)


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> Response:
    items = [
        {
            "field": _field_path(error.get("loc", ())),
            "message": str(error.get("msg", "invalid")),
            "code": str(error.get("type", "invalid")),
        }
        for error in errors[:50]
    ]
    return problem(
        422,
        "validation_error",
        title="Validation failed",
        detail="The request has invalid or missing fields; see `errors`.",
        errors=items,
    )


async def _on_domain_error(_request: Request, error: Exception) -> Response:
    if not isinstance(error, IronCartError):  # registered for this type only
        raise error
    headers: dict[str, str] = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(error.retry_after_seconds)
    headers.update(error.headers)
    return problem(
        STATUS_BY_KIND[error.kind],
        error.code,
        title=error.title,
        detail=error.detail,
        headers=headers,
        **error.extra,
    )


async def _on_fence_error(_request: Request, error: Exception) -> Response:
    # A TCC participant refused a branch move (a late try, confirm after cancel...): the
    # coordinator in another service rebuilds the same `FenceError` from this answer.
    if not isinstance(error, FenceError):
        raise error
    return problem(409, error.code, title="Transaction branch refused", detail=str(error))


async def _on_validation_error(_request: Request, error: Exception) -> Response:
    if not isinstance(error, RequestValidationError):
        raise error
    return validation_problem(error.errors())


async def _on_http_error(_request: Request, error: Exception) -> Response:
    if not isinstance(error, StarletteHTTPException):
        raise error
    status = error.status_code
    code = _HTTP_CODES.get(status, f"http_{status}")
    detail = error.detail if isinstance(error.detail, str) else None
    title = "Content too large" if status == 413 else None
    return problem(status, code, title=title, detail=detail, headers=error.headers)


async def _on_database_unavailable(_request: Request, error: Exception) -> Response:
    _log.warning("database_unavailable", error=type(error).__name__)
    return problem(
        503,
        "database_unavailable",
        title="Service temporarily unavailable",
        detail="A backing service (the database) cannot be reached; nothing was changed.",
        headers={"Retry-After": "5"},
    )


async def _on_unstorable_data(_request: Request, error: Exception) -> Response:
    # Defence in depth: input validation should have refused it; nothing was written.
    _log.warning("database_refused_data", error=type(error).__name__)
    return problem(
        422,
        "unstorable_data",
        title="Data cannot be stored",
        detail="A value in the request cannot be stored; nothing was changed.",
    )


# SQLSTATE classes that mean "the database cannot serve now", not "this request is wrong":
# 08 connection exception, 53 insufficient resources (too many clients), 57P operator
# intervention (shutting down, cannot connect now).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


async def _on_driver_error(request: Request, error: Exception) -> Response:
    original = getattr(error, "orig", None)
    sqlstate = str(getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or "")
    if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return await _on_database_unavailable(request, error)
    raise error  # a real bug: the outermost edge logs it and answers a bare 500


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(IronCartError, _on_domain_error)
    app.add_exception_handler(FenceError, _on_fence_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(DataError, _on_unstorable_data)
    app.add_exception_handler(DBAPIError, _on_driver_error)
    # A driver may surface a refused or timed-out connection as a bare OSError/TimeoutError.
    for database_error in (
        OperationalError,
        InterfaceError,
        PoolTimeoutError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(database_error, _on_database_unavailable)
