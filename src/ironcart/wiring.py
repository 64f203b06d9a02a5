"""Which implementation each port gets: over HTTP when its context runs as another service
(`IRONCART_SERVICES__<CONTEXT>__URL`), in-process otherwise. Configuration, never code.

Calls over HTTP authenticate with this process's client-credentials token
(`IRONCART_SERVICE_CLIENT_ID` / `_SECRET`), fetched from identity's token endpoint when
identity is a service of its own, from the identity service in this process otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from ironcart.cart.client import CartClient, HttpCartClient, InProcessCartClient
from ironcart.cart.service import CartService
from ironcart.catalog.client import CatalogClient, HttpCatalogClient, InProcessCatalogClient
from ironcart.catalog.service import CatalogService
from ironcart.identity.client import HttpIdentityClient, IdentityClient, InProcessIdentityClient
from ironcart.identity.service import IdentityService
from ironcart.inventory.client import HttpInventoryClient, InProcessInventoryClient, InventoryClient
from ironcart.inventory.service import InventoryService
from ironcart.ordering.client import HttpOrderingClient, InProcessOrderingClient, OrderingClient
from ironcart.ordering.service import OrderingService
from ironcart.payments.client import HttpPaymentsClient, InProcessPaymentsClient, PaymentsClient
from ironcart.payments.service import PaymentService
from ironcart.platform.http.service import (
    ClientCredentialsTokens,
    ServiceClient,
    TokenFetcher,
    http_client,
    token_endpoint,
)
from ironcart.platform.resilience import policy_for
from ironcart.platform.settings import ServiceName, Settings
from ironcart.shipping.client import HttpShippingClient, InProcessShippingClient, ShippingClient
from ironcart.shipping.service import ShippingService

Port = TypeVar("Port")


class Wiring:
    """Builds each port once its local service exists; owns the HTTP clients it made."""

    def __init__(self, settings: Settings, identity: IdentityService) -> None:
        self._settings = settings
        self._identity = identity
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._clients: dict[str, ServiceClient] = {}
        self._tokens = ClientCredentialsTokens(self._token_fetcher()) if settings.services else None

    def identity(self) -> IdentityClient:
        """The JWKS source of the token verifier."""
        endpoint = self._settings.services.get("identity")
        if endpoint is None:
            return InProcessIdentityClient(self._identity)
        client = HttpIdentityClient(endpoint.url)
        self._closers.append(client.aclose)
        return client

    def catalog(self, service: CatalogService) -> CatalogClient:
        local: CatalogClient = InProcessCatalogClient(service)
        return self._client_for("catalog", local, HttpCatalogClient)

    def inventory(self, service: InventoryService) -> InventoryClient:
        local: InventoryClient = InProcessInventoryClient(service)
        return self._client_for("inventory", local, HttpInventoryClient)

    def cart(self, service: CartService) -> CartClient:
        local: CartClient = InProcessCartClient(service)
        return self._client_for("cart", local, HttpCartClient)

    def payments(self, service: PaymentService) -> PaymentsClient:
        local: PaymentsClient = InProcessPaymentsClient(service)
        return self._client_for("payments", local, HttpPaymentsClient)

    def shipping(self, service: ShippingService) -> ShippingClient:
        local: ShippingClient = InProcessShippingClient(service)
        return self._client_for("shipping", local, HttpShippingClient)

    def ordering(self, service: OrderingService) -> OrderingClient:
        local: OrderingClient = InProcessOrderingClient(service)
        return self._client_for("ordering", local, HttpOrderingClient)

    async def aclose(self) -> None:
        for close in self._closers:
            await close()

    def _client_for(
        self,
        name: ServiceName,
        in_process: Port,
        over_http: Callable[[ServiceClient], Port],
    ) -> Port:
        """`over_http` on the client of service `name` when it has a URL, else `in_process`."""
        endpoint = self._settings.services.get(name)
        if endpoint is None or self._tokens is None:
            return in_process
        client = self._clients.get(name)
        if client is None:  # one pool, breaker and bulkhead per service, shared by its ports
            policy = policy_for(
                name,
                self._settings.resilience,
                base={"attempt_timeout_seconds": endpoint.read_timeout_seconds},
            )
            client = ServiceClient(name, endpoint, tokens=self._tokens, policy=policy)
            self._clients[name] = client
            self._closers.append(client.aclose)
        return over_http(client)

    def _token_fetcher(self) -> TokenFetcher:
        client_id = self._settings.service_client_id or ""
        secret = self._settings.service_client_secret or ""
        endpoint = self._settings.services.get("identity")
        if endpoint is not None:
            http = http_client(endpoint)
            self._closers.append(http.aclose)
            policy = policy_for("identity", self._settings.resilience)
            return token_endpoint(http, policy, client_id=client_id, client_secret=secret)

        async def in_process() -> tuple[str, int]:
            pair = await self._identity.client_credentials_grant(
                client_id=client_id, client_secret=secret, scope=frozenset()
            )
            return pair.access_token, pair.expires_in

        return in_process
