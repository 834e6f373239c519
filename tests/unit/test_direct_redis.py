"""The worker's and the webhook's own sockets to Redis (worker/direct_redis.py), on a real
redis-server: the same replies as redis-py's client, in the order sent however commands are
pipelined; a connection killed or a script flushed costs nothing but a second run; AUTH and
SELECT as the URL says; where the path does not apply (a cluster, TLS, a unix socket, fakeredis)
redis-py serves, a command sent ahead holding a pooled connection until its reply is read; a
subscription hands over messages and notices a Redis that stops answering."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis

from tests.support.procs import RedisServer
from worker.direct_redis import AsyncDirectRedis, DirectRedis
from worker.lua import AsyncScript, Script
from worker.query_cap import QueryCap

# Every kind of reply a script of ours gives: status, text, number, nil inside an array, nesting.
SHAPES = """
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'b', '2')
return {'started', redis.call('HGETALL', KEYS[1]), tonumber(ARGV[2]), false,
        {ARGV[1], {redis.call('HGET', KEYS[1], 'b')}}}
"""
ECHO = "return ARGV[1]"
FAILS = "return redis.error_reply('WRONG the script says no')"


@pytest.fixture
def url(redis_flushed: RedisServer) -> str:
    return redis_flushed.url


def kill_direct_connections(kv: redis.Redis) -> int:
    """Close every client connection but redis-py's own ones of `kv` (named for this)."""
    kv.client_setname("the-test")
    killed = 0
    for client in kv.client_list():
        if client["name"] != "the-test":
            killed += kv.client_kill_filter(_id=client["id"])
    return killed


def test_a_script_gets_the_reply_redis_py_gets(url):
    client = redis.Redis.from_url(url)
    assert DirectRedis.of(client) is not None
    direct = Script(client, SHAPES)(keys=["ra:test:h"], args=["x", 7])
    plain = client.eval(SHAPES, 1, "ra:test:h", "x", 7)
    assert direct == plain == [b"started", [b"a", b"x", b"b", b"2"], 7, None, [b"x", [b"2"]]]
    decoded = redis.Redis.from_url(url, decode_responses=True)
    assert Script(decoded, SHAPES)(keys=["ra:test:h"], args=["é", 1])[1] == ["a", "é", "b", "2"]
    with pytest.raises(redis.ResponseError, match="WRONG the script says no"):
        Script(client, FAILS)()


def test_a_flushed_script_is_sent_whole_then_runs_by_its_sha(url):
    client = redis.Redis.from_url(url)
    echo = Script(client, ECHO)
    assert echo(args=["one"]) == b"one"
    client.script_flush()
    assert echo(args=["two"]) == b"two"  # NOSCRIPT, then EVAL of the source
    assert client.script_exists(echo.sha) == [True]


def test_replies_come_back_to_their_own_commands_however_they_are_read(url):
    client = redis.Redis.from_url(url)
    direct = DirectRedis.of(client)
    assert direct is not None
    first = direct.send("SET", "ra:test:k", "v1")
    second = direct.send("GET", "ra:test:k")
    third = direct.send("INCRBY", "ra:test:n", 41)
    assert direct.call("ECHO", "in between") == b"in between"  # read past the three sent before
    assert (third(), second(), first()) == (41, b"v1", b"OK")
    assert third() == 41  # read once, kept


def test_a_killed_connection_costs_nothing_but_a_second_sending(url):
    client = redis.Redis.from_url(url)
    kv = redis.Redis.from_url(url)
    counter = Script(client, "return redis.call('INCR', KEYS[1])")
    assert counter(keys=["ra:test:runs"]) == 1
    assert kill_direct_connections(kv) >= 1
    pending = counter.send(keys=["ra:test:runs"])  # on the dead socket: no reply will come
    assert pending() == 2  # sent again on a new socket, and run once
    assert counter(keys=["ra:test:runs"]) == 3
    assert kill_direct_connections(kv) >= 1
    assert counter(keys=["ra:test:runs"]) == 4  # a call on the dead socket: made again


