"""The lm task's corpus: public-domain English text in three domains, shipped in ``corpus/``.

``plays`` (14 Shakespeare plays), ``scripture`` (16 books of the King James Bible) and ``poetry``
(Milton: Paradise Lost, Paradise Regained, the L'Allegro/Lycidas volume), ~4.4 MB of text stored as
``corpus/DOMAIN.txt.xz`` (1.3 MB), read with the stdlib; where each came from: ``corpus/SOURCES.md``.
Nothing is downloaded at run time. A document is one play, one book, one poem (or book of a poem);
the last :data:`HELD_OUT` documents of each domain are its held-out split, never in any shard.

Shard specs for the lm task (over the training documents only):

``None``
    Every training document of every domain.
``"DOMAIN"``
    Every training document of that domain.
``"I/N"``
    Non-IID by domain, then by document: shard I belongs to domain ``DOMAINS[I % 3]``; the shards
    of one domain split its training documents round robin, so shards are disjoint and together
    complete. Needs at most as many shards per domain as it has training documents.
``"DOMAIN:I/N"``
    The I-th of N round-robin splits of that domain's training documents.
"""

from __future__ import annotations

import functools
import lzma
import re
from collections.abc import Sequence
from importlib import resources

import numpy as np

from potluck.tasks import TaskError
from potluck.tasks.data import parse_shard

__all__ = [
    "DOMAINS", "HELD_OUT", "documents", "held_out_text", "joined", "shard_documents", "training_documents",
]  # fmt: skip

DOMAINS = ("plays", "scripture", "poetry")
HELD_OUT = 2  # documents per domain, the last ones in its file
_SEP = b"\x1e"  # ASCII record separator between documents
_NAMED = re.compile(r"([a-z]+)(?::(.+))?")


@functools.cache
def documents(domain: str) -> tuple[np.ndarray, ...]:
    """Every document of ``domain``, in file order, as uint8 byte arrays (read-only)."""
    if domain not in DOMAINS:
        raise TaskError(f"lm: unknown domain {domain!r}: use one of {list(DOMAINS)}")
    packed = resources.files("potluck.tasks").joinpath("corpus", f"{domain}.txt.xz").read_bytes()
    return tuple(np.frombuffer(d, dtype=np.uint8) for d in lzma.decompress(packed).split(_SEP))


def training_documents(domain: str) -> tuple[np.ndarray, ...]:
    return documents(domain)[:-HELD_OUT]


def held_out_text(domain: str) -> np.ndarray:
    """The held-out documents of ``domain`` joined by a newline: the same bytes on every machine."""
    return joined(documents(domain)[-HELD_OUT:])


def joined(docs: Sequence[np.ndarray]) -> np.ndarray:
    """``docs`` as one uint8 text, each followed by a newline."""
    newline = np.array([10], np.uint8)
    return np.concatenate([part for doc in docs for part in (doc, newline)])


def _round_robin(domain: str, index: int, count: int, spec: str) -> list[tuple[str, np.ndarray]]:
    docs = training_documents(domain)
    if count > len(docs):
        raise TaskError(
            f"lm: shard {spec!r} splits {domain} into {count} shards; it has {len(docs)} training documents"
        )
    return [(domain, doc) for j, doc in enumerate(docs) if j % count == index]


def shard_documents(spec: str | None) -> list[tuple[str, np.ndarray]]:
    """(domain, document) pairs of shard ``spec`` (see the module doc); TaskError for a bad spec."""
    if spec is None:
        return [(d, doc) for d in DOMAINS for doc in training_documents(d)]
    if not isinstance(spec, str):
        raise TaskError(f"a shard spec is a string or None, got {type(spec).__name__}")
    named = _NAMED.fullmatch(spec)
    if named and named[1] in DOMAINS:
        if named[2] is None:
            return [(named[1], doc) for doc in training_documents(named[1])]
        parsed = parse_shard(named[2])
        assert parsed is not None
        if parsed.alpha is not None:
            raise TaskError(f"lm: shard {spec!r}: use DOMAIN:I/N, not a Dirichlet split")
        return _round_robin(named[1], parsed.index, parsed.count, spec)
    if spec.startswith("dirichlet:"):
        raise TaskError("lm: shards go by domain and document ('I/N', 'DOMAIN', 'DOMAIN:I/N'), not Dirichlet")
    if named:
        raise TaskError(f"lm: unknown domain {named[1]!r} in shard {spec!r}: use one of {list(DOMAINS)}")
    parsed = parse_shard(spec)
    assert parsed is not None and parsed.alpha is None
    domain = DOMAINS[parsed.index % len(DOMAINS)]
    siblings = [i for i in range(parsed.count) if i % len(DOMAINS) == parsed.index % len(DOMAINS)]
    return _round_robin(domain, siblings.index(parsed.index), len(siblings), spec)
