"""What one Redis call costs a thread after an idle gap, by the way it goes to the socket.

`python -m tests.perf.cold_redis_call [CALLS]`: one redis-server; the same EVALSHA (a script
returning 1) made CALLS times (400) each way, the ways taking turns, with a 35 ms sleep before
every call (the pause `make bench` leaves between fresh analyses; Argo's is 30 s): so each call
runs with the caches its gap left. Prints the median CPU (`thread_time`) and wall time per call:
- redis-py: `client.evalsha(...)` (the pool, retries, events, as the worker called before);
- connection: a redis-py Connection held, `send_command` and `read_response`;
- direct: worker/direct_redis.py (a socket, hiredis' reader), as the worker calls now;
- nothing: an empty call, the floor of the measurement itself.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.procs import RedisServer
from worker.direct_redis import DirectRedis
from worker.redis_clients import worker_retry

GAP_SECONDS = 0.035


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    server = RedisServer(work_dir=Path(tempfile.mkdtemp(prefix="ra-cold-"))).start()
    try:
        client = redis.Redis.from_url(server.url, retry=worker_retry())
        sha = client.script_load("return 1")
        held = client.connection_pool.make_connection()
        held.connect()
        direct = DirectRedis.of(client)
        assert direct is not None

        def connection() -> object:
            held.send_command("EVALSHA", sha, 2, "a", "b", "x", "y")
            return held.read_response()

        ways: dict[str, Callable[[], object]] = {
            "redis-py": lambda: client.evalsha(sha, 2, "a", "b", "x", "y"),
            "connection": connection,
            "direct": lambda: direct.call("EVALSHA", sha, 2, "a", "b", "x", "y"),
            "nothing": lambda: None,
        }
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        wall: dict[str, list[float]] = {name: [] for name in ways}
        order = list(ways)
        for n in range(calls):
            for name in order if n % 2 else reversed(order):
                time.sleep(GAP_SECONDS)
                began_cpu, began = time.thread_time(), time.perf_counter()
                ways[name]()
                cpu[name].append(time.thread_time() - began_cpu)
                wall[name].append(time.perf_counter() - began)
        for name in ways:
            print(
                f"{name:11} CPU {statistics.median(cpu[name]) * 1e6:6.1f} us,"
                f" wall {statistics.median(wall[name]) * 1e6:6.1f} us per call"
                f" (medians of {calls}, after a {GAP_SECONDS * 1000:.0f} ms gap each)"
            )
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
