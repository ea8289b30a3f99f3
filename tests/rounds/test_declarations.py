"""Declarations (pure): signed by their author only, bounded, and the rule a "ready" round closes by."""

import msgpack
import pytest

from potluck.identity import NodeIdentity
from potluck.rounds.declarations import (
    DOMAIN,
    BadDeclaration,
    Declaration,
    close_reason,
    declarations_key,
    waiting_for,
)
from potluck.wire import pack_pair

RUN, BASE = "ab" * 32, "cd" * 32
A, B, C = (NodeIdentity.generate() for _ in range(3))


def declaration(author: NodeIdentity = A, **overrides) -> Declaration:
    fields = {
        "run": RUN,
        "round": 3,
        "base": BASE,
        "author": author.public_key,
        "timestamp": 12.5,
    } | overrides
    return Declaration(**fields)


def test_a_declaration_round_trips_and_is_small():
    signed = declaration().sign(A)
    assert Declaration.verify(signed) == declaration()
    assert len(signed) < 256
    assert declarations_key(RUN, 3) == f"potluck/{RUN}/round/3/declared"


def test_only_the_author_signs_and_a_forged_one_is_refused():
    with pytest.raises(ValueError):
        declaration(author=A).sign(B)
    body = msgpack.packb([DOMAIN, RUN, 3, bytes.fromhex(BASE), A.public_key, 12.5], use_bin_type=True)
    with pytest.raises(BadDeclaration) as e:
        Declaration.verify(pack_pair(body, B.sign(body)))  # B signs a declaration in A's name
    assert e.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "fields",
    [
        [RUN, -1, bytes.fromhex(BASE), A.public_key, 1.0],  # negative round
        [RUN, 3, b"short", A.public_key, 1.0],  # base not 32 bytes
        [RUN, 3, bytes.fromhex(BASE), b"key", 1.0],  # not a public key
        [RUN, 3, bytes.fromhex(BASE), A.public_key, 1],  # timestamp not a float
        [RUN, 3, bytes.fromhex(BASE), A.public_key],  # a field short
    ],
)
def test_malformed_declarations_are_refused(fields):
    body = msgpack.packb([DOMAIN, *fields], use_bin_type=True)
    with pytest.raises(BadDeclaration) as e:
        Declaration.verify(pack_pair(body, A.sign(body)))
    assert e.value.reason == "malformed"


def test_garbage_is_refused_not_crashed_on():
    for data in (b"", b"\xc1", msgpack.packb([1, 2]), b"\x91" * 1000):
        with pytest.raises(BadDeclaration):
            Declaration.verify(data)


def test_a_round_closes_once_every_declared_author_has_published():
    declared = {A.public_key, B.public_key}
    assert close_reason(declared, {A.public_key: 10}, 0) is None
    assert waiting_for(declared, {A.public_key: 10}) == {B.public_key}
    reason = close_reason(declared, {A.public_key: 10, B.public_key: 5}, 0)
    assert reason == "every declared contributor (2) has published"
    # an update by someone who did not declare counts, and does not hold the round open
    assert close_reason(declared, {A.public_key: 1, B.public_key: 1, C.public_key: 1}, 0) is not None


def test_the_target_samples_close_a_round_without_declarations():
    assert close_reason(set(), {A.public_key: 60}, 100) is None
    assert close_reason(set(), {A.public_key: 60, B.public_key: 40}, 100) == "the target of 100 samples is in"
    assert close_reason(set(), {A.public_key: 60}, 0) is None  # no declarations, no target: the clock


def test_nothing_closes_a_round_without_updates():
    assert close_reason({A.public_key}, {}, 0) is None
    assert close_reason(set(), {}, 1) is None
