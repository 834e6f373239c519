"""The webhook's HTTP protocol: a response's head goes out with its body, in one write."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from webhooks.server import HeadWithBody, HttpProtocol

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def run(steps) -> Recording:
    async def main() -> Recording:
        real = Recording()
        transport = HeadWithBody(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        await steps(transport, real)
        return real

    return asyncio.run(main())


def test_a_head_and_its_body_written_in_one_turn_are_one_write():
    async def steps(transport, real):
        transport.write(HEAD)
        assert real.writes == []  # held for its body
        transport.write(b"{}")
        assert real.writes == [HEAD + b"{}"]
        transport.write(HEAD)  # the next response on the connection, the same way
        transport.write(b"[]")
        await asyncio.sleep(0)
        assert real.writes == [HEAD + b"{}", HEAD + b"[]"]

    run(steps)


def test_a_head_with_no_body_yet_goes_out_at_the_next_loop_turn():
    async def steps(transport, real):
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert real.writes == []
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        transport.write(b"not a head")  # anything else passes straight through
        assert real.writes[-1] == b"not a head"

    run(steps)


def test_closing_sends_a_held_head_first_and_the_rest_is_the_real_transports():
    async def steps(transport, real):
        transport.write(HEAD)
        transport.close()
        assert real.writes == [HEAD] and real.closed
        assert transport.get_extra_info("peername") == "extra:peername"

    run(steps)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = b'{"got":%d}' % len(body)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": answer})


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(rest) < length:
        rest += conn.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_a_real_server_on_it_answers_keep_alive_head_and_100_continue_requests():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=HttpProtocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            for body in (b"{}", b"[1,2,3]"):  # two requests on one connection
                head = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(body)
                conn.sendall(head + body)
                answer = read_response(conn)
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
                assert answer.endswith(b'{"got":%d}' % len(body))
            conn.sendall(
                b"POST /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"
            )
            assert conn.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            conn.sendall(b"{}")
            assert read_response(conn).endswith(b'{"got":2}')
            conn.sendall(b"HEAD /x HTTP/1.1\r\nhost: t\r\n\r\n")
            head = conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    finally:
        server.should_exit = True
        thread.join(10)
