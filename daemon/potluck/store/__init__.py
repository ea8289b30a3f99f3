"""Storage on disk: content-addressed versions, held updates, the SQLite history."""

from potluck.hashing import tensor_hash, tensor_hashes, version_hash, version_hash_of
from potluck.store.versions import CorruptVersion, VersionNotFound, VersionStore

__all__ = [
    "CorruptVersion",
    "VersionNotFound",
    "VersionStore",
    "tensor_hash",
    "tensor_hashes",
    "version_hash",
    "version_hash_of",
]
