"""The composition root: settings in, a wired container out. Nothing else opens connections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ironcart.cart.client import InProcessCartClient
from ironcart.cart.repository import CartUnitOfWork
from ironcart.cart.service import CartService
from ironcart.catalog.client import InProcessCatalogClient
from ironcart.catalog.repository import CatalogUnitOfWork
from ironcart.catalog.service import CatalogService
from ironcart.contracts.catalog import ProductChanged
from ironcart.contracts.inventory import StockChanged
from ironcart.identity.client import InProcessIdentityClient
from ironcart.identity.repository import IdentityUnitOfWork
from ironcart.identity.service import IdentityService
from ironcart.inventory.client import InProcessInventoryClient
from ironcart.inventory.repository import InventoryUnitOfWork, inventory_outbox
from ironcart.inventory.service import InventoryService
from ironcart.ordering.checkout import Checkout
from ironcart.ordering.participants import InventoryBranch, OrderBranch, PaymentBranch
from ironcart.ordering.repository import OrderingUnitOfWork
from ironcart.ordering.repository import outbox as ordering_outbox
from ironcart.ordering.service import OrderingService
from ironcart.payments.client import InProcessPaymentsClient
from ironcart.payments.repository import PaymentsUnitOfWork, payments_outbox
from ironcart.payments.sandbox_gateway import HttpSandboxGateway, SandboxWebhookVerifier
from ironcart.payments.service import PaymentService
from ironcart.platform.cache import ResponseCache
from ironcart.platform.database import create_engine, ping, session_factory
from ironcart.platform.events import EventBus
from ironcart.platform.http.ops import ReadinessCheck
from ironcart.platform.ratelimit import RateLimiter
from ironcart.platform.relay import OutboxSource
from ironcart.platform.security.crypto import SecretBox
from ironcart.platform.security.passwords import PasswordHasher
from ironcart.platform.security.tokens import AccessTokenVerifier
from ironcart.platform.settings import Settings
from ironcart.platform.txn.tcc import TccCoordinator, TccParticipant


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
    # The relay that runs in this process (if any) subscribes here to be woken after a
    # commit that recorded events, so in-process delivery takes milliseconds, not a poll.
    outbox_wakeups: list[Callable[[], None]] = field(default_factory=list, kw_only=True)
    # Every context that records events appends its outbox here; the relay publishes them.
    outbox_sources: list[OutboxSource] = field(default_factory=list, kw_only=True)

    async def start(self) -> None:
        await self.cache.start()

    async def aclose(self) -> None:
        await self.cache.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.payments.aclose()
        await self.engine.dispose()


def bootstrap(settings: Settings) -> Container:
    engine = create_engine(settings.database_url, pool_size=settings.database_pool_size)
    sessions = session_factory(engine)
    redis = (
        Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
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
    verifier = AccessTokenVerifier(
        InProcessIdentityClient(identity),
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
    inventory = InventoryService(uow_factory=lambda: InventoryUnitOfWork(sessions), bus=bus)
    cart = CartService(
        uow_factory=lambda: CartUnitOfWork(sessions),
        catalog=InProcessCatalogClient(catalog),
        inventory=InProcessInventoryClient(inventory),
    )
    bus.subscribe(ProductChanged, lambda event: cache.invalidate(_tags_of(event)))
    # The catalog keeps a read model of availability (listings filter on it, pages show it).
    bus.subscribe(
        StockChanged,
        lambda event: catalog.record_availability(sku=event.sku, available=event.available),
    )
    payments = _payments(settings, sessions)
    wakeups: list[Callable[[], None]] = []
    ordering, coordinator = _ordering(
        settings, sessions, catalog, cart, inventory, payments, lambda: _wake(wakeups)
    )
    checks: dict[str, ReadinessCheck] = {"database": lambda: ping(engine)}
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
        outbox_sources=[
            OutboxSource(engine, ordering_outbox),
            OutboxSource(engine, payments_outbox),
            OutboxSource(engine, inventory_outbox),
        ],
        outbox_wakeups=wakeups,
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
        read_timeout_seconds=config.request_timeout_seconds,
        connect_timeout_seconds=config.connect_timeout_seconds,
        max_attempts=config.max_attempts,
        deadline_seconds=config.call_deadline_seconds,
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


def _wake(wakeups: list[Callable[[], None]]) -> None:
    for wake in wakeups:
        wake()


def _ordering(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    catalog: CatalogService,
    cart: CartService,
    inventory: InventoryService,
    payments: PaymentService,
    outbox_written: Callable[[], None],
) -> tuple[OrderingService, TccCoordinator]:
    """Checkout's coordinator over its three branches: stock, money and the order itself."""
    config = settings.ordering
    participants: dict[str, TccParticipant] = {
        "inventory": InventoryBranch(InProcessInventoryClient(inventory)),
        "payments": PaymentBranch(InProcessPaymentsClient(payments)),
    }
    coordinator = TccCoordinator(
        sessions,
        participants,
        in_doubt_after_seconds=config.txn_in_doubt_seconds,
        crash_points=config.crash_points,
    )
    box = SecretBox(settings.secret_key, purpose="ordering-addresses")
    checkout = Checkout(
        uow_factory=lambda: OrderingUnitOfWork(sessions),
        coordinator=coordinator,
        catalog=InProcessCatalogClient(catalog),
        cart=InProcessCartClient(cart),
        inventory=InProcessInventoryClient(inventory),
        address_box=box,
        settings=config,
        outbox_written=outbox_written,
    )
    ordering = OrderingService(
        uow_factory=lambda: OrderingUnitOfWork(sessions),
        checkout=checkout,
        payments=InProcessPaymentsClient(payments),
        inventory=InProcessInventoryClient(inventory),
        address_box=box,
        outbox_written=outbox_written,
    )
    participants["ordering"] = OrderBranch(ordering)
    return ordering, coordinator
