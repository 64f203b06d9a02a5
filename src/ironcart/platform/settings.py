"""One validated `Settings` object for the whole process.

Sources, highest priority first: keyword arguments, `IRONCART_*` environment
variables (nested sections with `__`, e.g. `IRONCART_IDENTITY__ACCESS_TOKEN_TTL_SECONDS`),
an optional TOML file named by `IRONCART_CONFIG_FILE`, then the defaults below.
Nothing here is read at import time: `load_settings()` is called by the composition root.
"""

from __future__ import annotations

import os
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEVELOPMENT_SECRET = "development-only-secret-change-me"  # noqa: S105 - refused outside development
# The sandbox carrier's published test credentials: refused in production.
SANDBOX_CARRIER_API_KEY = "ck_test_ironcart"
SANDBOX_CARRIER_WEBHOOK_SECRET = "sandbox-carrier-webhook-secret"  # noqa: S105 - refused in production


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class DatabaseBackend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"


_DRIVERS = {
    "sqlite": (DatabaseBackend.SQLITE, "sqlite+aiosqlite"),
    "sqlite+aiosqlite": (DatabaseBackend.SQLITE, "sqlite+aiosqlite"),
    "postgres": (DatabaseBackend.POSTGRESQL, "postgresql+asyncpg"),
    "postgresql": (DatabaseBackend.POSTGRESQL, "postgresql+asyncpg"),
    "postgresql+asyncpg": (DatabaseBackend.POSTGRESQL, "postgresql+asyncpg"),
    "mysql": (DatabaseBackend.MYSQL, "mysql+asyncmy"),
    "mariadb": (DatabaseBackend.MYSQL, "mysql+asyncmy"),
    "mysql+asyncmy": (DatabaseBackend.MYSQL, "mysql+asyncmy"),
    "mariadb+asyncmy": (DatabaseBackend.MYSQL, "mysql+asyncmy"),
}


