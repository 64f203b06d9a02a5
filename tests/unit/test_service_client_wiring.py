"""Microservice wiring without I/O: the settings that choose HTTP ports, the error registry
that rebuilds a problem answer as its domain error, and the token cache on a fake clock."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from ironcart.inventory.domain import InsufficientStock, Shortage
from ironcart.payments.domain import PaymentDeclined
from ironcart.platform.errors import RateLimited, error_from_problem
from ironcart.platform.http.service import ClientCredentialsTokens
from ironcart.platform.settings import Settings, SettingsError, load_settings

CREDENTIALS = {"service_client_id": "svc_1", "service_client_secret": "s3cret"}
POSTGRES = "postgresql://localhost/ironcart"


def test_a_service_url_selects_that_context() -> None:
    settings = load_settings(
        services={"inventory": {"url": "http://127.0.0.1:8003"}}, **CREDENTIALS
    )

    assert list(settings.services) == ["inventory"]
    assert settings.services["inventory"].url == "http://127.0.0.1:8003"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param(
            {"services": {"warehouse": {"url": "http://a"}}, **CREDENTIALS},
            "IRONCART_SERVICES__WAREHOUSE",
            id="unknown-context",
        ),
        pytest.param(
            {"services": {"cart": {"url": "ftp://a"}}, **CREDENTIALS},
            "IRONCART_SERVICES__CART__URL",
            id="not-http",
        ),
        pytest.param(
            {"services": {"cart": {"url": "http://a"}}},
            "IRONCART_SERVICE_CLIENT_ID",
            id="no-credentials",
        ),
        pytest.param(
            {
                "services": {"inventory": {"url": "http://a"}},
                "checkout_txn": "xa",
                "database_url": POSTGRES,
                **CREDENTIALS,
            },
            "IRONCART_SERVICES__INVENTORY__URL",
            id="xa-over-http",
        ),
    ],
)
def test_invalid_service_settings_stop_the_start(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)


def test_xa_with_other_services_over_http_is_allowed() -> None:
    settings = load_settings(
        services={"payments": {"url": "https://payments.internal"}},
        checkout_txn="xa",
        database_url=POSTGRES,
        **CREDENTIALS,
    )

    assert isinstance(settings, Settings)


def test_a_problem_becomes_the_error_its_code_names() -> None:
    original = InsufficientStock.of([Shortage("A", 3, 1), Shortage("B", 2, 0)])

    rebuilt = error_from_problem(original.code, original.detail, original.extra)

    assert type(rebuilt) is InsufficientStock
    assert isinstance(rebuilt, InsufficientStock)
    assert (rebuilt.detail, rebuilt.extra) == (original.detail, original.extra)
    assert (rebuilt.sku, rebuilt.requested, rebuilt.available) == ("A", 3, 1)


def test_extra_members_become_attributes_and_retry_after_is_kept() -> None:
    declined = error_from_problem("payments.declined", "Declined.", {"decline_code": "do_not"})
    limited = error_from_problem(
        "ironcart.rate_limited", "Slow down.", {}, headers={"Retry-After": "7"}
    )

    assert isinstance(declined, PaymentDeclined)
    assert declined.decline_code == "do_not"
    assert isinstance(limited, RateLimited)
    assert limited.retry_after_seconds == 7


def test_an_unknown_code_is_no_error() -> None:
    assert error_from_problem("nobody.claims_this", "?", {"amount": Decimal("1")}) is None


@pytest.mark.anyio
async def test_tokens_are_shared_cached_and_refreshed_within_the_margin() -> None:
    now = [0.0]
    fetched: list[int] = []

    async def fetch() -> tuple[str, int]:
        fetched.append(1)
        await asyncio.sleep(0)  # let every concurrent caller reach the lock
        return f"token-{len(fetched)}", 300

    tokens = ClientCredentialsTokens(fetch, refresh_margin_seconds=30, clock=lambda: now[0])

    first = await asyncio.gather(*(tokens.token() for _ in range(10)))
    now[0] = 269.0
    still = await tokens.token()
    now[0] = 271.0
    renewed = await tokens.token()

    assert set(first) == {"token-1"}
    assert still == "token-1"
    assert renewed == "token-2"
    assert len(fetched) == 2


@pytest.mark.anyio
async def test_a_refused_token_is_replaced_once_for_all_callers() -> None:
    fetched: list[int] = []

    async def fetch() -> tuple[str, int]:
        fetched.append(1)
        return f"token-{len(fetched)}", 900

    tokens = ClientCredentialsTokens(fetch)
    refused = await tokens.token()

    replaced = await asyncio.gather(*(tokens.refresh(stale=refused) for _ in range(5)))

    assert set(replaced) == {"token-2"}
    assert len(fetched) == 2
