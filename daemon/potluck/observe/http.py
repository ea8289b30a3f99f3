"""A small read-only HTTP/1.1 server on the node's event loop, for ``/metrics`` and the dashboard.

GET and HEAD only, one request per connection, no request body: enough for Prometheus and a browser,
and no web framework to carry. Handlers run on the node's event loop, so they read the node's parts
the way the control API does (no threads, no locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from potluck.errors import ConfigError
from potluck.rpc.address import connectable, is_loopback, join_host_port, split_host_port

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192  # a request line and headers; more is dropped unanswered
READ_TIMEOUT_S = 5.0


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes


Handler = Callable[[], Response]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Unavailable"}


def text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", message.encode() + b"\n")


class HttpServer:
    """Serve ``routes`` (path -> handler) on ``listen`` (HOST:PORT, port 0: any free one)."""

    def __init__(self, listen: str, routes: dict[str, Handler], *, flag: str) -> None:
        self._host, self._port = split_host_port(listen, flag=flag)
        self._routes = routes
        self._flag = flag
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        if not is_loopback(self._host):  # read-only and without secrets, but say who can read it
            logger.warning(
                f"{self._flag} bound to {self._host}: anyone who can reach it can read this node's status"
            )
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, reuse_address=True, limit=MAX_REQUEST_BYTES
            )
        except OSError as e:
            target = join_host_port(self._host, self._port)
            why = os.strerror(e.errno) if e.errno else str(e)  # asyncio's own text repeats the address
            raise ConfigError(f"cannot bind {self._flag} {target}: {why}") from None
        port = self._server.sockets[0].getsockname()[1]
        self.address = join_host_port(connectable(self._host), port)
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path = _request_line(head)
            response = self._respond(method, path)
            writer.write(
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
                "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(response.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return text(405, "read-only: GET and HEAD only")
        handler = self._routes.get(path.split("?", 1)[0])
        if handler is None:
            return text(404, f"no such page: {path[:100]}")
        try:
            return handler()
        except Exception as e:  # a bug in one page must not take the server down
            logger.exception(f"{self._flag} {path}: {e}")
            return text(503, f"{type(e).__name__}: {e}")


def _request_line(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "BAD", "/"
    return parts[0], parts[1]
