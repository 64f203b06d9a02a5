"""Authenticated encryption of small secrets at rest: AES-256-GCM, one derived key per use."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12


class SecretBox:
    """Encrypts with a key derived for one purpose, so one secret never serves two uses."""

    def __init__(self, secret: str, *, purpose: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"ironcart:{purpose}".encode()
        ).derive(secret.encode())
        self._aead = AESGCM(key)
        self._purpose = purpose.encode()

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, self._purpose)

    def open(self, sealed: bytes) -> bytes:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, self._purpose)
