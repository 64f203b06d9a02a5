"""The `ironcart` command's operator tools, checked through a real server over HTTP (SQLite)."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.app import DEMO_PASSWORD
from tests.support.server import output_of, run_cli, running_server, server_environment

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _line_value(output: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}=(\S+)$", output, flags=re.MULTILINE)
    assert match, f"no {name}= line in:\n{output}"
    return match.group(1)


async def test_users_clients_and_key_rotation_made_by_the_cli(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with running_server(sqlite_url, tmp_path) as server:
        env = server.env
        email = f"staff-{uuid.uuid4().hex[:8]}@example.com"
        created = await run_cli(
            *("user", "create", "--email", email, "--password", DEMO_PASSWORD, "--role", "staff"),
            env=env,
        )
        assert created.returncode == 0, output_of(created)
        assert f"<{email}> roles=staff" in output_of(created)

        registered = await run_cli(
            *("client", "create", "--name", "svc", "--scope", "inventory:reserve"), env=env
        )
        assert registered.returncode == 0, output_of(registered)
        client_id = _line_value(registered.stdout.decode(), "client_id")
        client_secret = _line_value(registered.stdout.decode(), "client_secret")

        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
            staff = await http.post(
                "/api/v1/auth/token",
                data={"grant_type": "password", "username": email, "password": DEMO_PASSWORD},
            )
            assert staff.status_code == 200, staff.text
            staff_token = staff.json()["access_token"]
            assert "staff" in staff.json()["scope"].split()
            me = await http.get("/api/v1/me", headers=_bearer(staff_token))
            assert me.status_code == 200
            assert me.json()["roles"] == ["staff"]

            service = await http.post(
                "/api/v1/auth/token",
                data={"grant_type": "client_credentials"},
                auth=httpx.BasicAuth(client_id, client_secret),
            )
            assert service.status_code == 200, service.text
            assert service.json()["scope"] == "inventory:reserve"
            assert "refresh_token" not in service.json()
            wrong = await http.post(
                "/api/v1/auth/token",
                data={"grant_type": "client_credentials"},
                auth=httpx.BasicAuth(client_id, client_secret + "x"),
            )
            assert wrong.status_code == 401
            assert wrong.json()["error"] == "invalid_client"

            old_kid = jwt.get_unverified_header(staff_token)["kid"]
            rotated = await run_cli("keys", "rotate", env=env)
            assert rotated.returncode == 0, output_of(rotated)
            new_kid = _line_value(rotated.stdout.decode(), "new signing key kid")
            assert new_kid != old_kid

            # The server keeps the published keys for up to 5 s (JWKS_CACHE_SECONDS).
            for _ in range(70):
                jwks = (await http.get("/.well-known/jwks.json")).json()["keys"]
                if len(jwks) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len(jwks) == 2
            assert {key["kid"] for key in jwks} == {old_kid, new_kid}
            assert all("d" not in key for key in jwks)
            # A token signed before the rotation still verifies with the retired key.
            still = await http.get("/api/v1/me", headers=_bearer(staff_token))
            assert still.status_code == 200, still.text


async def test_help_and_invalid_settings(tmp_path: Path) -> None:
    env = server_environment(f"sqlite:///{tmp_path / 'unused.db'}")
    for args in (["--help"], ["serve", "--help"]):
        shown = await run_cli(*args, env=env)
        assert shown.returncode == 0, output_of(shown)
        assert "Usage:" in output_of(shown)

    refused = await run_cli("migrate", env={**env, "IRONCART_PORT": "notaport"})
    assert refused.returncode != 0
    assert "IRONCART_PORT" in output_of(refused)
    assert not (tmp_path / "unused.db").exists()