def normalise_database_url(url: str) -> str:
    """Map a user-written URL (`postgresql://`, `mariadb://`, `sqlite:///`) to an async driver."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in _DRIVERS:
        supported = "sqlite:///path, postgresql://..., mysql://... or mariadb://..."
        raise ValueError(f"unsupported database URL scheme {scheme!r}; use {supported}")
    return f"{_DRIVERS[scheme.lower()][1]}://{rest}"


def database_backend(url: str) -> DatabaseBackend:
    scheme = url.partition("://")[0].lower()
    return _DRIVERS[scheme][0]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentitySettings(_Section):
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=3600, le=365 * 24 * 3600)
    issuer: str = Field(default="ironcart", min_length=1, max_length=200)
    audience: str = Field(default="ironcart-api", min_length=1, max_length=200)
    # OWASP Password Storage Cheat Sheet minimum for Argon2id: m=19 MiB, t=2, p=1.
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1, le=16)
    password_hashing_concurrency: int = Field(default=4, ge=1, le=64)
    login_failures_per_account_per_hour: int = Field(default=100, ge=1, le=100)
    login_attempts_per_ip_per_minute: int = Field(default=30, ge=1)
    registrations_per_ip_per_hour: int = Field(default=50, ge=1)
    jwks_reload_min_interval_seconds: float = Field(default=5.0, ge=0.0)


class CatalogSettings(_Section):
    currency: str = Field(default="USD", pattern="^[A-Z]{3}$")
    cache_fresh_seconds: float = Field(default=300.0, gt=0, le=86400)
    cache_keep_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    cache_l1_seconds: float = Field(default=1.0, ge=0, le=1.0)
    # Off only to measure uncached reads (`make bench` case c); never in a real deployment.
    cache_enabled: bool = True


class OrderingSettings(_Section):
    # Tax on subtotal + shipping, e.g. 0.2 for 20 %; rounded half-up to the minor unit.
    tax_rate: Decimal = Field(default=Decimal("0"), ge=0, le=1)
    # Stock held by a checkout is a safety net only: the coordinator decides in seconds.
    reservation_ttl_seconds: int = Field(default=900, ge=60, le=86400)
    idempotency_ttl_hours: int = Field(default=24, ge=24, le=24 * 30)
    idempotency_wait_seconds: float = Field(default=10.0, ge=0, le=60)
    # A claim this old without an answer belongs to a request that died.
    idempotency_stale_seconds: float = Field(default=30.0, ge=1, le=3600)
    # A global transaction still `trying` after this long is in doubt and is cancelled.
    txn_in_doubt_seconds: float = Field(default=60.0, ge=1, le=3600)
    recovery_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    # Bulkhead: checkouts running at once in one process; the others wait (without holding
    # a database connection) up to `checkout_queue_seconds`, then get a 503.
    max_concurrent_checkouts: int = Field(default=8, ge=1, le=1000)
    checkout_queue_seconds: float = Field(default=10.0, gt=0, le=60)
    # Chaos tests: the checkout process SIGKILLs itself at these steps, e.g.
    # "after_try:inventory", "after_try:payment", "after_decision", "after_confirm:inventory".
    # Refused in production.
    crash_points: frozenset[str] = frozenset()


class PaymentsSettings(_Section):
    """The payment provider. The defaults point at the sandbox PSP (`ironcart sandbox-psp`);
    its API key and webhook secret are test values: a real deployment sets
    IRONCART_PAYMENTS__PSP_API_KEY and IRONCART_PAYMENTS__WEBHOOK_SECRET (not refused in
    production, because production mode also runs against the sandbox for benchmarks)."""

    provider: str = Field(default="sandbox", pattern="^[a-z0-9_-]{1,32}$")
    psp_url: str = Field(default="http://127.0.0.1:8790", pattern="^https?://")
    psp_api_key: str = Field(default="sk_test_ironcart", min_length=1)  # test value
    webhook_secret: str = Field(default="sandbox-webhook-secret", min_length=8)  # test value
    connect_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    # The PSP's policy (platform.resilience; its breaker and bulkhead from the resilience
    # section): checkout must fail fast when the PSP stalls. An authorization answers in well
    # under a second, so one attempt gets 1 s, and a call with its retries 1.5 s: a timed-out
    # attempt is retried only within what is left; a quick 5xx is retried at once.
    request_timeout_seconds: float = Field(default=1.0, gt=0, le=120)
    # One call, all its attempts and backoff included, never takes longer than this.
    call_deadline_seconds: float = Field(default=1.5, gt=0, le=300)
    max_attempts: int = Field(default=3, ge=1, le=10)
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    # Payments left authorizing/capturing (refunds pending) this long are reconciled.
    reconcile_after_seconds: float = Field(default=60.0, ge=1, le=86400)

    @model_validator(mode="after")
    def _reconcile_after_every_call_ended(self) -> PaymentsSettings:
        # Reconciling a payment whose call may still be in flight could give it up too early.
        if self.reconcile_after_seconds <= self.call_deadline_seconds:
            raise ValueError("reconcile_after_seconds must exceed call_deadline_seconds")
        return self


class ShippingSettings(_Section):
    """The carriers. The defaults point at the sandbox carrier (`ironcart sandbox-carrier`);
    its API key and webhook secret are published test values, refused in production (anyone
    could sign tracking events with that secret): a real deployment sets
    IRONCART_SHIPPING__CARRIER_API_KEY and IRONCART_SHIPPING__WEBHOOK_SECRETS."""

    carrier_url: str = Field(default="http://127.0.0.1:8791", pattern="^https?://")
    carrier_api_key: str = Field(default=SANDBOX_CARRIER_API_KEY, min_length=1)
    # Per carrier (the `{carrier}` of the webhook path): a carrier not listed is unknown (404).
    webhook_secrets: dict[str, str] = Field(
        default_factory=lambda: {"sandbox": SANDBOX_CARRIER_WEBHOOK_SECRET}
    )
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    connect_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    request_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    call_deadline_seconds: float = Field(default=15.0, gt=0, le=300)
    max_attempts: int = Field(default=4, ge=1, le=10)
    # Shipments still without a label this long after they were made (the carrier was down,
    # or the process died before its answer was recorded) are asked for again.
    resume_after_seconds: float = Field(default=60.0, ge=1, le=86400)

    @model_validator(mode="after")
    def _resume_after_every_call_ended(self) -> ShippingSettings:
        # A shipment whose first call may still be running is not resumed.
        if self.resume_after_seconds <= self.call_deadline_seconds:
            raise ValueError("resume_after_seconds must exceed call_deadline_seconds")
        return self

    def placeholders(self) -> list[str]:
        """The settings still holding the sandbox carrier's published test values."""
        found = []
        if self.carrier_api_key == SANDBOX_CARRIER_API_KEY:
            found.append("IRONCART_SHIPPING__CARRIER_API_KEY")
        if SANDBOX_CARRIER_WEBHOOK_SECRET in self.webhook_secrets.values():
            found.append("IRONCART_SHIPPING__WEBHOOK_SECRETS")
        return found

    @field_validator("webhook_secrets")
    @classmethod
    def _carrier_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        for carrier, secret in value.items():
            if not carrier or len(carrier) > 32 or not carrier.replace("_", "").isalnum():
                raise ValueError(f"not a carrier name: {carrier!r}")
            if len(secret) < 8:
                raise ValueError(f"the webhook secret of {carrier!r} is shorter than 8")
        return value


