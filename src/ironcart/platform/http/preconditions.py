"""Optimistic locking over HTTP: versions travel as ETags (`"v7"`), writes need `If-Match`."""

from __future__ import annotations

import re

from starlette.requests import Request

from ironcart.platform.errors import PreconditionFailed, PreconditionRequired

_VERSION_TAG = re.compile(r'^"v(\d{1,12})(?:-[0-9a-f]{1,64})?"$')


def version_etag(version: int, digest: str | None = None) -> str:
    """`"v7"`, or `"v7-ab12..."` when the representation also depends on live data."""
    return f'"v{version}-{digest}"' if digest else f'"v{version}"'


def required_version(request: Request) -> int:
    """The version named by `If-Match`: 428 when absent, 412 when it is not one of ours."""
    header = request.headers.get("if-match")
    if header is None:
        raise PreconditionRequired("This write needs an If-Match header with the ETag you read.")
    match = _VERSION_TAG.match(header.strip())
    if match is None:
        raise PreconditionFailed("The If-Match header does not name a current version.")
    return int(match.group(1))
