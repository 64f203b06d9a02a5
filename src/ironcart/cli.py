"""The `ironcart` command: serve, migrate, seed, users, clients, keys."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click

from ironcart.deployment.commands import deploy
from ironcart.platform.settings import Settings, SettingsError, load_settings

T = TypeVar("T")
SERVICE_CHOICES = [
    "all",
    "identity",
    "catalog",
    "inventory",
    "cart",
    "ordering",
    "payments",
    "shipping",
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _run(factory: Callable[[Settings], Coroutine[Any, Any, T]], settings: Settings) -> T:
    from ironcart.platform.observability import configure_logging

    configure_logging(level=settings.log_level, json=settings.log_json)
    return asyncio.run(factory(settings))


async def _with_identity(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    from ironcart.bootstrap import bootstrap

    container = bootstrap(settings)
    try:
        return await use(container.identity)
    finally:
        await container.aclose()


@click.group()
def main() -> None:
    """IronCart: an e-commerce backend that stays up, correct, secure and fast."""


@main.command()
@click.option(
    "--service",
    type=click.Choice(SERVICE_CHOICES),
    default="all",
    show_default=True,
    help="Serve every context, or one context as its own service.",
)
@click.option("--host", default=None, help="Bind address [default: IRONCART_HOST or 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: IRONCART_PORT or 8000].")
@click.option("--workers", type=int, default=None, help="Worker processes [default: 1].")
@click.option(
    "--server",
    "http_server",
    type=click.Choice(["uvicorn", "granian"]),
    default="uvicorn",
    show_default=True,
    help="The ASGI server to run the app on.",
)
def serve(
    service: str, host: str | None, port: int | None, workers: int | None, http_server: str
) -> None:
    """Serve the HTTP API (SIGTERM drains in-flight requests)."""
    import uvicorn

    from ironcart.platform.http.server_protocol import UVICORN_HTTP

    settings = _settings(host=host, port=port, workers=workers)
    os.environ["IRONCART_SERVICE"] = service
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers are separate processes: metrics are aggregated through files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ironcart-metrics-")
    from ironcart.platform.observability import configure_logging

    configure_logging(level=settings.log_level, json=settings.log_json)
    if http_server == "granian":
        _serve_granian(settings)
        return
    # uvicorn re-raises SIGTERM after draining; a drained shutdown is a clean exit (status 0).
    signal.signal(signal.SIGTERM, _exit_after_drain)
    uvicorn.run(
        "ironcart.asgi:create",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=UVICORN_HTTP,  # a killed worker sends a whole response or nothing
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=True,
        timeout_graceful_shutdown=settings.server.graceful_shutdown_seconds,
    )


def _serve_granian(settings: Settings) -> None:
    """Granian (Rust HTTP, asyncio workers): an alternative measured by `make bench`."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian(
        "ironcart.asgi:create",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop=Loops.uvloop,
        log_access=False,
        workers_kill_timeout=settings.server.graceful_shutdown_seconds,
    ).serve()


def _exit_after_drain(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic), inventory's own database too."""
    from ironcart.platform.migrations import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo("database is up to date")
    if settings.inventory_database_url:
        # The same Alembic chain: inventory's database gets every table, uses its own.
        upgrade(settings.inventory_database_url)
        click.echo("inventory database is up to date")


@main.command()
@click.option(
    "--products",
    type=click.IntRange(0, 5_000_000),
    default=None,
    help="Top the catalog up to N products [default: 300 outside production].",
)
def seed(products: int | None) -> None:
    """Demo data: one account per role (not in production) and a generated catalog."""
    settings = _settings()
    production = settings.environment.value == "production"
    if production and products is None:
        raise click.ClickException("in production, seed only products, and only with --products")
    from ironcart.seed import seed_demo

    wanted = 300 if products is None else products
    for line in _run(lambda s: seed_demo(s, products=wanted, accounts=not production), settings):
        click.echo(line)


@main.group()
def user() -> None:
    """Manage accounts."""