class XaSettings(_Section):
    """Two-phase commit across databases (`IRONCART_CHECKOUT_TXN=xa`, `platform.txn.xa`)."""

    # A prepared transaction still `preparing` this long (its coordinator died) is rolled
    # back by recovery; so is a prepared branch of ours that has no log row.
    in_doubt_seconds: float = Field(default=60.0, ge=1, le=3600)
    recovery_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    # Starts every gid: unique per deployment when deployments share a database server
    # (MariaDB's XA RECOVER lists the whole server's prepared transactions).
    gid_prefix: str = Field(default="ironcart", pattern="^[a-z][a-z0-9]{0,11}$")
    # Chaos tests: the coordinator SIGKILLs itself there. Refused in production.
    crash_points: frozenset[Literal["after_prepare", "after_decision", "after_first_commit"]] = (
        frozenset()
    )


class TracingSettings(_Section):
    """OpenTelemetry traces (`platform.tracing`). Off by default: then nothing is traced and
    no request pays for it. `exporter=none` still traces (trace ids in logs, `traceparent`
    passed on) without writing spans anywhere; `jsonl` appends one JSON span a line."""

    enabled: bool = False
    exporter: Literal["none", "console", "jsonl"] = "none"
    jsonl_path: Path | None = None
    # Head sampling of new traces; a request arriving with a sampled `traceparent` is kept.
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    export_interval_seconds: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _jsonl_needs_a_path(self) -> TracingSettings:
        if self.exporter == "jsonl" and self.jsonl_path is None:
            raise ValueError("exporter=jsonl needs jsonl_path (IRONCART_TRACING__JSONL_PATH)")
        return self


