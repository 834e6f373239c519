"""Profile the webhook and the workers with py-spy while the bench's load runs.

`python -m tests.perf.profile [fresh|burst|cached]`: starts the bench stack, records every
process with `py-spy record --format raw` during the load, and prints, per process, the functions
with the most samples (inclusive, and as the leaf). Raw files stay in .bench/profile/.
Needs py-spy (`pip install 'py-spy>=0.4,<0.5'`); it is not needed by `make bench`.
Knobs: PROFILE_CALLS (200 sequential fresh analyses), PROFILE_RATE (250 samples a second),
PROFILE_TOP (25 inclusive lines per process; half as many self lines, at least 12).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.perf.bench import (
    REPO,
    Stack,
    body_for,
    call,
    call_many,
    fresh_end,
    stack_running,
    wrk,
)

OUT = REPO / ".bench" / "profile"
CALLS = int(os.environ.get("PROFILE_CALLS", "200"))
RATE = int(os.environ.get("PROFILE_RATE", "250"))
TOP = int(os.environ.get("PROFILE_TOP", "25"))


def record(pid: int, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    path = OUT / f"{name}.txt"
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    # --gil: only samples holding the GIL, i.e. CPU spent in Python, not threads waiting.
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE), "--gil"]
    argv += ["-o", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, path


def summarize(path: Path, top: int = TOP) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " " + _where(f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
    lines = [f"{path.stem}: {total} samples"]
    lines += [f"  {n * 100 / total:5.1f}% incl  {f}" for f, n in inclusive.most_common(top)]
    selfs = leaf.most_common(max(12, top // 2))
    lines += [f"  {n * 100 / total:5.1f}% self  {f}" for f, n in selfs]
    return "\n".join(lines)


def _where(frame: str) -> str:
    inside = frame.rpartition("(")[2].rstrip(")")
    file = inside.rsplit(":", 1)[0]
    parts = Path(file).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :][:2])
    return "/".join(parts[-2:])


def load(stack: Stack, kind: str) -> None:
    if kind == "fresh":
        for i in range(CALLS):
            call(stack.http, body_for(i, "profile", fresh_end()))
    elif kind == "burst":
        run = uuid.uuid4().hex[:6]
        asyncio.run(call_many(stack.webhook.url, [body_for(i, f"p-{run}-{i}") for i in range(500)]))
    else:
        body = body_for(1, f"cached-{uuid.uuid4().hex[:6]}")
        url = f"{stack.webhook.url}/v1/analyze?" + "&".join(f"{k}={v}" for k, v in body.items())
        httpx.get(url, timeout=10)
        wrk(url)


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "burst"
    OUT.mkdir(parents=True, exist_ok=True)
    with stack_running() as stack:
        for i in range(10):
            call(stack.http, body_for(i, "warm", fresh_end()))
        targets = {"webhook": stack.webhook.pid, **{w.name: w.pid for w in stack.workers}}
        spies = [record(pid or 0, f"{kind}-{name}") for name, pid in targets.items()]
        time.sleep(1)
        load(stack, kind)
        for proc, _ in spies:
            proc.send_signal(2)  # py-spy writes its output on SIGINT
        for proc, _ in spies:
            proc.wait(30)
    for _, path in spies:
        if path.exists():
            print(summarize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
