"""The composition root: settings in, a wired container out. Nothing else opens connections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ironcart.cart.client import CartClient
from ironcart.cart.repository import CartUnitOfWork
from ironcart.cart.service import CartService
from ironcart.catalog.client import CatalogClient
from ironcart.catalog.repository import CatalogUnitOfWork
from ironcart.catalog.service import CatalogService
from ironcart.contracts.catalog import ProductChanged
from ironcart.contracts.inventory import StockChanged
from ironcart.contracts.ordering import OrderForFulfilment
from ironcart.contracts.shipping import ShipmentCreated, ShipmentDelivered
from ironcart.identity.repository import IdentityUnitOfWork
from ironcart.identity.service import IdentityService
from ironcart.inventory.client import InventoryClient
from ironcart.inventory.repository import InventoryUnitOfWork, inventory_outbox
from ironcart.inventory.service import InventoryService
from ironcart.ordering.checkout import Checkout
from ironcart.ordering.checkout_xa import KIND as XA_CHECKOUT
from ironcart.ordering.checkout_xa import CheckoutFollowUp, XaCheckout, XaCheckoutParts
from ironcart.ordering.client import OrderingClient
from ironcart.ordering.participants import InventoryBranch, OrderBranch, PaymentBranch
from ironcart.ordering.repository import OrderingUnitOfWork
from ironcart.ordering.repository import outbox as ordering_outbox
from ironcart.ordering.service import OrderingService
from ironcart.payments.client import PaymentsClient
from ironcart.payments.repository import PaymentsUnitOfWork, payments_outbox
from ironcart.payments.sandbox_gateway import HttpSandboxGateway, SandboxWebhookVerifier
from ironcart.payments.service import PaymentService
from ironcart.platform.cache import ResponseCache
from ironcart.platform.database import create_engine, ping, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.http.ops import ReadinessCheck
from ironcart.platform.ratelimit import RateLimiter
from ironcart.platform.relay import OutboxSource
from ironcart.platform.resilience import policy_for
from ironcart.platform.resilience.guarded_redis import guarded_redis
from ironcart.platform.security.crypto import SecretBox
from ironcart.platform.security.passwords import PasswordHasher
from ironcart.platform.security.tokens import AccessTokenVerifier
from ironcart.platform.settings import PaymentsSettings, Settings, ShippingSettings
from ironcart.platform.txn.tcc import TccCoordinator, TccParticipant
from ironcart.platform.txn.xa import XaCoordinator, xa_resource
from ironcart.shipping.client import ShippingClient
from ironcart.shipping.repository import ShippingUnitOfWork, shipping_outbox
from ironcart.shipping.sandbox_carrier import HttpSandboxCarrier, SandboxTrackingVerifier
from ironcart.shipping.service import ShippingService
from ironcart.wiring import Wiring

# A command that has not answered in 1 s counts as failed for the "redis" breaker (a cache
# hit or a counter takes well under a millisecond): a frozen Redis costs a few requests one
# second each, then none while the breaker is open.
REDIS_TIMING = {"attempt_timeout_seconds": 1.0}


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    identity: IdentityService
    token_verifier: AccessTokenVerifier
    bus: EventBus
    cache: ResponseCache
    catalog: CatalogService
    redis: Redis | None = None
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    inventory: InventoryService = field(kw_only=True)
    cart: CartService = field(kw_only=True)
    payments: PaymentService = field(kw_only=True)
    ordering: OrderingService = field(kw_only=True)
    coordinator: TccCoordinator = field(kw_only=True)
    shipping: ShippingService = field(kw_only=True)
    # IRONCART_INVENTORY_DATABASE_URL: inventory's own engine (None: it uses `engine`).
    inventory_engine: AsyncEngine | None = field(default=None, kw_only=True)
    # IRONCART_CHECKOUT_TXN=xa: checkout's XA coordinator (the worker runs its recovery).
    xa: XaCoordinator | None = field(default=None, kw_only=True)
    # The relay that runs in this process (if any) subscribes here to be woken after a
    # commit that recorded events, so in-process delivery takes milliseconds, not a poll.
    outbox_wakeups: list[Callable[[], None]] = field(default_factory=list, kw_only=True)
    # Every context that records events appends its outbox here; the relay publishes them.
    outbox_sources: list[OutboxSource] = field(default_factory=list, kw_only=True)
    # The ports' HTTP clients to other services (none when every context is in-process).
    wiring: Wiring | None = field(default=None, kw_only=True)

    async def start(self) -> None:
        await self.cache.start()

    async def aclose(self) -> None:
        await self.cache.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.payments.aclose()
        await self.shipping.aclose()
        if self.wiring is not None:
            await self.wiring.aclose()
        await self.engine.dispose()
        if self.inventory_engine is not None:
            await self.inventory_engine.dispose()


def bootstrap(settings: Settings) -> Container:
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    sessions = session_factory(engine)
    inventory_engine = (
        create_engine(settings.inventory_database_url, pool_size=settings.database_pool_size)
        if settings.inventory_database_url
        else None
    )
    inventory_sessions = session_factory(inventory_engine) if inventory_engine else sessions
    redis = (
        guarded_redis(
            settings.redis_url, policy_for("redis", settings.resilience, base=REDIS_TIMING)
        )
        if settings.redis_url
        else None
    )
    limiter = RateLimiter.redis(redis) if redis is not None else RateLimiter.in_process()
    identity_settings = settings.identity
    identity = IdentityService(
        uow_factory=lambda: IdentityUnitOfWork(sessions),
        hasher=PasswordHasher(
            memory_kib=identity_settings.argon2_memory_kib,
            time_cost=identity_settings.argon2_time_cost,
            parallelism=identity_settings.argon2_parallelism,
            concurrency=identity_settings.password_hashing_concurrency,
        ),
        limiter=limiter,
        settings=identity_settings,
        key_box=SecretBox(settings.secret_key, purpose="identity-signing-keys"),
    )
    # Each port over HTTP when its context is another service, in-process otherwise.
    wiring = Wiring(settings, identity)
    verifier = AccessTokenVerifier(
        wiring.identity(),
        issuer=identity_settings.issuer,
        audience=identity_settings.audience,
        min_reload_interval_seconds=identity_settings.jwks_reload_min_interval_seconds,
    )
    bus = EventBus()
    cache = ResponseCache(
        redis,
        fresh_seconds=settings.catalog.cache_fresh_seconds,
        keep_seconds=settings.catalog.cache_keep_seconds,
        l1_seconds=settings.catalog.cache_l1_seconds,
        stale_on=(OperationalError, InterfaceError, PoolTimeoutError, OSError),
        enabled=settings.catalog.cache_enabled,
    )
    catalog = CatalogService(uow_factory=lambda: CatalogUnitOfWork(sessions), bus=bus)
    inventory = InventoryService(
        uow_factory=lambda: InventoryUnitOfWork(inventory_sessions), bus=bus
    )
    cart = CartService(
        uow_factory=lambda: CartUnitOfWork(sessions),
        catalog=wiring.catalog(catalog),
        inventory=wiring.inventory(inventory),
    )
    bus.subscribe(ProductChanged, lambda event: cache.invalidate(_tags_of(event)))
    # The catalog keeps a read model of availability (listings filter on it, pages show it).
    bus.subscribe(
        StockChanged,
        lambda event: catalog.record_availability(sku=event.sku, available=event.available),
    )
    payments = _payments(settings, sessions)
    xa = _xa(settings, engine, inventory_engine or engine, wiring.payments(payments))
    wakeups: list[Callable[[], None]] = []
    # Shipping reads orders and checkout quotes shipping: the ordering port is bound once
    # ordering exists.
    orders_port = _LateOrderingClient()
    shipping = _shipping(settings, sessions, orders_port, lambda: _wake(wakeups))
    ordering, coordinator = _ordering(
        settings,
        sessions,
        wiring.catalog(catalog),
        wiring.cart(cart),
        wiring.inventory(inventory),
        wiring.payments(payments),
        wiring.shipping(shipping),
        lambda: _wake(wakeups),
        xa,
    )
    orders_port.bind(wiring.ordering(ordering))
    # Fulfilment: the order follows its shipments (shipping's outbox -> the bus, at least once).
    bus.subscribe(ShipmentCreated, ordering.on_shipment_created, retried=True)
    bus.subscribe(ShipmentDelivered, ordering.on_shipment_delivered, retried=True)
    checks: dict[str, ReadinessCheck] = {"database": lambda: ping(engine)}
    if inventory_engine is not None:
        checks["inventory_database"] = lambda: ping(inventory_engine)
    if redis is not None:
        checks["redis"] = lambda: _ping_redis(redis)
    return Container(
        settings,
        engine,
        identity,
        verifier,
        bus,
        cache,
        catalog,
        redis,
        checks,
        inventory=inventory,
        cart=cart,
        payments=payments,
        ordering=ordering,
        coordinator=coordinator,
        shipping=shipping,
        inventory_engine=inventory_engine,
        xa=None if xa is None else xa.coordinator,
        outbox_sources=[
            OutboxSource(engine, ordering_outbox),
            OutboxSource(engine, payments_outbox),
            OutboxSource(inventory_engine or engine, inventory_outbox),
            OutboxSource(engine, shipping_outbox),
        ],
        outbox_wakeups=wakeups,
        wiring=wiring,
    )


def _tags_of(event: ProductChanged) -> list[str]:
    """Cache tags a catalog change makes stale: the product page under each name, listings."""
    tags = [f"product:{name}" for name in (event.product_id, *event.slugs) if name]
    if event.listing_changed:
        tags.append("listing")
    if not event.product_id:  # a catalogue-wide change (categories, a full availability sync)
        tags += ["categories", "products"]
    return tags


async def _ping_redis(redis: Redis) -> None:
    await redis.ping()


def _payments(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> PaymentService:
    """Payments over the configured provider (the sandbox PSP): one HTTP client per process."""
    config = settings.payments
    gateway = HttpSandboxGateway(
        base_url=config.psp_url,
        api_key=config.psp_api_key,
        connect_timeout_seconds=config.connect_timeout_seconds,
        policy=policy_for("psp", settings.resilience, base=_provider_timing(config)),
    )
    verifier = SandboxWebhookVerifier(
        secret=config.webhook_secret, tolerance_seconds=config.webhook_tolerance_seconds
    )
    return PaymentService(
        uow_factory=lambda: PaymentsUnitOfWork(sessions),
        gateway=gateway,
        verifier=verifier,
        provider=config.provider,
    )


def _provider_timing(config: PaymentsSettings | ShippingSettings) -> dict[str, float]:
    """A provider's timeouts and attempts, from its context's section (resilience overrides win)."""
    return {
        "attempt_timeout_seconds": config.request_timeout_seconds,
        "deadline_seconds": config.call_deadline_seconds,
        "max_attempts": config.max_attempts,
    }


class _LateOrderingClient:
    """The ordering port for shipping, bound after ordering is built (they use each other)."""

    def __init__(self) -> None:
        self._client: OrderingClient | None = None

    def bind(self, client: OrderingClient) -> None:
        self._client = client

    async def order_for_fulfilment(self, order_id: str) -> OrderForFulfilment | None:
        if self._client is None:
            raise RuntimeError("the ordering port is not bound yet")
        return await self._client.order_for_fulfilment(order_id)

    async def begin_fulfilment(self, order_id: str) -> bool:
        if self._client is None:
            raise RuntimeError("the ordering port is not bound yet")
        return await self._client.begin_fulfilment(order_id)


def _shipping(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    ordering: OrderingClient,
    outbox_written: Callable[[], None],
) -> ShippingService:
    """Shipping over the configured carriers (the sandbox carrier): one HTTP client each."""
    config = settings.shipping
    carrier = HttpSandboxCarrier(
        base_url=config.carrier_url,
        api_key=config.carrier_api_key,
        connect_timeout_seconds=config.connect_timeout_seconds,
        policy=policy_for(
            "carrier", settings.resilience, base={**_provider_timing(config), "max_concurrent": 20}
        ),
    )
    verifiers = {
        name: SandboxTrackingVerifier(
            secret=secret, tolerance_seconds=config.webhook_tolerance_seconds
        )
        for name, secret in config.webhook_secrets.items()
    }
    return ShippingService(
        uow_factory=lambda: ShippingUnitOfWork(sessions),
        ordering=ordering,
        carriers={"sandbox": carrier},
        verifiers=verifiers,
        outbox_written=outbox_written,
    )


def _wake(wakeups: list[Callable[[], None]]) -> None:
    for wake in wakeups:
        wake()


def _ordering(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    catalog: CatalogClient,
    cart: CartClient,
    inventory: InventoryClient,
    payments: PaymentsClient,
    shipping: ShippingClient,
    outbox_written: Callable[[], None],
    xa: XaCheckoutParts | None = None,
) -> tuple[OrderingService, TccCoordinator]:
    """Checkout's coordinator over its three branches: stock, money and the order itself."""
    config = settings.ordering
    participants: dict[str, TccParticipant] = {
        "inventory": InventoryBranch(inventory),
        "payments": PaymentBranch(payments),
    }
    coordinator = TccCoordinator(
        sessions,
        participants,
        in_doubt_after_seconds=config.txn_in_doubt_seconds,
        crash_points=config.crash_points,
    )
    box = SecretBox(settings.secret_key, purpose="ordering-addresses")
    new_checkout: Callable[..., Checkout] = Checkout if xa is None else partial(XaCheckout, xa=xa)
    checkout = new_checkout(
        uow_factory=lambda: OrderingUnitOfWork(sessions),
        coordinator=coordinator,
        catalog=catalog,
        cart=cart,
        inventory=inventory,
        shipping=shipping,
        address_box=box,
        settings=config,
        outbox_written=outbox_written,
    )
    ordering = OrderingService(
        uow_factory=lambda: OrderingUnitOfWork(sessions),
        checkout=checkout,
        payments=payments,
        inventory=inventory,
        address_box=box,
        outbox_written=outbox_written,
    )
    participants["ordering"] = OrderBranch(ordering)
    if xa is not None:
        xa.coordinator.follow_up(XA_CHECKOUT, CheckoutFollowUp(xa.payments, ordering))
    return ordering, coordinator


def _xa(
    settings: Settings, engine: AsyncEngine, inventory_engine: AsyncEngine, payments: PaymentsClient
) -> XaCheckoutParts | None:
    """XA mode: the coordinator logs in ordering's (the main) database, over two resources."""
    if settings.checkout_txn != "xa":
        return None
    config = settings.xa
    ordering = xa_resource("ordering", engine)
    inventory = xa_resource("inventory", inventory_engine)
    coordinator = XaCoordinator(
        engine,
        [ordering, inventory],
        gid_prefix=config.gid_prefix,
        in_doubt_after_seconds=config.in_doubt_seconds,
        crash_points=frozenset(config.crash_points),
    )
    return XaCheckoutParts(coordinator, ordering, inventory, payments)
