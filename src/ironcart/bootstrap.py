"""The composition root: settings in, a wired container out. Nothing else opens connections."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ironcart.identity.client import InProcessIdentityClient
from ironcart.identity.repository import IdentityUnitOfWork
from ironcart.identity.service import IdentityService
from ironcart.platform.database import create_engine, ping, session_factory
from ironcart.platform.http.ops import ReadinessCheck
from ironcart.platform.ratelimit import RateLimiter
from ironcart.platform.security.crypto import SecretBox
from ironcart.platform.security.passwords import PasswordHasher
from ironcart.platform.security.tokens import AccessTokenVerifier
from ironcart.platform.settings import Settings


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    identity: IdentityService
    token_verifier: AccessTokenVerifier
    redis: Redis | None = None
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
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
    checks: dict[str, ReadinessCheck] = {"database": lambda: ping(engine)}
    if redis is not None:
        checks["redis"] = lambda: _ping_redis(redis)
    return Container(settings, engine, identity, verifier, redis, checks)


async def _ping_redis(redis: Redis) -> None:
    await redis.ping()