@user.command("create")
@click.option("--email", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--name", default=None, help="Display name [default: the email's local part].")
@click.option(
    "--role",
    "roles",
    multiple=True,
    default=["customer"],
    show_default=True,
    type=click.Choice(["customer", "staff", "admin"]),
)
def user_create(email: str, password: str, name: str | None, roles: tuple[str, ...]) -> None:
    """Create an account with the given role(s)."""
    from ironcart.platform.errors import IronCartError

    settings = _settings()

    async def create(identity: Any) -> Any:
        return await identity.create_user(
            email=email, password=password, name=name or email.split("@")[0], roles=roles
        )

    try:
        created = _run(lambda s: _with_identity(s, create), settings)
    except IronCartError as error:
        raise click.ClickException(error.detail) from None
    click.echo(
        f"created user {created.id} <{created.email}> roles={','.join(sorted(created.roles))}"
    )


@main.group()
def client() -> None:
    """Manage OAuth2 service clients (client-credentials grant)."""


@client.command("create")
@click.option("--name", required=True)
@click.option("--scope", "scopes", multiple=True, required=True, help="Allowed scope (repeatable).")
def client_create(name: str, scopes: tuple[str, ...]) -> None:
    """Register a service client; prints its id and secret (the secret is shown only once)."""
    from ironcart.identity.domain import parse_scopes
    from ironcart.platform.errors import IronCartError

    try:
        allowed = parse_scopes(" ".join(scopes))
    except IronCartError as error:
        raise click.ClickException(error.detail) from None
    settings = _settings()
    client_id, secret = _run(
        lambda s: _with_identity(s, lambda i: i.create_client(name=name, scopes=allowed)), settings
    )
    click.echo(f"client_id={client_id}")
    click.echo(f"client_secret={secret}")


@main.group()
def keys() -> None:
    """Manage the access-token signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key current; the old one verifies tokens until they expire."""
    settings = _settings()
    kid = _run(lambda s: _with_identity(s, lambda i: i.rotate_signing_key()), settings)
    click.echo(f"new signing key kid={kid}")


async def _with_inventory(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    from ironcart.bootstrap import bootstrap

    container = bootstrap(settings)
    try:
        return await use(container.inventory)
    finally:
        await container.aclose()


@main.group()
def inventory() -> None:
    """Stock tools."""


@inventory.command("reconcile")
def inventory_reconcile() -> None:
    """Check every stock level against the sums of its ledger rows; exit 1 on a difference."""
    settings = _settings()
    found = _run(lambda s: _with_inventory(s, lambda i: i.reconcile()), settings)
    for item in found:
        click.echo(
            f"discrepancy sku={item.sku} warehouse_id={item.warehouse_id} "
            f"on_hand={item.on_hand} ledger_on_hand={item.ledger_on_hand} "
            f"reserved={item.reserved} ledger_reserved={item.ledger_reserved}"
        )
    if found:
        click.echo(f"{len(found)} stock level(s) differ from the ledger", err=True)
        raise SystemExit(1)
    click.echo("every stock level matches the ledger")


@main.command()
def worker() -> None:
    """Run the background worker (periodic jobs of every context)."""
    from ironcart.worker import run_worker

    settings = _settings()
    _run(run_worker, settings)


@main.command("sandbox-psp")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8790, show_default=True, help="Port.")
@click.option(
    "--store",
    type=click.Path(dir_okay=False),
    default="var/sandbox-psp.db",
    show_default=True,
    help="The sandbox's own SQLite file (kept across restarts).",
)
@click.option("--webhook-url", default=None, help="Where to POST events [default: no webhooks].")
@click.option(
    "--webhook-secret",
    envvar="IRONCART_PAYMENTS__WEBHOOK_SECRET",
    default="sandbox-webhook-secret",
    help="HMAC key of the Sandbox-Signature header [env IRONCART_PAYMENTS__WEBHOOK_SECRET].",
)
@click.option(
    "--api-key",
    envvar="IRONCART_PAYMENTS__PSP_API_KEY",
    default="sk_test_ironcart",
    help="The accepted Bearer key [env IRONCART_PAYMENTS__PSP_API_KEY].",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
)
def sandbox_psp(
    host: str,
    port: int,
    store: str,
    webhook_url: str | None,
    webhook_secret: str,
    api_key: str,
    log_level: str,
) -> None:
    """Run the sandbox payment provider (docs/sandbox-psp.md) as its own process."""
    from pathlib import Path

    from ironcart.sandbox.psp import PspConfig, serve

    config = PspConfig(
        store_path=Path(store),
        api_key=api_key,
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
    )
    # As for `serve`: uvicorn re-raises SIGTERM after draining; that is a clean exit.
    signal.signal(signal.SIGTERM, _exit_after_drain)
    serve(config, host=host, port=port, log_level=log_level)


@main.command("sandbox-carrier")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8791, show_default=True, help="Port.")
@click.option(
    "--store",
    type=click.Path(dir_okay=False),
    default="var/sandbox-carrier.db",
    show_default=True,
    help="The sandbox's own SQLite file (kept across restarts).",
)
@click.option("--webhook-url", default=None, help="Where to POST events [default: no webhooks].")
@click.option(
    "--webhook-secret",
    default="sandbox-carrier-webhook-secret",
    show_default=True,
    help="HMAC key of the Sandbox-Signature header (IRONCART_SHIPPING__WEBHOOK_SECRETS).",
)
@click.option(
    "--api-key",
    envvar="IRONCART_SHIPPING__CARRIER_API_KEY",
    default="ck_test_ironcart",
    help="The accepted Bearer key [env IRONCART_SHIPPING__CARRIER_API_KEY].",
)
@click.option(
    "--auto-advance-seconds",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Move every shipment one step on this often [default: only when told].",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
)
def sandbox_carrier(
    host: str,
    port: int,
    store: str,
    webhook_url: str | None,
    webhook_secret: str,
    api_key: str,
    auto_advance_seconds: float | None,
    log_level: str,
) -> None:
    """Run the sandbox carrier (docs/sandbox-carrier.md) as its own process."""
    from pathlib import Path

    from ironcart.sandbox.carrier import CarrierConfig, serve

    config = CarrierConfig(
        store_path=Path(store),
        api_key=api_key,
        webhook_secret=webhook_secret,
        webhook_url=webhook_url,
        base_url=f"http://{host}:{port}",
        auto_advance_seconds=auto_advance_seconds,
    )
    signal.signal(signal.SIGTERM, _exit_after_drain)
    serve(config, host=host, port=port, log_level=log_level)


@main.command()
@click.option("--once", is_flag=True, help="Publish what is pending now, then exit.")
def relay(once: bool) -> None:
    """Run only the outbox relay (to NATS JetStream when IRONCART_BUS_URL is set)."""
    from sqlalchemy.exc import SQLAlchemyError

    from ironcart.platform.relay import PublishFailed
    from ironcart.worker import run_relay

    settings = _settings()
    try:
        published = _run(lambda s: run_relay(s, once=once), settings)
    except (PublishFailed, SQLAlchemyError) as error:
        reason = str(error).splitlines()[0]
        raise click.ClickException(f"{reason} (pending rows stay pending; see the log)") from None
    if once:
        click.echo(f"published {published} event(s)")


main.add_command(deploy)  # `ironcart deploy nginx ...` (ironcart/deployment/commands.py)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
