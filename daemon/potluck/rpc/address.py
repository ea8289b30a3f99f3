"""Control-API addresses: parsing HOST:PORT, the default, and the ``<data-dir>/api`` file."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from potluck.errors import ConfigError

DEFAULT_RPC_PORT = 7450
DEFAULT_RPC_LISTEN = f"127.0.0.1:{DEFAULT_RPC_PORT}"
API_FILE = "api"


def split_host_port(text: str, *, flag: str = "--rpc-listen") -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"bad {flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_RPC_PORT}")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connectable(host: str) -> str:
    """The address a local client dials for a server bound to ``host`` (0.0.0.0 is not a destination)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def write_api_file(data_dir: Path, address: str) -> Path:
    path = data_dir / API_FILE
    tmp = path.with_name(f".{API_FILE}.{os.getpid()}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)
    return path


def read_api_file(data_dir: Path) -> str:
    path = data_dir / API_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no running node in {data_dir} (no {path.name} file): start one with `potluck run`"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    split_host_port(text, flag=f"address in {path}")
    return text