def test_auth_and_the_database_come_from_the_url(tmp_path: Path):
    server = RedisServer(work_dir=tmp_path / "auth").start()
    try:
        admin = redis.Redis.from_url(server.url)
        admin.acl_setuser("alice", enabled=True, passwords=["+s3cret"], keys=["*"],
                          commands=["+@all"])  # fmt: skip
        admin.config_set("requirepass", "pw")
        port = server.port
        for user in ("", "alice:s3cret"):
            login = user or ":pw"
            client = redis.Redis.from_url(f"redis://{login}@127.0.0.1:{port}/3")
            assert DirectRedis.of(client) is not None
            setter = Script(client, "return redis.call('SET', KEYS[1], ARGV[1])")
            assert setter(keys=["ra:test:db"], args=[user or "default"]) == b"OK"
            in_db3 = redis.Redis.from_url(f"redis://:pw@127.0.0.1:{port}/3")
            assert in_db3.get("ra:test:db") == (user or "default").encode()
        refused = redis.Redis.from_url(f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(redis.AuthenticationError):  # through redis-py, which says why
            Script(refused, ECHO)(args=["x"])
    finally:
        server.kill()


def test_redis_py_serves_where_the_direct_path_does_not_apply(url, tmp_path: Path):
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert DirectRedis.of(fakeredis.FakeRedis()) is None
    assert DirectRedis.of(redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0")) is None
    assert DirectRedis.of(redis.Redis(unix_socket_path=str(tmp_path / "r.sock"))) is None
    assert DirectRedis.of(redis.Redis.from_url(url, protocol=3)) is None
    assert AsyncDirectRedis.of(aioredis.from_url(f"rediss://127.0.0.1:{port}/0")) is None
    client = redis.Redis.from_url(url)
    assert DirectRedis.of(client) is DirectRedis.of(client)  # one per client
    fake = fakeredis.FakeRedis()
    assert Script(fake, ECHO)(args=["fake"]) == b"fake"
    assert Script(fake, ECHO).send(args=["sent"])() == b"sent"


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_many_concurrent_async_calls_share_one_pipelined_connection(url):
    async def body() -> tuple[list[Any], int]:
        client = aioredis.from_url(url)
        echo = AsyncScript(client, ECHO)
        try:
            answers = await asyncio.gather(*(echo(args=[n]) for n in range(300)))
            connections = len(redis.Redis.from_url(url).client_list())
            return answers, connections
        finally:
            await client.aclose()

    answers, connections = run(body())
    assert answers == [str(n).encode() for n in range(300)]
    assert connections <= 3  # ours, the listing client's, and none per call


def test_an_async_call_outlives_a_killed_connection(url):
    kv = redis.Redis.from_url(url)

    async def body() -> list[Any]:
        client = aioredis.from_url(url)
        counter = AsyncScript(client, "return redis.call('INCR', KEYS[1])")
        try:
            first = await counter(keys=["ra:test:n"])
            assert kill_direct_connections(kv) >= 1
            await asyncio.sleep(0.05)  # the loop hears the connection close
            return [first, await counter(keys=["ra:test:n"]), await counter(keys=["ra:test:n"])]
        finally:
            await client.aclose()

    assert run(body()) == [1, 2, 3]


def test_an_async_call_redis_does_not_answer_times_out(url):
    kv = redis.Redis.from_url(url)

    async def body() -> float:
        direct = AsyncDirectRedis.of(aioredis.from_url(url, socket_timeout=0.3))
        assert direct is not None
        assert await direct.call("PING") in (b"PONG", True)
        kv.client_pause(1500)
        began = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await direct.call("GET", "ra:test:k")
        return time.monotonic() - began

    assert run(body()) < 1.0


def test_a_subscription_hands_over_messages_and_ends_with_its_connection(url):
    kv = redis.Redis.from_url(url)

    async def body() -> list[tuple[Any, Any]]:
        heard: list[tuple[Any, Any]] = []
        direct = AsyncDirectRedis.of(aioredis.from_url(url))
        assert direct is not None
        subscription = await direct.psubscribe("ra:test:done:*", lambda c, d: heard.append((c, d)))
        await asyncio.to_thread(kv.publish, "ra:test:done:a1", b"\x00binary")
        await asyncio.to_thread(kv.publish, "ra:test:other", "not ours")
        await asyncio.to_thread(kv.publish, "ra:test:done:a2", "second")
        await asyncio.sleep(0.1)
        assert kv.client_kill_filter(_type="pubsub") == 1
        await asyncio.wait_for(subscription.held(5), 2)  # ends with its connection
        return heard

    assert run(body()) == [(b"ra:test:done:a1", b"\x00binary"), (b"ra:test:done:a2", b"second")]


def test_a_subscription_that_hears_nothing_is_closed(url):
    """A Redis that stops answering (a half-open connection hears nothing): the PING gets no
    pong, and the subscription ends after one and a half intervals, not never."""
    kv = redis.Redis.from_url(url)

    async def body() -> float:
        direct = AsyncDirectRedis.of(aioredis.from_url(url))
        assert direct is not None
        subscription = await direct.psubscribe("ra:test:done:*", lambda c, d: None)
        kv.client_pause(3000)
        began = time.monotonic()
        await asyncio.wait_for(subscription.held(0.2), 2.5)
        return time.monotonic() - began

    try:
        assert run(body()) < 1.0
    finally:
        kv.client_unpause()


def test_where_no_socket_of_ours_serves_a_sent_command_holds_a_pooled_connection(tmp_path: Path):
    """A unix socket (as TLS or Sentinel): sent ahead through redis-py's pool, the connection
    held until its reply is read, then given back with nothing left unread on it."""
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "", "--dir",
         str(tmp_path)], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = redis.Redis(unix_socket_path=str(path))
        assert DirectRedis.of(client) is None
        pool: Any = client.connection_pool
        counter = Script(client, "return redis.call('INCR', KEYS[1])")
        first = counter.send(keys=["ra:test:n"])
        cap = QueryCap(client, "ra:test:cap", limit=1)
        assert cap.try_acquire("holder")
        released = cap.release_sent("holder")
        assert len(pool._in_use_connections) == 2  # both replies still unread
        assert client.get("ra:test:n") == b"1"  # it ran when sent
        assert cap.try_acquire("another")  # the slot was free before its reply was read
        assert (first(), first()) == (1, 1)  # read once, kept
        released()
        assert len(pool._in_use_connections) == 0
        for n in range(2, 5):  # every pooled connection answers its own command
            assert counter(keys=["ra:test:n"]) == n
    finally:
        server.terminate()
        server.wait(10)
