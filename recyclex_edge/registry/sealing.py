"""At-rest encryption of installed models: AES-256-GCM through `cryptography`.

The key is 32 bytes from a systemd credential (`LoadCredential=`, so it lives outside the SD card's
filesystem when the credential is encrypted with the TPM or a host key), given as 64 hex digits or
44 base64 characters. A sealed file is `b"RXSEAL1" + 12-byte nonce + ciphertext and tag`; the card's
sha256 is bound in as associated data, so a sealed file cannot be swapped under another card. The
plaintext exists only in memory: the interpreter is built from the bytes.

`cryptography` is imported when a Sealer is made, i.e. only on a bin with an encryption key.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

from recyclex_edge.errors import RegistryError

MAGIC = b"RXSEAL1"
NONCE_BYTES = 12
KEY_BYTES = 32


def parse_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 2 * KEY_BYTES else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise RegistryError(
            f"the model encryption key must be {KEY_BYTES} bytes as 64 hex digits or base64 "
            "(e.g. from 'openssl rand -hex 32')"
        )
    return key


class Sealer:
    """Encrypts and decrypts model files with one key."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    @classmethod
    def from_credential(cls, name: str, environ: Mapping[str, str]) -> Sealer:
        folder = environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise RegistryError(
                f"model.encryption_key_credential is {name!r} but $CREDENTIALS_DIRECTORY is not set; "
                f"run under systemd with LoadCredential={name}:/path/to/key (or SetCredentialEncrypted=)"
            )
        try:
            text = (Path(folder) / name).read_text(encoding="utf-8")
        except OSError as error:
            raise RegistryError(
                f"cannot read the model encryption key credential {name!r}: {error.strerror}"
            ) from None
        return cls(parse_key(text))

    def seal(self, plaintext: bytes, *, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, *, associated: bytes) -> bytes:
        if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + NONCE_BYTES + 16:
            raise RegistryError("the sealed model file is damaged (no RXSEAL1 header)")
        from cryptography.exceptions import InvalidTag

        nonce = sealed[len(MAGIC) : len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[len(MAGIC) + NONCE_BYTES :], associated)
        except InvalidTag:
            raise RegistryError(
                "the sealed model file cannot be decrypted: wrong key, or the file was changed"
            ) from None
