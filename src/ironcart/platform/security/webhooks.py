"""Signed webhooks: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.

The scheme our sandboxes (and many real providers) use. `check_signature` raises
`SignatureMismatch` or `SignatureTooOld`; a context maps them to its own errors. The header
comes from anyone: `t` is 1 to 12 ASCII digits and each `v1` 64 hex digits, anything else is
a mismatch (never a `ValueError` from `int()` on a Unicode digit, nor a `TypeError` from
comparing non-ASCII text).
"""

from __future__ import annotations

import hashlib
import hmac
import re

MAX_HEADER_LENGTH = 1000
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


class SignatureMismatch(ValueError):
    """The header is missing, malformed, or no signature in it matches the body."""


class SignatureTooOld(ValueError):
    """Signed correctly, but too far from now: a replay, or a clock far off."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def check_signature(
    secret: str, body: bytes, header: str | None, *, now: float, tolerance_seconds: float
) -> int:
    """The signing timestamp, once the signature matches and is within the tolerance."""
    timestamp, candidates = _parts(header)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    digest = expected.hexdigest()
    # Every candidate is compared (in constant time each), whether or not one matched.
    matches = [hmac.compare_digest(digest, candidate) for candidate in candidates]
    if not any(matches):
        raise SignatureMismatch("The webhook signature does not match its body.")
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureTooOld(
            f"The webhook was signed more than {tolerance_seconds:.0f} s from now."
        )
    return timestamp


def _parts(header: str | None) -> tuple[int, list[str]]:
    if not header or len(header) > MAX_HEADER_LENGTH:
        raise SignatureMismatch("The signature header is missing or too long.")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            if not _TIMESTAMP.fullmatch(value):
                raise SignatureMismatch("The signature header is malformed.")
            timestamp = int(value)
        elif name == "v1":
            if not _SIGNATURE.fullmatch(value):
                raise SignatureMismatch("The signature header is malformed.")
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        raise SignatureMismatch("The signature header is malformed.")
    return timestamp, candidates
