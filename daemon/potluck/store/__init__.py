"""Content-addressed storage of model versions (and, later, history)."""

from potluck.store.versions import (
    CorruptVersion,
    VersionNotFound,
    VersionStore,
    tensor_hash,
    tensor_hashes,
    version_hash,
    version_hash_of,
)

__all__ = [
    "CorruptVersion",
    "VersionNotFound",
    "VersionStore",
    "tensor_hash",
    "tensor_hashes",
    "version_hash",
    "version_hash_of",
]
