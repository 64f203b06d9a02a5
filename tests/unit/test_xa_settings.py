"""XA checkout settings: refused on SQLite, crash points refused in production."""

from __future__ import annotations

import pytest

from ironcart.platform.settings import SettingsError, load_settings

POSTGRES = "postgresql://ironcart@127.0.0.1/orders"
MARIADB = "mariadb://root@127.0.0.1/inventory"


def test_tcc_is_the_default_and_inventory_shares_the_main_database() -> None:
    settings = load_settings(database_url=POSTGRES)

    assert (settings.checkout_txn, settings.inventory_database_url) == ("tcc", None)
    assert (settings.xa.in_doubt_seconds, settings.xa.gid_prefix) == (60.0, "ironcart")


def test_xa_across_postgresql_and_mariadb_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IRONCART_CHECKOUT_TXN", "xa")
    monkeypatch.setenv("IRONCART_DATABASE_URL", POSTGRES)
    monkeypatch.setenv("IRONCART_INVENTORY_DATABASE_URL", MARIADB)
    monkeypatch.setenv("IRONCART_XA__IN_DOUBT_SECONDS", "5")

    settings = load_settings()

    assert (settings.checkout_txn, settings.inventory_database_url) == ("xa", MARIADB)
    assert settings.xa.in_doubt_seconds == 5.0


@pytest.mark.parametrize(
    ("database_url", "inventory_database_url", "named"),
    [
        ("sqlite:///var/ironcart.db", None, "IRONCART_DATABASE_URL is SQLite"),
        (POSTGRES, "sqlite:///var/inventory.db", "IRONCART_INVENTORY_DATABASE_URL is SQLite"),
    ],
    ids=["main-database", "inventory-database"],
)
def test_xa_is_refused_on_sqlite(
    database_url: str, inventory_database_url: str | None, named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(
            checkout_txn="xa",
            database_url=database_url,
            inventory_database_url=inventory_database_url,
        )


def test_tcc_on_sqlite_is_fine_and_xa_settings_are_checked() -> None:
    assert load_settings(database_url="sqlite:///var/x.db").checkout_txn == "tcc"
    with pytest.raises(SettingsError, match="IRONCART_CHECKOUT_TXN"):
        load_settings(checkout_txn="2pc")
    with pytest.raises(SettingsError, match="IRONCART_XA__CRASH_POINTS"):
        load_settings(xa={"crash_points": ["after_lunch"]})
    with pytest.raises(SettingsError, match="IRONCART_INVENTORY_DATABASE_URL"):
        load_settings(inventory_database_url="oracle://x")


def test_xa_crash_points_are_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="IRONCART_XA__CRASH_POINTS is for chaos tests"):
        load_settings(
            environment="production",
            secret_key="a-real-production-secret-value",
            database_url=POSTGRES,
            xa={"crash_points": ["after_decision"]},
        )
