"""ASGI entry point for uvicorn/granian workers: settings come from the environment."""

from __future__ import annotations

import os

from fastapi import FastAPI

from ironcart.app import create_app
from ironcart.platform.observability import configure_logging
from ironcart.platform.settings import load_settings


def create() -> FastAPI:
    settings = load_settings()
    configure_logging(level=settings.log_level, json=settings.log_json)
    return create_app(settings, service=os.environ.get("IRONCART_SERVICE", "all"))
