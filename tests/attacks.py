"""Hostile peers for tests: byte-level forgeries that the shipped code must reject. Not shipped."""

from __future__ import annotations

import msgpack
from hivemind.utils.serializer import MSGPackSerializer

DICTIONARY_EXT = 0x50  # hivemind's DictionaryDHTValue ext type code


def nested_dictionary_value(levels: int) -> bytes:
    """A DictionaryDHTValue whose only entry is a DictionaryDHTValue ... `levels` deep.

    ~30 bytes a level: 200 levels (6 KB) overflow the C stack of an unguarded hivemind DHT process.
    """
    payload = MSGPackSerializer.dumps([1, 2.0, []])
    for _ in range(levels):
        payload = msgpack.packb(
            msgpack.ExtType(
                DICTIONARY_EXT,
                msgpack.packb([1, 2.0, [[b"k", msgpack.ExtType(DICTIONARY_EXT, payload), 3.0]]]),
            )
        )
    return payload
