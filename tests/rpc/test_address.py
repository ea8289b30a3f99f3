import pytest

from potluck.errors import ConfigError
from potluck.rpc.address import is_loopback, join_host_port, read_api_file, split_host_port, write_api_file


def test_host_port_round_trip():
    assert split_host_port("127.0.0.1:7450") == ("127.0.0.1", 7450)
    assert split_host_port("[::1]:0") == ("::1", 0)
    assert join_host_port("::1", 5) == "[::1]:5"


@pytest.mark.parametrize("bad", ["", "7450", "host:", "host:port", ":1", "h:70000"])
def test_bad_addresses_are_config_errors(bad):
    with pytest.raises(ConfigError):
        split_host_port(bad)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_api_file(tmp_path):
    with pytest.raises(ConfigError, match="no running node"):
        read_api_file(tmp_path)
    write_api_file(tmp_path, "127.0.0.1:1234")
    assert read_api_file(tmp_path) == "127.0.0.1:1234"
