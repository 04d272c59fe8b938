"""The one-file model package: signed by a trusted key or refused, with a reason, for every defect."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from recyclex_edge.errors import RegistryError
from recyclex_edge.model_card import SHIPPED_MODEL
from recyclex_edge.registry.keys import parse_public_key
from recyclex_edge.registry.package import pack, read_package
from tests.registry.support import keypair, model_version


@pytest.fixture
def signed(tmp_path: Path) -> tuple[bytes, str]:
    key, pub = keypair(tmp_path / "keys")
    return pack(model_version(tmp_path, "7.2.0"), key), pub


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    keypair(tmp_path, "fleet")
    assert stat.S_IMODE((tmp_path / "fleet.key").stat().st_mode) == 0o600
    assert parse_public_key((tmp_path / "fleet.pub").read_text()).name == "fleet"
    with pytest.raises(RegistryError, match="already exists"):
        keypair(tmp_path, "fleet")


def test_a_signed_package_round_trips(signed: tuple[bytes, str]) -> None:
    data, pub = signed
    package = read_package(data, [parse_public_key(pub)], allow_unsigned=False)
    assert package.card.version == "7.2.0"
    assert package.model_bytes == SHIPPED_MODEL.read_bytes()
    assert package.signer is not None and package.signer.name == "fleet"


def test_an_untrusted_signer_is_named_by_fingerprint(tmp_path: Path, signed: tuple[bytes, str]) -> None:
    data, _ = signed
    _, other = keypair(tmp_path / "other", "other")
    with pytest.raises(RegistryError, match="does not trust"):
        read_package(data, [parse_public_key(other)], allow_unsigned=False)


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (20, "changed after signing"),  # the card
        (3000, "changed after signing"),  # the model
        (2_000_000, "changed after signing"),
        (-10, "changed after signing"),  # the signature itself
        (-70, "does not trust"),  # the signer's key: then it is someone else's signature
    ],
)
def test_one_flipped_byte_anywhere_is_refused(signed: tuple[bytes, str], where: int, reason: str) -> None:
    data, pub = signed
    tampered = bytearray(data)
    tampered[where] ^= 0x01
    with pytest.raises(RegistryError, match=reason):
        read_package(bytes(tampered), [parse_public_key(pub)], allow_unsigned=False)


@pytest.mark.parametrize("length", [0, 5, 12, 400, 1_000_000, -1])
def test_truncated_packages_are_refused(signed: tuple[bytes, str], length: int) -> None:
    data, pub = signed
    with pytest.raises(RegistryError, match=r"truncated|not a RecycleX|signature"):
        read_package(data[:length], [parse_public_key(pub)], allow_unsigned=False)


def test_unsigned_packages_need_allow_unsigned(tmp_path: Path) -> None:
    data = pack(model_version(tmp_path, "7.2.0"), None)
    with pytest.raises(RegistryError, match="unsigned"):
        read_package(data, [], allow_unsigned=False)
    assert read_package(data, [], allow_unsigned=True).signer is None


def test_a_card_that_does_not_match_the_model_is_refused_at_pack(tmp_path: Path) -> None:
    model = model_version(tmp_path, "7.2.0")
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(RegistryError, match="does not match its card"):
        pack(model, None)
