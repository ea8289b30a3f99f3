"""A node's Ed25519 identity: one key that is the node id, the signing key and the libp2p peer id.

The key lives in ``<data-dir>/node.key`` (PKCS#8 PEM, mode 0600). The libp2p identity file that
p2pd reads (``p2p.key``) is derived from it on every start, so the peer id always names the key
that signs records, updates and commits.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from potluck.errors import ConfigError

KEY_FILE = "node.key"
P2P_KEY_FILE = "p2p.key"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

# libp2p crypto.proto: KeyType Ed25519 = 1. Field 1 (varint) = type, field 2 (bytes) = key data.
_LIBP2P_ED25519 = b"\x08\x01"


def node_id_of(public_key: bytes) -> str:
    """The node id: the raw Ed25519 public key in lowercase hex."""
    return public_key.hex()


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id of an Ed25519 key: base58 of the identity multihash of its PublicKey protobuf."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    public_proto = _LIBP2P_ED25519 + b"\x12\x20" + public_key
    # multihash: code 0x00 (identity), then the length as a varint (36 < 128: one byte)
    return base58.b58encode(b"\x00" + bytes([len(public_proto)]) + public_proto).decode()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class NodeIdentity:
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    @property
    def peer_id(self) -> str:
        return peer_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def libp2p_private_key(self) -> bytes:
        """The key as a libp2p ``PrivateKey`` protobuf (Ed25519: 32-byte seed + 32-byte public key)."""
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return _LIBP2P_ED25519 + b"\x12\x40" + seed + self.public_key

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def from_pem(cls, data: bytes) -> NodeIdentity:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"not an Ed25519 key ({type(key).__name__})")
        return cls(key)


def load_or_create(data_dir: Path) -> NodeIdentity:
    """Load the node key from ``data_dir``, creating it (mode 0600) on first start.

    A key that is corrupt or readable by group/others is refused, never overwritten.
    """
    path = data_dir / KEY_FILE
    try:
        identity = _load(path)
    except FileNotFoundError:
        identity = NodeIdentity.generate()
        try:
            _write_new(path, identity.to_pem())
        except FileExistsError:  # another process created it meanwhile: use theirs
            identity = _load(path)
        except OSError as e:
            raise ConfigError(f"cannot create node key {path}: {e.strerror}") from e
    _sync_libp2p_key(data_dir / P2P_KEY_FILE, identity)
    return identity


def load_existing(data_dir: Path) -> NodeIdentity:
    """Load the node key without ever creating one (for read-only commands)."""
    path = data_dir / KEY_FILE
    try:
        return _load(path)
    except FileNotFoundError:
        raise ConfigError(
            f"no node key at {path}: run `potluck run` or `potluck id` once to create it"
        ) from None


def _load(path: Path) -> NodeIdentity:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # FileNotFoundError goes to the caller
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"node key {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                f"refusing to start: run `chmod 600 {path}`"
            )
        data = os.read(fd, 64 * 1024)
    except PermissionError as e:
        raise ConfigError(f"cannot read node key {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    try:
        return NodeIdentity.from_pem(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"node key {path} is corrupt ({e}); refusing to start: restore it, or move it away for a new one"
        ) from e


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_libp2p_key(path: Path, identity: NodeIdentity) -> None:
    """Write the p2pd identity file derived from the node key, unless it already holds exactly that."""
    data = identity.libp2p_private_key()
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ConfigError(f"cannot read libp2p identity {path}: {e.strerror}") from e
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data)
    os.replace(tmp, path)
