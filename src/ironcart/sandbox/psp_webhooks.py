"""Webhook delivery for the PSP: the shared dispatcher (`sandbox.common.WebhookDispatcher`):
the outbox in the store, sent by a background task, signed, retried; held-back events (the
reorder fault) wait for `flush()`, which sends them newest first."""

from __future__ import annotations

from ironcart.sandbox.common import WebhookDispatcher, signature

__all__ = ["WebhookDispatcher", "signature"]
