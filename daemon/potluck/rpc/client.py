"""A small synchronous client of a node's control API, for the CLI and scripts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from potluck.rpc.address import read_api_file
from potluck.v1 import control_pb2, control_pb2_grpc


class NodeUnreachable(Exception):
    """The node's control API did not answer (not running, wrong address, timed out)."""


def resolve_address(rpc: str | None, data_dir: Path) -> str:
    return rpc if rpc else read_api_file(data_dir)


class ControlClient:
    def __init__(self, address: str, timeout: float = 5.0):
        self.address = address
        self._timeout = timeout
        self._channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)])
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def status(self) -> control_pb2.GetStatusResponse:
        return self._call(self._stub.GetStatus, control_pb2.GetStatusRequest())

    def peers(self) -> control_pb2.ListPeersResponse:
        return self._call(self._stub.ListPeers, control_pb2.ListPeersRequest())

    def updates(self) -> control_pb2.ListUpdatesResponse:
        return self._call(self._stub.ListUpdates, control_pb2.ListUpdatesRequest())

    def publish(self, data: bytes) -> control_pb2.PublishUpdateResponse:
        return self._call(self._stub.PublishUpdate, control_pb2.PublishUpdateRequest(update=data))

    def fetch_version(self, version: str = "", round_: int = -1) -> Iterator[control_pb2.FetchVersionReply]:
        """The node's progress replies while it fetches a version (the last has ``done``); no deadline:
        the node replies every half second and ends the stream itself."""
        request = control_pb2.FetchVersionRequest(version=version, round=round_)
        try:
            yield from self._stub.FetchVersion(request)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            raise NodeUnreachable(f"node at {self.address} did not answer ({code})") from None

    def _call(self, method, request):
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            raise NodeUnreachable(f"node at {self.address} did not answer ({code})") from None
