"""Settings: environment, TOML file, validation messages that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from ironcart.platform.settings import SettingsError, load_settings, normalise_database_url


def test_defaults_are_the_embedded_shop(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IRONCART_HOST", "IRONCART_PORT", "IRONCART_DATABASE_URL", "IRONCART_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_backend == "sqlite"
    assert settings.redis_url is None


def test_environment_and_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRONCART_PORT", "9123")
    monkeypatch.setenv("IRONCART_DATABASE_URL", "postgresql://u@db:5432/shop")
    monkeypatch.setenv("IRONCART_IDENTITY__ACCESS_TOKEN_TTL_SECONDS", "300")
    settings = load_settings()
    assert settings.port == 9123
    assert settings.async_database_url == "postgresql+asyncpg://u@db:5432/shop"
    assert settings.identity.access_token_ttl_seconds == 300


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ironcart.toml"
    config.write_text('port = 8100\nhost = "0.0.0.0"\n[identity]\nissuer = "shop"\n')
    monkeypatch.setenv("IRONCART_CONFIG_FILE", str(config))
    monkeypatch.setenv("IRONCART_PORT", "8200")
    settings = load_settings()
    assert (settings.host, settings.port, settings.identity.issuer) == ("0.0.0.0", 8200, "shop")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IRONCART_PORT", "not-a-port"),
        ("IRONCART_PORT", "70000"),
        ("IRONCART_DATABASE_URL", "oracle://db/shop"),
        ("IRONCART_REDIS_URL", "http://cache"),
        ("IRONCART_IDENTITY__ARGON2_MEMORY_KIB", "1024"),
    ],
    ids=["port-type", "port-range", "database-scheme", "redis-scheme", "weak-argon2"],
)
def test_invalid_settings_name_the_setting(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_placeholder_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRONCART_ENVIRONMENT", "production")
    monkeypatch.delenv("IRONCART_SECRET_KEY", raising=False)
    with pytest.raises(SettingsError, match="IRONCART_SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("IRONCART_SECRET_KEY", "a-real-production-secret-of-some-length")
    monkeypatch.setenv("IRONCART_SHIPPING__CARRIER_API_KEY", "ck_live_a-real-carrier-key")
    monkeypatch.setenv("IRONCART_SHIPPING__WEBHOOK_SECRETS", '{"sandbox": "a-real-whsec-value"}')
    assert load_settings().environment == "production"


@pytest.mark.parametrize(
    ("shipping", "refused"),
    [
        pytest.param({}, "IRONCART_SHIPPING__CARRIER_API_KEY and", id="defaults"),
        pytest.param(
            {"webhook_secrets": {"sandbox": "a-real-whsec-value"}},
            "IRONCART_SHIPPING__CARRIER_API_KEY must",
            id="test-api-key",
        ),
        pytest.param(
            {
                "carrier_api_key": "ck_live_a-real-carrier-key",
                "webhook_secrets": {"other": "a-real-whsec-value",
                                    "sandbox": "sandbox-carrier-webhook-secret"},
            },
            "IRONCART_SHIPPING__WEBHOOK_SECRETS must",
            id="test-webhook-secret",
        ),
    ],
)  # fmt: skip
def test_sandbox_carrier_credentials_are_refused_in_production(
    shipping: dict[str, object], refused: str
) -> None:
    production = {"environment": "production", "secret_key": "a-real-production-secret-value"}
    with pytest.raises(SettingsError, match=refused):
        load_settings(**production, shipping=shipping)
    assert load_settings(environment="test", shipping=shipping).shipping.placeholders()


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRONCART_CONFIG_FILE", "/nonexistent/ironcart.toml")
    with pytest.raises(SettingsError, match="IRONCART_CONFIG_FILE"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///var/shop.db", "sqlite+aiosqlite:///var/shop.db"),
        ("postgres://h/db", "postgresql+asyncpg://h/db"),
        ("mariadb://root@h/db", "mysql+asyncmy://root@h/db"),
        ("mysql://root@h/db", "mysql+asyncmy://root@h/db"),
    ],
)
def test_database_urls_map_to_async_drivers(url: str, driver: str) -> None:
    assert normalise_database_url(url) == driver
