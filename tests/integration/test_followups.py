"""Follow-ups on their own queue, retried by Celery's countdown, and dead letters an operator can
list, retry and drop (HTTP and CLI). Real webhook, Redis, Celery workers and Prometheus; chat
services are local receivers."""

from __future__ import annotations

import itertools
import json
import subprocess
import time

import pytest
import redis
import yaml

from tests.support.actions_world import NS, body
from tests.support.chat_receivers import Answer, ChatReceivers
from tests.support.procs import wait_for
from tests.support.service import ENTRY, Worker

pytestmark = pytest.mark.integration
WORKER_IDS = itertools.count()


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory):
    """A stack with no worker yet (each test starts the ones it needs) and two chat targets."""
    work = tmp_path_factory.mktemp("followups")
    with ChatReceivers() as rx:
        targets = {
            "targets": [
                {"name": "team-slack", "kind": "slack", "url": rx.url("slack"),
                 "rate_limit_per_minute": 100},
                {"name": "audit", "kind": "generic", "url": rx.url("generic"),
                 "rate_limit_per_minute": 100},
            ]
        }  # fmt: skip
        (work / "targets.yaml").write_text(yaml.safe_dump(targets))
        stack = stack_factory(
            "followups",
            prometheus_url=prometheus.url,
            workers=0,
            settings={
                "ROLLOUT_ANALYZER_CHAT_TARGETS_FILE": str(work / "targets.yaml"),
                "ROLLOUT_ANALYZER_NOTIFY_MAX_ATTEMPTS": "2",
                "ROLLOUT_ANALYZER_REUSE_SECONDS": "1",
            },
        )
        yield stack, rx


@pytest.fixture
def workers(world):
    """Start workers for one test; stopped (and the receivers reset) after it."""
    stack, rx = world
    started: list[Worker] = []

    def start(queues: str = "all", concurrency: int = 2) -> Worker:
        name = f"w-{queues}-{next(WORKER_IDS)}"
        worker = Worker(
            stack.env, stack.work_dir, name=name, concurrency=concurrency, queues=queues
        )
        started.append(worker.start())
        return worker

    rx.reset()
    yield start
    for worker in started:
        worker.stop()
    rx.reset()


def analyze(stack, payload: dict) -> tuple[str, float]:
    began = time.monotonic()
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=payload)
    assert answer.status_code == 200, answer.text
    return answer.json()["verdict"], time.monotonic() - began


def test_a_rate_limited_chat_holds_no_worker_slot(world, workers):
    stack, rx = world
    workers(concurrency=1)  # the only slot: a task sleeping through Retry-After would hold it
    rx.always("slack", Answer.rate_limited(retry_after="6"))
    rx.always("generic", Answer.rate_limited(retry_after="6"))
    assert analyze(stack, body("101"))[0] == "fail"
    wait_for(lambda: rx.hits("slack") and rx.hits("generic"), 10, "the first attempts")
    first_attempts = time.monotonic()

    # Both messages now wait for their countdown, in the queue: a fresh analysis runs at once.
    verdict, seconds = analyze(stack, body("102") | {"service": "good", "rollout": "good"})
    assert verdict == "pass"
    assert seconds < 2.5, f"a fresh analysis waited {seconds:.1f}s behind chat retries"
    # The pass's own messages found their targets held by the fail's Retry-After: they wait
    # it out without a request (worker/notify/holds.py).
    time.sleep(1.0)
    assert (rx.hits("slack"), rx.hits("generic")) == (1, 1)

    rx.always("slack", None)
    rx.always("generic", None)

    def fails() -> list:
        return [m for m in rx.accepted("generic") if m.body["verdict"] == "fail"]

    wait_for(fails, 20, "the retried message of the fail")
    # Retry-After was honoured: the second attempt came no sooner than the service asked.
    assert time.monotonic() - first_attempts >= 5.5
    assert len(fails()) == 1
    # Every message out before the workers stop: a held one left scheduled would be put back
    # on the queue and reach the next test.
    wait_for(lambda: len(rx.accepted("slack")) == 2, 10, "slack: the fail and the pass")
    wait_for(lambda: len(rx.accepted("generic")) == 2, 10, "generic: the fail and the pass")