class AdmissionSettings(_Section):
    """Admission control (`platform.resilience`): rate limits on /api routes and load shedding.

    Limits are `limits` notation ("6000/minute"), fixed windows aligned to the clock, counted
    in Redis when it is configured (shared by every process), in-process otherwise.
    """

    rate_limits_enabled: bool = True
    per_ip: str = "6000/minute"
    # Count the per-IP limit in Redis (shared by every process) rather than in each process;
    # off by default: a round trip per request halves the cached read path, and the edge's
    # `limit_req` (ironcart deploy nginx --rate-limit) shares one limit per address.
    per_ip_shared: bool = False
    per_user: str = "3000/minute"
    # Service callers (client-credentials tokens): their own limit instead of the per-IP one.
    per_client: str = "60000/minute"
    # One hot resource (a SKU added to carts or checked out), summed over every caller.
    per_hot_resource: str = "300/second"
    shedding_enabled: bool = True
    # Requests in flight in one process at which new ones of each priority are refused (503);
    # `max_in_flight_high` is the hard cap that bounds the process's memory. An asyncio
    # process holds hundreds of cheap requests at once (a flash crowd of 200 buyers is a
    # normal day): the bounds are about memory; event-loop lag is the overload signal.
    max_in_flight_low: int = Field(default=512, ge=1, le=100_000)
    max_in_flight_normal: int = Field(default=768, ge=1, le=100_000)
    max_in_flight_high: int = Field(default=1024, ge=1, le=100_000)
    # Smoothed event-loop lag at which new low / normal priority requests are refused.
    max_lag_low_ms: float = Field(default=500.0, gt=0, le=60_000)
    max_lag_normal_ms: float = Field(default=1500.0, gt=0, le=60_000)
    lag_sample_ms: float = Field(default=50.0, ge=5, le=1000)
    shed_retry_after_seconds: int = Field(default=1, ge=1, le=300)

    @field_validator("per_ip", "per_user", "per_client", "per_hot_resource")
    @classmethod
    def _limit_notation(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as error:
            raise ValueError(f"not a rate limit such as '600/minute': {value!r}") from error
        return value

    @model_validator(mode="after")
    def _low_priority_refused_first(self) -> AdmissionSettings:
        if not self.max_in_flight_low <= self.max_in_flight_normal <= self.max_in_flight_high:
            raise ValueError("max_in_flight_low <= max_in_flight_normal <= max_in_flight_high")
        if self.max_lag_low_ms > self.max_lag_normal_ms:
            raise ValueError("max_lag_low_ms must not exceed max_lag_normal_ms")
        return self


class DependencyPolicySettings(_Section):
    """Per-dependency overrides of `ResilienceSettings` (unset: the default applies)."""

    attempt_timeout_seconds: float | None = Field(default=None, gt=0, le=300)
    deadline_seconds: float | None = Field(default=None, gt=0, le=600)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    backoff_initial_seconds: float | None = Field(default=None, ge=0, le=60)
    backoff_max_seconds: float | None = Field(default=None, ge=0, le=60)
    max_concurrent: int | None = Field(default=None, ge=1, le=10_000)
    queue_seconds: float | None = Field(default=None, ge=0, le=60)
    retry_budget_ratio: float | None = Field(default=None, ge=0, le=10)
    retry_budget_floor_per_second: float | None = Field(default=None, ge=0, le=1000)
    window_seconds: float | None = Field(default=None, gt=0, le=3600)
    minimum_calls: int | None = Field(default=None, ge=1, le=100_000)
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    slow_call_seconds: float | None = Field(default=None, gt=0, le=600)
    slow_call_ratio: float | None = Field(default=None, gt=0, le=1)
    open_seconds: float | None = Field(default=None, gt=0, le=3600)
    half_open_probes: int | None = Field(default=None, ge=1, le=1000)
    consecutive_failures: int | None = Field(default=None, ge=0, le=100_000)


class ResilienceSettings(_Section):
    """Outbound call policies (`platform.resilience`): the defaults of every dependency, then
    `dependencies.<name>` overrides, e.g. IRONCART_RESILIENCE__DEPENDENCIES__PSP__OPEN_SECONDS.
    The PSP's and carrier's timeouts and attempts come from the payments / shipping sections."""

    # A request's own deadline (a caller may ask for less with X-Request-Deadline-Ms), and
    # tighter ones per route, e.g. {"POST /api/v1/orders": 2.0}: outbound calls then only get
    # what is left of it. None by default: under load the database work of a healthy checkout
    # alone can take that long, and the PSP's own policy already bounds its calls.
    request_deadline_seconds: float = Field(default=30.0, gt=0, le=3600)
    route_deadlines: dict[str, float] = Field(default_factory=dict)
    attempt_timeout_seconds: float = Field(default=2.0, gt=0, le=300)
    deadline_seconds: float = Field(default=5.0, gt=0, le=600)
    max_attempts: int = Field(default=3, ge=1, le=10)
    backoff_initial_seconds: float = Field(default=0.05, ge=0, le=60)
    backoff_max_seconds: float = Field(default=1.0, ge=0, le=60)
    # Bulkhead: calls in flight to one dependency, and how long the next may wait for a slot.
    max_concurrent: int = Field(default=50, ge=1, le=10_000)
    queue_seconds: float = Field(default=0.1, ge=0, le=60)
    # Retry budget: retries <= ratio x calls + floor x window, over the breaker's window.
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=10)
    retry_budget_floor_per_second: float = Field(default=1.0, ge=0, le=1000)
    # Circuit breaker over a sliding window of `window_seconds` (ten buckets).
    window_seconds: float = Field(default=10.0, gt=0, le=3600)
    minimum_calls: int = Field(default=5, ge=1, le=100_000)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    slow_call_seconds: float = Field(default=1.0, gt=0, le=600)
    slow_call_ratio: float = Field(default=0.8, gt=0, le=1)
    open_seconds: float = Field(default=5.0, gt=0, le=3600)
    half_open_probes: int = Field(default=2, ge=1, le=1000)
    # Opens after this many failures in a row whatever the window holds (0: never).
    consecutive_failures: int = Field(default=5, ge=0, le=100_000)
    dependencies: dict[str, DependencyPolicySettings] = Field(default_factory=dict)

    @field_validator("dependencies")
    @classmethod
    def _dependency_names(
        cls, value: dict[str, DependencyPolicySettings]
    ) -> dict[str, DependencyPolicySettings]:
        # Environment variables arrive lower-cased: names are lower-case everywhere.
        for name in value:
            if not name or len(name) > 32 or not name.replace("_", "").isalnum():
                raise ValueError(f"not a dependency name: {name!r}")
        return {name.lower(): overrides for name, overrides in value.items()}

    @field_validator("route_deadlines")
    @classmethod
    def _routes(cls, value: dict[str, float]) -> dict[str, float]:
        for route, seconds in value.items():
            method, _, path = route.partition(" ")
            if not method.isalpha() or not path.startswith("/") or not 0 < seconds <= 3600:
                raise ValueError(f"not 'METHOD /path' with 0 < seconds <= 3600: {route!r}")
        return {f"{r.partition(' ')[0].upper()} {r.partition(' ')[2]}": s for r, s in value.items()}


