"""potluck.observe.http: GET and HEAD of known pages; everything else refused, nothing served twice."""

from __future__ import annotations

import asyncio
import socket

import pytest

from potluck.errors import ConfigError
from potluck.observe.http import HttpServer, Response


async def _request(address: str, raw: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


def test_it_serves_get_and_head_and_refuses_the_rest():
    async def main() -> list[bytes]:
        page = {"/page": lambda: Response(200, "text/plain", b"hello")}
        server = HttpServer("127.0.0.1:0", page, flag="--x")
        address = await server.start()
        try:
            return [
                await _request(address, raw)
                for raw in (
                    b"GET /page?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"HEAD /page HTTP/1.1\r\n\r\n",
                    b"POST /page HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                    b"GET /nope HTTP/1.1\r\n\r\n",
                )
            ]
        finally:
            await server.stop()

    get, head, post, missing = asyncio.run(main())
    assert get.startswith(b"HTTP/1.1 200 ") and get.endswith(b"\r\n\r\nhello") and b"Content-Length: 5" in get
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 ") and missing.startswith(b"HTTP/1.1 404 ")


def test_a_page_that_fails_answers_503_and_the_server_lives_on():
    def broken() -> Response:
        raise RuntimeError("boom")

    async def main() -> tuple[bytes, bytes]:
        routes = {"/broken": broken, "/ok": lambda: Response(200, "text/plain", b"ok")}
        server = HttpServer("127.0.0.1:0", routes, flag="--x")
        address = await server.start()
        try:
            return (
                await _request(address, b"GET /broken HTTP/1.1\r\n\r\n"),
                await _request(address, b"GET /ok HTTP/1.1\r\n\r\n"),
            )
        finally:
            await server.stop()

    broken_reply, ok = asyncio.run(main())
    assert broken_reply.startswith(b"HTTP/1.1 503 ") and b"boom" in broken_reply
    assert ok.endswith(b"ok")


def test_a_busy_port_is_a_one_line_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(f"127.0.0.1:{port}", {}, flag="--metrics-listen")
        with pytest.raises(ConfigError, match=f"cannot bind --metrics-listen 127.0.0.1:{port}"):
            asyncio.run(server.start())


def test_an_oversized_request_is_dropped_unanswered():
    async def main() -> bytes:
        server = HttpServer("127.0.0.1:0", {"/": lambda: Response(200, "text/plain", b"x")}, flag="--x")
        address = await server.start()
        try:
            try:
                return await _request(address, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
            except ConnectionResetError:  # closed with our bytes unread: the kernel resets, also unanswered
                return b""
        finally:
            await server.stop()

    assert asyncio.run(main()) == b""
