"""Ed25519 signing keys for model packages, through `cryptography` (no hand-written crypto).

A public key travels as one line of text, the way `recyclex-edge model keygen` writes the `.pub` file
and the way `model.trusted_keys` lists it:

    recyclex-ed25519 <base64 of the 32-byte raw key> <name>

The private key is a PKCS#8 PEM file readable by its owner only (mode 0600).

`cryptography` (about 8 MiB resident) is imported only when a signature is checked or a key made or
read: a bin that trusts no key and installs nothing never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recyclex_edge.errors import RegistryError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_TYPE = "recyclex-ed25519"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class PublicKey:
    """A named Ed25519 public key; `fingerprint` (sha256 of the raw key, 16 hex) identifies it in logs."""

    name: str
    raw: bytes

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def text(self) -> str:
        return f"{KEY_TYPE} {base64.b64encode(self.raw).decode()} {self.name}"

    def verify(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


def check_key_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter/digit"
        )
    return name


def parse_public_key(text: str) -> PublicKey:
    """Parse the one-line text of a `.pub` file; the message says what is wrong and what was expected."""
    parts = text.strip().split()
    if len(parts) != 3 or parts[0] != KEY_TYPE:
        got = f"{len(parts)} field(s) starting with {parts[0][:20]!r}" if parts else "nothing"
        raise RegistryError(
            f"expected '{KEY_TYPE} <base64 key> <name>' as 'recyclex-edge model keygen' wrote it (got {got})"
        )
    try:
        raw = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise RegistryError("the key is not valid base64") from None
    if len(raw) != RAW_KEY_BYTES:
        raise RegistryError(f"an Ed25519 public key is {RAW_KEY_BYTES} bytes (got {len(raw)})")
    return PublicKey(check_key_name(parts[2]), raw)


@dataclass(frozen=True)
class SigningKey:
    """A private key with the name its public half carries."""

    name: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(self.name, raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def generate_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write `folder/<name>.key` (0600, created exclusively: never overwrites) and `folder/<name>.pub`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    check_key_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise RegistryError(
                f"{path} already exists; choose another --name or folder (keys are never replaced)"
            )
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    pub_path.write_text(SigningKey(name, private).public.text() + "\n", encoding="utf-8")
    return key_path, pub_path


def load_signing_key(path: Path) -> SigningKey:
    """Read a `.key` file written by `generate_keypair`; its name is the file's stem."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as error:
        raise RegistryError(f"cannot read the signing key {path}: {error.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise RegistryError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise RegistryError(f"{path} is not an Ed25519 key; make one with 'recyclex-edge model keygen'")
    return SigningKey(check_key_name(path.stem), private)