class ServerSettings(_Section):
    # Run the worker's jobs (outbox relay, checkout recovery, reservation expiry...) inside
    # each server process: the embedded default. Production may run `ironcart worker` instead.
    background_jobs: bool = True
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    graceful_shutdown_seconds: int = Field(default=30, ge=1, le=600)
    readiness_timeout_seconds: float = Field(default=2.0, gt=0, le=30)


class RelaySettings(_Section):
    """The outbox relay and the NATS JetStream stream it feeds (consumers use the same names)."""

    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    retention_days: int = Field(default=7, ge=1, le=365)
    stream: str = Field(default="IRONCART", pattern="^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field(default="ironcart", pattern="^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$")
    # Outbox tables (`<prefix>_outbox`) relayed besides the contexts' own: for tests and
    # operations (draining a table no context registers any more).
    extra_outbox_prefixes: tuple[str, ...] = ()

    @field_validator("extra_outbox_prefixes")
    @classmethod
    def _table_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not prefix.isidentifier() or not prefix.islower():
                raise ValueError(f"not a table prefix: {prefix!r}")
        return value


ServiceName = Literal[
    "identity", "catalog", "inventory", "cart", "ordering", "payments", "shipping"
]


class ServiceEndpoint(_Section):
    """Another context running as its own service: its port then goes over HTTP
    (`IRONCART_SERVICES__INVENTORY__URL=http://127.0.0.1:8003`)."""

    url: str = Field(pattern=r"^https?://[^/\s?#]+(/[^\s?#]*)?$", max_length=300)
    connect_timeout_seconds: float = Field(default=1.0, gt=0, le=30)
    read_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    max_connections: int = Field(default=100, ge=1, le=10_000)


class Settings(BaseSettings):
    """Everything the process can be told. Invalid values stop the start with the setting's name."""

    model_config = SettingsConfigDict(
        env_prefix="IRONCART_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    environment: Environment = Environment.DEVELOPMENT
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    database_url: str = "sqlite:///var/ironcart.db"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    redis_url: str | None = None
    bus_url: str | None = None
    secret_key: str = Field(default=DEVELOPMENT_SECRET, min_length=16)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    log_json: bool = True
    # How checkout commits across orders and inventory: TCC (any store) or XA two-phase
    # commit (PostgreSQL / MySQL only; for orders and inventory in different databases).
    checkout_txn: Literal["tcc", "xa"] = "tcc"
    # Inventory's own database; None: the main database.
    inventory_database_url: str | None = None
    xa: XaSettings = XaSettings()
    identity: IdentitySettings = IdentitySettings()
    catalog: CatalogSettings = CatalogSettings()
    payments: PaymentsSettings = PaymentsSettings()
    server: ServerSettings = ServerSettings()
    relay: RelaySettings = RelaySettings()
    ordering: OrderingSettings = OrderingSettings()
    shipping: ShippingSettings = ShippingSettings()
    resilience: ResilienceSettings = ResilienceSettings()
    admission: AdmissionSettings = AdmissionSettings()
    tracing: TracingSettings = TracingSettings()
    # Contexts served by other processes; a context not listed is called in-process.
    services: dict[ServiceName, ServiceEndpoint] = Field(default_factory=dict)
    # This process's OAuth2 client (`ironcart client create --scope service:<context> ...`)
    # for its calls to the services above.
    service_client_id: str | None = Field(default=None, min_length=1, max_length=200)
    service_client_secret: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        normalise_database_url(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("bus_url")
    @classmethod
    def _bus_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith("nats://"):
            raise ValueError("must start with nats://")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        if self.environment is Environment.PRODUCTION and self.secret_key == DEVELOPMENT_SECRET:
            raise ValueError("IRONCART_SECRET_KEY must be set to a real secret in production")
        if self.environment is Environment.PRODUCTION and self.ordering.crash_points:
            raise ValueError("IRONCART_ORDERING__CRASH_POINTS is for chaos tests, never production")
        return self

    @field_validator("inventory_database_url")
    @classmethod
    def _known_inventory_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        normalise_database_url(value)
        return value

    @model_validator(mode="after")
    def _xa_needs_two_phase_commit(self) -> Settings:
        if self.environment is Environment.PRODUCTION and self.xa.crash_points:
            raise ValueError("IRONCART_XA__CRASH_POINTS is for chaos tests, never production")
        if self.checkout_txn != "xa":
            return self
        urls = {"IRONCART_DATABASE_URL": self.database_url}
        if self.inventory_database_url:
            urls["IRONCART_INVENTORY_DATABASE_URL"] = self.inventory_database_url
        for name, url in urls.items():
            if database_backend(url) is DatabaseBackend.SQLITE:
                raise ValueError(
                    f"IRONCART_CHECKOUT_TXN=xa needs PostgreSQL or MySQL/MariaDB: {name} is"
                    " SQLite, which has no two-phase commit (use IRONCART_CHECKOUT_TXN=tcc)"
                )
        return self

    @model_validator(mode="after")
    def _no_sandbox_carrier_credentials_in_production(self) -> Settings:
        placeholders = self.shipping.placeholders()
        if self.environment is Environment.PRODUCTION and placeholders:
            raise ValueError(
                f"{' and '.join(placeholders)} must be set to real secrets in production"
                " (the defaults are the sandbox carrier's published test values)"
            )
        return self

    @model_validator(mode="after")
    def _services_need_credentials(self) -> Settings:
        if not self.services:
            return self
        if not (self.service_client_id and self.service_client_secret):
            raise ValueError(
                "IRONCART_SERVICES__*__URL is set: IRONCART_SERVICE_CLIENT_ID and"
                " IRONCART_SERVICE_CLIENT_SECRET must name this process's service client"
                " (ironcart client create --scope service:<context> ...)"
            )
        if self.checkout_txn == "xa" and "inventory" in self.services:
            raise ValueError(
                "IRONCART_CHECKOUT_TXN=xa sells stock in a branch on inventory's database, which"
                " cannot go over HTTP: unset IRONCART_SERVICES__INVENTORY__URL or use tcc"
            )
        return self

    @property
    def async_database_url(self) -> str:
        return normalise_database_url(self.database_url)

    @property
    def database_backend(self) -> DatabaseBackend:
        return database_backend(self.database_url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("IRONCART_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


class SettingsError(Exception):
    """Raised when the configuration is invalid; the message names every bad setting."""


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, turning pydantic's error into one readable message."""
    config_file = os.environ.get("IRONCART_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"IRONCART_CONFIG_FILE: no such file: {config_file}")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    lines = ["invalid settings:"]
    for item in error.errors():
        path = [str(part) for part in item["loc"] if part != "__root__"]
        name = "IRONCART_" + "__".join(path).upper() if path else "settings"
        lines.append(f"  {name}: {item['msg']}")
    return "\n".join(lines)