def test_a_hung_chat_service_never_takes_the_slots_analyses_need(world, workers):
    stack, rx = world
    workers(concurrency=2)  # both queues: follow-ups may hold one slot of two (worker/broker.py)
    rx.always("slack", Answer.slow(3.0))
    rx.always("generic", Answer.slow(3.0))
    for revision in ("301", "302"):
        assert analyze(stack, body(revision))[0] == "fail"
    wait_for(lambda: rx.hits("slack") + rx.hits("generic") >= 1, 10, "a delivery hanging")
    time.sleep(0.3)  # time enough for the other thread to take a delivery, were it allowed to

    # Four deliveries of 3 s each are waiting: had they taken both threads and both prefetch
    # slots, this verdict would wait for them.
    verdict, seconds = analyze(stack, body("303") | {"service": "good", "rollout": "good"})
    assert verdict == "pass"
    assert seconds < 1.5, f"a fresh analysis waited {seconds:.1f}s behind hung chat deliveries"
    assert rx.hits("slack") + rx.hits("generic") == 1  # one delivery at a time meanwhile

    rx.always("slack", None)
    rx.always("generic", None)
    # Each event's messages still go out, once, before the workers stop.
    wait_for(lambda: len(rx.accepted("slack")) == 3, 30, "slack: two fails and the pass")
    wait_for(lambda: len(rx.accepted("generic")) == 3, 30, "generic: two fails and the pass")


def test_a_worker_at_its_follow_up_cap_reads_the_next_message_when_one_ends(world, workers):
    stack, rx = world
    workers(queues="analyses")  # six fails, their twelve messages left waiting on the queue
    for revision in range(501, 507):
        assert analyze(stack, body(str(revision)))[0] == "fail"
    workers(concurrency=2)  # both queues: one follow-up slot, so capped after each read
    wait_for(lambda: rx.hits("slack") + rx.hits("generic") >= 1, 20, "the first delivery")
    began = time.monotonic()

    def delivered() -> int:
        return len(rx.accepted("slack")) + len(rx.accepted("generic"))

    wait_for(lambda: delivered() == 12, 30, "every message")
    # The capped BRPOP ends as each delivery ends (CLIENT UNBLOCK): read only at its timeout
    # (0.5 s), the eleven after the first took over 5 s.
    seconds = time.monotonic() - began
    assert seconds < 2.5, f"eleven quick deliveries took {seconds:.1f}s at the follow-up cap"


def test_a_retry_waiting_for_its_countdown_holds_no_follow_up_slot(world, workers):
    stack, rx = world
    workers(concurrency=2)  # follow-ups may hold one slot: a waiting retry must not be it
    rx.always("slack", Answer.rate_limited(retry_after="8"))
    assert analyze(stack, body("401"))[0] == "fail"
    wait_for(lambda: rx.hits("slack") and rx.accepted("generic"), 10, "the first attempts")
    time.sleep(0.5)  # slack's second attempt is scheduled 8 s out, held by the worker

    assert analyze(stack, body("402"))[0] == "fail"
    began = time.monotonic()
    wait_for(lambda: len(rx.accepted("generic")) == 2, 10, "the second event's message")
    assert time.monotonic() - began < 3, "a follow-up waited for another's countdown"

    rx.always("slack", None)
    wait_for(lambda: len(rx.accepted("slack")) == 2, 20, "slack: both fails, after the wait")


def test_follow_ups_wait_on_their_own_queue(world, workers):
    stack, rx = world
    workers(queues="analyses")
    assert analyze(stack, body("103"))[0] == "fail"
    time.sleep(1.5)
    assert rx.hits("slack") == 0  # nobody consumes the follow-up queue yet
    queued = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"]).llen(
        f"{stack.env['ROLLOUT_ANALYZER_QUEUE']}-followups"
    )
    assert queued >= 1
    assert readyz(stack)["followup_workers"] == 0  # the only follow-up consumer is not up yet
    workers(queues="followups")
    # /readyz counts it apart: it answers no analysis, and one none is alive is seen there.
    wait_for(lambda: readyz(stack)["followup_workers"] == 1, 10, "the follow-up worker's beat")
    wait_for(lambda: rx.accepted("slack") and rx.accepted("generic"), 15, "the messages")
    assert [m.body["revision"] for m in rx.accepted("generic")] == ["103"]


