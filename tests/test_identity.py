import os
import stat

import pytest
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from potluck.errors import ConfigError
from potluck.identity import (
    KEY_FILE,
    P2P_KEY_FILE,
    NodeIdentity,
    load_existing,
    load_or_create,
    peer_id_of,
    verify,
)


def test_first_start_creates_private_key_files(tmp_path):
    identity = load_or_create(tmp_path)
    for name in (KEY_FILE, P2P_KEY_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert load_or_create(tmp_path).node_id == identity.node_id  # stable across restarts
    assert load_existing(tmp_path).peer_id == identity.peer_id


def test_peer_id_is_what_libp2p_derives_from_the_same_key(tmp_path):
    identity = load_or_create(tmp_path)
    libp2p_key = (tmp_path / P2P_KEY_FILE).read_bytes()
    parsed = crypto_pb2.PrivateKey.FromString(libp2p_key)
    assert parsed.key_type == crypto_pb2.KeyType.Ed25519
    assert parsed.data[32:] == identity.public_key
    # the peer id is the identity multihash of the libp2p PublicKey protobuf (what p2pd reports;
    # tests/test_node.py checks a live p2pd agrees)
    multihash = PeerID.from_base58(identity.peer_id).to_bytes()
    assert multihash[:2] == bytes([0x00, 36])
    public = crypto_pb2.PublicKey.FromString(multihash[2:])
    assert public.key_type == crypto_pb2.KeyType.Ed25519 and public.data == identity.public_key
    assert identity.peer_id.startswith("12D3KooW")


def test_signatures_verify_only_for_the_signer_and_message():
    a, b = NodeIdentity.generate(), NodeIdentity.generate()
    signature = a.sign(b"hello")
    assert verify(a.public_key, signature, b"hello")
    assert not verify(b.public_key, signature, b"hello")
    assert not verify(a.public_key, signature, b"hellO")
    assert not verify(a.public_key, signature[:-1], b"hello")
    assert not verify(b"short", signature, b"hello")


def test_key_readable_by_others_is_refused_and_kept(tmp_path):
    load_or_create(tmp_path)
    key = tmp_path / KEY_FILE
    before = key.read_bytes()
    os.chmod(key, 0o644)
    with pytest.raises(ConfigError, match="group/others"):
        load_or_create(tmp_path)
    assert key.read_bytes() == before


@pytest.mark.parametrize(
    "garbage", [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_corrupt_key_is_refused_and_never_overwritten(tmp_path, garbage):
    key = tmp_path / KEY_FILE
    key.write_bytes(garbage)
    os.chmod(key, 0o600)
    with pytest.raises(ConfigError, match="corrupt"):
        load_or_create(tmp_path)
    assert key.read_bytes() == garbage


def test_peer_id_rejects_wrong_key_size():
    with pytest.raises(ValueError):
        peer_id_of(b"\x00" * 31)
