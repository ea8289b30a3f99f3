"""The bulletin's receiving side: what a push may put in the cache, how readers see it, and that a
flood of pushes is bounded (pushes are only ever an accelerator beside the DHT)."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from potluck.swarm import bulletin as bulletin_module
from potluck.swarm.bulletin import MAX_SUBKEYS, MAX_VALUE_BYTES, Bulletin
from potluck.v1 import exchange_pb2

RUN = "ab" * 32
KEY = f"potluck/{RUN}/round/1/declared"


class FakeHost:
    peer_id = "me"

    def __init__(self):
        self.dht: dict[str, dict] = {}
        self.stored: list[tuple] = []

    async def store(self, key, subkey, value, expiration):
        self.stored.append((key, subkey, value))
        return True

    async def get(self, key):
        return self.dht.get(key, {})


def push(b: Bulletin, key: str = KEY, subkey: bytes = b"s", value: bytes = b"v", ttl: float = 60.0):
    message = exchange_pb2.Post(key=key, subkey=subkey, value=value, expiration=time.time() + ttl)
    return asyncio.run(b._receive(message, None))


def test_a_push_is_read_like_a_dht_value_and_wakes_waiters():
    b = Bulletin(FakeHost(), RUN, list)

    async def scenario():
        since = b.posts(KEY)
        waiter = asyncio.create_task(b.wait(KEY, 5.0, since))
        await asyncio.sleep(0)
        await b._receive(
            exchange_pb2.Post(key=KEY, subkey=b"s", value=b"v", expiration=time.time() + 60), None
        )
        assert await waiter
        assert await b.wait(KEY, 0.0, since)  # already posted since: no wait
        return await b.get(KEY, network=False)

    found = asyncio.run(scenario())
    assert found[b"s"].value == b"v" and b.received == 1


@pytest.mark.parametrize(
    "key, value, ttl",
    [
        (f"potluck/{'cd' * 32}/round/1/declared", b"v", 60.0),  # another run's key
        (KEY, b"x" * (MAX_VALUE_BYTES + 1), 60.0),  # too large for the DHT: never a record of ours
        (KEY, b"v", -1.0),  # expired
        (KEY, b"v", 10 * 24 * 3600.0),  # asks to live for days
    ],
)
def test_pushes_outside_the_rules_are_dropped_and_counted(key, value, ttl):
    b = Bulletin(FakeHost(), RUN, list)
    push(b, key=key, value=value, ttl=ttl)
    assert b.dropped == 1 and b.received == 0
    assert asyncio.run(b.get(key, network=False)) == {}


def test_a_flood_fills_one_key_up_to_its_bound_and_no_further():
    b = Bulletin(FakeHost(), RUN, list)
    for i in range(MAX_SUBKEYS + 10):
        push(b, subkey=i.to_bytes(4, "big"))
    assert len(asyncio.run(b.get(KEY, network=False))) == MAX_SUBKEYS
    assert b.dropped == 10


def test_old_keys_are_evicted_first(monkeypatch):
    monkeypatch.setattr(bulletin_module, "MAX_KEYS", 3)
    b = Bulletin(FakeHost(), RUN, list)
    keys = [f"potluck/{RUN}/updates/{r}" for r in range(4)]
    for key in keys:
        push(b, key=key)
    assert asyncio.run(b.get(keys[0], network=False)) == {}
    assert all(asyncio.run(b.get(k, network=False)) for k in keys[1:])


def test_dht_values_and_pushes_are_joined_and_our_own_posts_are_read_back():
    host = FakeHost()
    host.dht[KEY] = {b"d": SimpleNamespace(value=b"from the dht", expiration_time=time.time() + 60)}
    b = Bulletin(host, RUN, list)
    push(b, subkey=b"p", value=b"pushed")

    async def post_and_read():
        b.post(KEY, b"mine", b"own", time.time() + 60, to=[])
        await asyncio.gather(*b._sends)  # the DHT store runs in the background: let it finish
        return await b.get(KEY)

    found = asyncio.run(post_and_read())
    assert {k: v.value for k, v in found.items()} == {b"d": b"from the dht", b"p": b"pushed", b"mine": b"own"}
    assert host.stored == [(KEY, b"mine", b"own")]