def readyz(stack) -> dict:
    with stack.client() as client:
        return client.get("/readyz").json()


def argo_event(stack, revision: str) -> None:
    event = {"event": "rollout-aborted", "rollout": "errors", "namespace": NS,
             "revision": revision, "phase": "Degraded"}  # fmt: skip
    with stack.client() as client:
        assert client.post("/v1/events/argo-rollouts", json=event).status_code == 202


def letters(stack) -> list[dict]:
    with stack.client() as client:
        answer = client.get("/v1/dead-letters")
    assert answer.status_code == 200
    return answer.json()["dead_letters"]


def dead_letter_for(stack, revision: str, retries: int = 0) -> dict:
    def found() -> dict | None:
        return next(
            (
                e
                for e in letters(stack)
                if e["notification"]["revision"] == revision and e["retries"] == retries
            ),
            None,
        )

    wait_for(lambda: found() is not None, 20, f"the dead letter of revision {revision}")
    entry = found()
    assert entry is not None
    return entry


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ENTRY, "dead-letters", *args], env=stack.env, capture_output=True, text=True, timeout=60
    )


def test_dead_letters_are_listed_retried_and_dropped_over_http(world, workers):
    stack, rx = world
    workers()
    rx.always("generic", Answer.status_only(500))
    argo_event(stack, "201")
    entry = dead_letter_for(stack, "201")
    assert (entry["target"], entry["result"]["attempts"]) == ("audit", 2)
    # The report pages list the settled step of the event (worker/history.py).
    kv = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    steps = kv.smembers(
        f"{stack.env['ROLLOUT_ANALYZER_KEY_PREFIX']}history:steps:{NS}/errors@201!rollout-aborted"
    )
    assert b"notify:audit" in steps
    with stack.client() as client:
        assert client.post(f"/v1/dead-letters/{'0' * 32}/retry").status_code == 404
        assert client.post("/v1/dead-letters/nope/retry").json()["field"] == "entry_id"
        # Still failing: the retry puts it back, one retry counted, same id.
        assert client.post(f"/v1/dead-letters/{entry['id']}/retry").status_code == 202
        again = dead_letter_for(stack, "201", retries=1)
        assert again["id"] == entry["id"]
        rx.always("generic", None)
        answer = client.post(f"/v1/dead-letters/{entry['id']}/retry")
        assert (answer.status_code, answer.json()) == (202, {"retrying": [entry["id"]]})
        wait_for(lambda: rx.accepted("generic"), 15, "the retried letter")
        assert letters(stack) == []
        assert len(rx.accepted("generic")) == 1

        rx.always("generic", Answer.status_only(500))
        argo_event(stack, "202")
        dropped = dead_letter_for(stack, "202")
        assert client.delete(f"/v1/dead-letters/{dropped['id']}").json() == {
            "dropped": dropped["id"]
        }
        assert client.delete(f"/v1/dead-letters/{dropped['id']}").status_code == 404
    assert letters(stack) == []


def test_dead_letters_from_the_command_line(world, workers):
    stack, rx = world
    workers()
    rx.always("generic", Answer.status_only(500))
    for revision in ("301", "302", "303"):
        argo_event(stack, revision)
    entries = {rev: dead_letter_for(stack, rev) for rev in ("301", "302", "303")}
    listed = cli(stack, "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(e["notification"]["revision"] for e in json.loads(listed.stdout)) == [
        "301", "302", "303",
    ]  # fmt: skip
    dropped = entries["303"]["id"]
    assert cli(stack, "drop", dropped).stdout.strip() == f"dropped {dropped}"
    unknown = cli(stack, "retry", dropped)
    assert unknown.returncode == 3 and "entry_id" in unknown.stderr

    rx.always("generic", None)
    retried = cli(stack, "retry", "--all")
    assert (retried.returncode, retried.stdout.strip()) == (0, "2 retries queued")
    wait_for(lambda: len(rx.accepted("generic")) == 2, 15, "both retried letters")
    assert sorted(m.body["revision"] for m in rx.accepted("generic")) == ["301", "302"]
    assert letters(stack) == []
