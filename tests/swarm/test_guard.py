import msgpack
import pytest
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.utils.serializer import MSGPackSerializer

from potluck.swarm.guard import MAX_EXT_DEPTH, install_ext_depth_guard
from tests.support.attacks import nested_dictionary_value


def test_guard_rejects_deep_ext_nesting_and_keeps_hivemind_values_working():
    rejected = []
    install_ext_depth_guard(lambda: rejected.append(1))
    install_ext_depth_guard(lambda: rejected.append(1))  # idempotent: one wrapper, one count per rejection
    value = DictionaryDHTValue()
    value.store("subkey", b"v", 2e9)
    assert MSGPackSerializer.loads(MSGPackSerializer.dumps(value)).get("subkey").value == b"v"
    assert MSGPackSerializer.loads(MSGPackSerializer.dumps((1, (2, (3,))))) == (1, (2, (3,)))
    with pytest.raises(ValueError, match="nested deeper"):
        MSGPackSerializer.loads(nested_dictionary_value(MAX_EXT_DEPTH))
    assert rejected == [1]
    MSGPackSerializer.loads(msgpack.packb([1, 2]))  # the depth counter was reset
