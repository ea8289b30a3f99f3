"""potluck.modules.announce: module announcements, name claims and the swarm's name-ownership rule."""

import msgpack
import pytest

from potluck.identity import NodeIdentity
from potluck.modules.announce import (
    ANNOUNCEMENT,
    MAX_ANNOUNCEMENT_BYTES,
    MAX_CLOCK_SKEW_S,
    MAX_HOLDERS,
    BadModuleAnnouncement,
    ModuleAnnouncement,
    NameClaim,
    check_owner,
    modules_key,
    owner,
)
from potluck.modules.record import MAX_BYTES, ModuleRefused
from tests.modules.test_record import make as make_module

RUN = "run"


def claim(author: NodeIdentity, at: float = 1000.0, name: str = "bard", run: str = RUN) -> bytes:
    return NameClaim(run, name, author.public_key, at).sign(author)


def make(announcer: NodeIdentity, author: NodeIdentity, **overrides) -> ModuleAnnouncement:
    fields = dict(
        module_id="cd" * 32, name="bard", author=author.public_key, version=2, size=19_000,
        holders=(announcer.peer_id, "12D3KooWother"), announcer=announcer.public_key, timestamp=1.5e9,
        claim=claim(author),
    )  # fmt: skip
    return ModuleAnnouncement(**{**fields, **overrides})


def test_round_trip_carries_the_authors_claim():
    holder, author = NodeIdentity.generate(), NodeIdentity.generate()
    a = make(holder, author)
    assert ModuleAnnouncement.verify(a.sign(holder), RUN) == a
    assert NameClaim.verify(a.claim) == NameClaim(RUN, "bard", author.public_key, 1000.0)
    bare = make(holder, author, claim=b"")  # a holder that knows no claim still announces
    assert ModuleAnnouncement.verify(bare.sign(holder), RUN) == bare
    assert modules_key("abc") == "potluck/abc/modules"


def test_only_the_announcer_signs_and_only_the_author_claims():
    holder, author = NodeIdentity.generate(), NodeIdentity.generate()
    with pytest.raises(ValueError):
        make(holder, author).sign(author)
    with pytest.raises(ValueError):
        NameClaim(RUN, "bard", author.public_key, 1.0).sign(holder)


def _resigned(signer: NodeIdentity, data: bytes, index: int, value) -> bytes:
    fields, _, _ = ANNOUNCEMENT.open(data)
    fields[index] = value
    return ANNOUNCEMENT.sign(signer, signer.public_key, ANNOUNCEMENT.body(*fields))


@pytest.mark.parametrize(
    "index, value, match",
    [
        (0, b"short", "wrong field types"),  # module id not 32 bytes
        (3, 0, "wrong field types"),  # version
        (4, MAX_BYTES + 1, "wrong field types"),  # a size over the record limit
        (5, [], "wrong field types"),  # no holders
        (5, ["12D3KooWsomeoneelse"], "first holder"),
        (8, "not bytes", "wrong field types"),
    ],
)
def test_malformed_announcements_are_refused(index, value, match):
    holder, author = NodeIdentity.generate(), NodeIdentity.generate()
    with pytest.raises(BadModuleAnnouncement, match=match):
        ModuleAnnouncement.verify(_resigned(holder, make(holder, author).sign(holder), index, value), RUN)


def test_forged_announcements_and_claims_are_refused():
    holder, author, mallory = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    signed = make(holder, author).sign(holder)
    body, signature = msgpack.unpackb(signed)
    with pytest.raises(BadModuleAnnouncement, match="signature"):
        ModuleAnnouncement.verify(msgpack.packb([body.replace(b"bard", b"bare"), signature]), RUN)
    # a claim for another name, run or author than the announced module's
    for bad in (claim(author, name="other"), claim(author, run="elsewhere"), claim(mallory)):
        with pytest.raises(BadModuleAnnouncement, match="claim"):
            ModuleAnnouncement.verify(make(holder, author, claim=bad).sign(holder), RUN)
    # a claim whose signature does not verify (mallory re-signs the author's claim body)
    cbody, _ = msgpack.unpackb(claim(author))
    forged = msgpack.packb([cbody, mallory.sign(cbody)])
    with pytest.raises(BadModuleAnnouncement, match="signature"):
        NameClaim.verify(forged)
    with pytest.raises(BadModuleAnnouncement, match="signature"):
        ModuleAnnouncement.verify(make(holder, author, claim=forged).sign(holder), RUN)


def test_size_bounds():
    holder, author = NodeIdentity.generate(), NodeIdentity.generate()
    holders = (holder.peer_id,) * MAX_HOLDERS
    full = make(
        holder, author, name="n" * 64, holders=holders, claim=claim(author, name="n" * 64, run="r" * 128)
    )
    signed = full.sign(holder)
    assert len(signed) < MAX_ANNOUNCEMENT_BYTES < 16 << 10  # the largest valid one fits, below the DHT hazard
    ModuleAnnouncement.verify(_resigned(holder, signed, 2, author.public_key), "r" * 128)
    with pytest.raises(BadModuleAnnouncement):  # one holder too many
        ModuleAnnouncement.verify(_resigned(holder, signed, 5, [holder.peer_id] * (MAX_HOLDERS + 1)), RUN)
    with pytest.raises(BadModuleAnnouncement):  # a string past the bound
        ModuleAnnouncement.verify(_resigned(holder, signed, 1, "x" * 200), RUN)
    with pytest.raises(BadModuleAnnouncement):  # more bytes than an announcement may have
        ModuleAnnouncement.verify(signed + b"\0" * MAX_ANNOUNCEMENT_BYTES, RUN)


def test_a_name_belongs_to_its_earliest_claim():
    a, b, c = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    claims = [NameClaim.verify(claim(x, at)) for x, at in ((a, 20.0), (b, 10.0), (c, 30.0))]
    assert owner(claims, now=100.0).author == b.public_key
    assert owner(claims[::-1], now=100.0).author == b.public_key  # order of arrival does not matter
    assert owner([], now=0.0) is None
    # a claim dated past the reader's clock (plus skew) does not count yet
    future = NameClaim.verify(claim(a, 100.0 + MAX_CLOCK_SKEW_S + 1))
    assert owner([future], now=100.0) is None and owner([future], now=102.0) is future
    # ties go to the smaller author key
    tied = [NameClaim.verify(claim(x, 5.0)) for x in (a, b)]
    assert owner(tied, now=10.0).author == min(a.public_key, b.public_key)

    module_by_a = make_module(a, name="bard")
    check_owner(module_by_a, [], now=100.0)  # nobody claimed it: fine
    check_owner(module_by_a, claims[:1], now=100.0)
    with pytest.raises(ModuleRefused) as info:
        check_owner(module_by_a, claims, now=100.0)
    assert info.value.reason == "name_taken" and "already taken by another author" in str(info.value)
