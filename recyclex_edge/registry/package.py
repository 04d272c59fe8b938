"""The model package: one file holding a `.tflite`, its card and an Ed25519 signature over both.

Layout (all integers big-endian):

    b"RXMODEL1"                         magic and format version
    u32 card length, card bytes         the model card, UTF-8 JSON
    u64 model length, model bytes       the .tflite file
    b"SIG1" + 32-byte public key + 64-byte signature over everything above,
      or b"NONE" for an unsigned (lab) package

The signer's public key is carried only to tell "signed by a key this bin does not trust" from
"tampered"; trust comes from `model.trusted_keys` alone. Nothing is read from a package before its
lengths are checked against the file's size, and nothing is believed before the signature is.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from recyclex_edge.errors import ModelError, PackageError
from recyclex_edge.model_card import ModelCard, card_path_for, load_card
from recyclex_edge.registry.keys import RAW_KEY_BYTES, SIGNATURE_BYTES, PublicKey, SigningKey

MAGIC = b"RXMODEL1"
SIGNED = b"SIG1"
UNSIGNED = b"NONE"
MAX_CARD_BYTES = 1024 * 1024
SUFFIX = ".rxm"
_CARD_LENGTH = struct.Struct(">I")
_MODEL_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True)
class ModelPackage:
    """A package whose structure, card and signature have been checked."""

    card: ModelCard
    card_bytes: bytes
    model_bytes: bytes
    signer: PublicKey | None  # None: unsigned, accepted only with model.allow_unsigned

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def describe(self) -> str:
        signed = f"signed by {self.signer}" if self.signer else "UNSIGNED"
        return f"{self.card.name} {self.card.version} ({len(self.model_bytes)} bytes, {signed})"


def pack(model_path: Path, key: SigningKey | None) -> bytes:
    """The package of `model_path` and its card (checked first), signed with `key` (None: unsigned)."""
    try:
        load_card(model_path)  # the card parses and its sha256 matches the model
    except ModelError as error:
        raise PackageError(str(error)) from None
    body = _body(card_path_for(model_path).read_bytes(), model_path.read_bytes())
    if key is None:
        return body + UNSIGNED
    return body + SIGNED + key.public.raw + key.sign(body)


def _body(card_bytes: bytes, model_bytes: bytes) -> bytes:
    return b"".join(
        (
            MAGIC,
            _CARD_LENGTH.pack(len(card_bytes)),
            card_bytes,
            _MODEL_LENGTH.pack(len(model_bytes)),
            model_bytes,
        )
    )


def read_package(
    data: bytes, trusted_keys: Sequence[PublicKey], *, allow_unsigned: bool, source: str = "the package"
) -> ModelPackage:
    """Check `data` and return the package; PackageError says exactly why one is refused."""
    if not data.startswith(MAGIC):
        raise PackageError(f"{source} is not a RecycleX model package (made by 'recyclex-edge model pack')")
    offset = len(MAGIC)
    if len(data) < offset + _CARD_LENGTH.size:
        raise PackageError(f"{source} is truncated (it ends inside the header)")
    (card_length,) = _CARD_LENGTH.unpack_from(data, offset)
    offset += _CARD_LENGTH.size
    if card_length > MAX_CARD_BYTES:
        raise PackageError(f"{source} claims a {card_length}-byte card; at most {MAX_CARD_BYTES} are allowed")
    if len(data) < offset + card_length + _MODEL_LENGTH.size:
        raise PackageError(f"{source} is truncated (it ends inside the model card)")
    card_bytes = data[offset : offset + card_length]
    offset += card_length
    (model_length,) = _MODEL_LENGTH.unpack_from(data, offset)
    offset += _MODEL_LENGTH.size
    if len(data) < offset + model_length + len(SIGNED):
        raise PackageError(f"{source} is truncated (it ends inside the model)")
    model_bytes = data[offset : offset + model_length]
    body_end = offset + model_length
    signer = _check_signature(data, body_end, trusted_keys, allow_unsigned=allow_unsigned, source=source)
    card = _parse_card(card_bytes, source)
    actual = hashlib.sha256(model_bytes).hexdigest()
    if actual != card.sha256:
        raise PackageError(f"{source}: the model's sha256 is {actual} but its card says {card.sha256}")
    return ModelPackage(card, card_bytes, model_bytes, signer)


def _check_signature(
    data: bytes, body_end: int, trusted_keys: Sequence[PublicKey], *, allow_unsigned: bool, source: str
) -> PublicKey | None:
    tag = data[body_end : body_end + len(SIGNED)]
    trailer = data[body_end + len(SIGNED) :]
    if tag == UNSIGNED:
        if trailer:
            raise PackageError(f"{source} has {len(trailer)} unexpected byte(s) after its end")
        if not allow_unsigned:
            raise PackageError(
                f"{source} is unsigned; sign it with 'recyclex-edge model pack --key KEY' "
                "(model.allow_unsigned is for labs only)"
            )
        return None
    if tag != SIGNED:
        raise PackageError(f"{source} is damaged: no signature block where one must be")
    if len(trailer) < RAW_KEY_BYTES + SIGNATURE_BYTES:
        raise PackageError(f"{source} is truncated (it ends inside the signature)")
    if len(trailer) > RAW_KEY_BYTES + SIGNATURE_BYTES:
        raise PackageError(f"{source} has unexpected bytes after its signature")
    raw_key, signature = trailer[:RAW_KEY_BYTES], trailer[RAW_KEY_BYTES:]
    trusted = next((key for key in trusted_keys if key.raw == raw_key), None)
    if trusted is None:
        stranger = PublicKey("unknown", raw_key)
        raise PackageError(
            f"{source} is signed by key {stranger.fingerprint}, which this bin does not trust; "
            "add its .pub text to model.trusted_keys if it should"
        )
    if not trusted.verify(signature, data[:body_end]):
        raise PackageError(
            f"{source} does not match its signature (key {trusted}): it was changed after signing"
        )
    return trusted


def _parse_card(card_bytes: bytes, source: str) -> ModelCard:
    try:
        return ModelCard.model_validate(json.loads(card_bytes.decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as error:
        detail = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())
            if isinstance(error, ValidationError)
            else str(error)
        )
        raise PackageError(f"{source}: its model card is invalid: {detail}") from None
