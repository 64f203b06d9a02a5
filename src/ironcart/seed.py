"""Demo data for the embedded mode: one account per role, created only if missing."""

from __future__ import annotations

from ironcart.bootstrap import bootstrap
from ironcart.identity.domain import EmailAlreadyRegistered
from ironcart.platform.settings import Settings

DEMO_PASSWORD = "ironcart-demo-password"  # noqa: S105 - development seed data, refused in production
DEMO_ACCOUNTS = (
    ("admin@ironcart.example", "Ada Admin", ("admin",)),
    ("staff@ironcart.example", "Sam Staff", ("staff",)),
    ("customer@ironcart.example", "Casey Customer", ("customer",)),
)


async def seed_demo(settings: Settings) -> list[str]:
    container = bootstrap(settings)
    lines = []
    try:
        await container.identity.ensure_signing_key()
        for email, name, roles in DEMO_ACCOUNTS:
            try:
                await container.identity.create_user(
                    email=email, password=DEMO_PASSWORD, name=name, roles=roles
                )
                lines.append(f"created demo account {email} ({', '.join(roles)})")
            except EmailAlreadyRegistered:
                lines.append(f"demo account {email} already exists")
    finally:
        await container.aclose()
    lines.append(f"demo password for all three: {DEMO_PASSWORD}")
    return lines
