"""The node's gRPC control server: our ControlService, standard health checking and reflection."""

from __future__ import annotations

import logging
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from potluck.errors import ConfigError
from potluck.rpc import fetching
from potluck.rpc.address import connectable, is_loopback, join_host_port, split_host_port
from potluck.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)
SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name


class NodeView(fetching.ArchiveParts, Protocol):
    """What the control API asks of a node."""

    def status(self) -> control_pb2.GetStatusResponse: ...
    def list_peers(self) -> control_pb2.ListPeersResponse: ...
    def list_updates(self) -> control_pb2.ListUpdatesResponse: ...
    async def publish(self, data: bytes) -> control_pb2.PublishUpdateResponse: ...


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, node: NodeView):
        self._node = node

    async def GetStatus(self, request, context):
        return self._node.status()

    async def ListPeers(self, request, context):
        return self._node.list_peers()

    async def ListUpdates(self, request, context):
        return self._node.list_updates()

    async def PublishUpdate(self, request, context):
        return await self._node.publish(request.update)

    async def FetchVersion(self, request, context):
        async for reply in fetching.fetch_version(self._node, request):
            yield reply


class ControlServer:
    def __init__(
        self,
        servicer: ControlServicer,
        listen: str,
        *,
        allow_remote: bool = False,
        max_message_bytes: int = 4 << 20,
    ):
        host, self._port = split_host_port(listen)
        if not is_loopback(host) and not allow_remote:
            raise ConfigError(
                f"--rpc-listen {listen} is not a loopback address: the control API has no authentication; "
                "pass --allow-remote-rpc to expose it anyway"
            )
        if not is_loopback(host):
            logger.warning(f"control API bound to {host}: anyone who can reach it can query this node")
        self._host = host
        # no SO_REUSEPORT: a second node on the same port must fail, not silently share it
        self._server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", max_message_bytes)]
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.address = ""

    async def start(self) -> str:
        target = join_host_port(self._host, self._port)
        try:
            port = self._server.add_insecure_port(target)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"cannot bind the control API to {target}: address in use or not available")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.address = join_host_port(connectable(self._host), port)
        return self.address

    async def stop(self, grace: float = 0.5) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
