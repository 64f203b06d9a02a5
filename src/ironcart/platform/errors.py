"""The error model every context builds on.

    IronCartError                 code, kind, detail, extra data
     ├── BadRequest               kind=bad_request (malformed protocol request, e.g. OAuth2)
     ├── NotFound                 kind=not_found
     ├── Conflict                 kind=conflict
     ├── InvalidRequest           kind=invalid
     ├── Unauthenticated          kind=unauthenticated
     ├── Forbidden                kind=forbidden
     ├── PaymentRequired          kind=payment_required (the payment method was declined)
     ├── PreconditionFailed       kind=precondition_failed (stale If-Match: optimistic lock lost)
     ├── PreconditionRequired     kind=precondition_required (a write without If-Match)
     ├── RateLimited              kind=rate_limited (carries retry_after_seconds)
     └── ServiceUnavailable       kind=unavailable

Each context subclasses these with a stable `code` (e.g. `identity.invalid_grant`).
Errors carry no HTTP status: `platform.http.problems` maps `kind` to a status in one place.

Every subclass that names its own `code` is recorded by that code, so that a problem+json
answer of another service becomes the very error the in-process call would have raised
(`error_from_problem`): callers cannot tell the two wirings apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar


class ErrorKind(StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    PAYMENT_REQUIRED = "payment_required"
    RATE_LIMITED = "rate_limited"
    PRECONDITION_FAILED = "precondition_failed"
    PRECONDITION_REQUIRED = "precondition_required"
    UNAVAILABLE = "unavailable"


_BY_CODE: dict[str, type[IronCartError]] = {}


class IronCartError(Exception):
    code: ClassVar[str] = "ironcart.error"
    kind: ClassVar[ErrorKind] = ErrorKind.INVALID
    title: ClassVar[str] = "Request failed"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:  # the first class to claim a code keeps it
            _BY_CODE.setdefault(cls.code, cls)

    def __init__(
        self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.detail)


class BadRequest(IronCartError):
    code = "ironcart.bad_request"
    kind = ErrorKind.BAD_REQUEST
    title = "Bad request"


class NotFound(IronCartError):
    code = "ironcart.not_found"
    kind = ErrorKind.NOT_FOUND
    title = "Not found"


class Conflict(IronCartError):
    code = "ironcart.conflict"
    kind = ErrorKind.CONFLICT
    title = "Conflict"


class InvalidRequest(IronCartError):
    code = "ironcart.invalid_request"
    kind = ErrorKind.INVALID
    title = "Invalid request"


class Unauthenticated(IronCartError):
    code = "ironcart.unauthenticated"
    kind = ErrorKind.UNAUTHENTICATED
    title = "Authentication required"


class Forbidden(IronCartError):
    code = "ironcart.forbidden"
    kind = ErrorKind.FORBIDDEN
    title = "Forbidden"


class PaymentRequired(IronCartError):
    code = "ironcart.payment_required"
    kind = ErrorKind.PAYMENT_REQUIRED
    title = "Payment required"


class PreconditionFailed(IronCartError):
    code = "ironcart.precondition_failed"
    kind = ErrorKind.PRECONDITION_FAILED
    title = "Precondition failed"


class PreconditionRequired(IronCartError):
    code = "ironcart.precondition_required"
    kind = ErrorKind.PRECONDITION_REQUIRED
    title = "Precondition required"


class RateLimited(IronCartError):
    code = "ironcart.rate_limited"
    kind = ErrorKind.RATE_LIMITED
    title = "Too many requests"

    def __init__(
        self, detail: str | None = None, *, retry_after_seconds: int, **extra: Any
    ) -> None:
        self.retry_after_seconds = max(1, retry_after_seconds)
        super().__init__(detail, **extra)


class ServiceUnavailable(IronCartError):
    code = "ironcart.unavailable"
    kind = ErrorKind.UNAVAILABLE
    title = "Service unavailable"


def error_class(code: str) -> type[IronCartError] | None:
    """The error class recorded under `code`, if any (only imported modules are known)."""
    return _BY_CODE.get(code)


def error_from_problem(
    code: str,
    detail: str,
    extra: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
) -> IronCartError | None:
    """Rebuild the error a problem+json body describes, with its detail and extra data, as
    the service that answered raised it; None for a code no loaded class claims.

    The class's own `__init__` is bypassed (its arguments differ per class): the error gets
    the answer's detail, extra members (also as attributes, e.g. `decline_code`) and headers.
    """
    cls = _BY_CODE.get(code)
    if cls is None:
        return None
    error = cls.__new__(cls)
    IronCartError.__init__(error, detail, headers=dict(headers or {}), **extra)
    for name, value in extra.items():
        if name.isidentifier() and name not in vars(error):
            setattr(error, name, value)
    if isinstance(error, RateLimited):
        retry_after = (headers or {}).get("Retry-After", "1")
        error.retry_after_seconds = max(1, int(retry_after)) if retry_after.isdigit() else 1
    return error
