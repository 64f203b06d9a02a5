"""The TLS context every outbound HTTP client of this process shares."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def client_tls_context() -> ssl.SSLContext:
    """A verifying client context (the CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR), built once:
    each `httpx.AsyncClient` would otherwise load the CA bundle again (~40 ms of CPU each, and
    a service builds one client per service and provider it calls)."""
    return httpx.create_ssl_context()
