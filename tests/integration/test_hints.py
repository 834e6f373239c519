"""A task's hint (worker/hints.py) on a real redis-server: the claim takes the query's slot for
its task, the worker sends START and the query together, and writes nothing before START has
answered that the analysis is its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis

from analysis.request import parse_request, resolve
from tests.support.redis_proxy import LossyRedisProxy, label
from tests.unit.test_jobs import POLICIES, REQUEST, InterruptedSource
from webhooks.producer import RedisTaskProducer
from worker import hints
from worker.celery_app import app
from worker.jobs import execute
from worker.query_cap import CappedSource, QueryCap, cap_key
from worker.sequences import SequenceStore, sequence_id, sequence_key
from worker.store import START, START_WITH_SLOT, AsyncStore, Store
from worker.task_names import ANALYZE_TASK

PREFIX = "ra:test:"
QUEUE = "ra-test-hints"
CAP = (cap_key(PREFIX, "http://prometheus.example:9090"), 2, 30_000)


def sha_of(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


START_SHA = sha_of(START)


def spec_of(request: dict[str, Any]) -> Any:
    return resolve(parse_request(request), POLICIES)


def claim(
    url: str, request: dict[str, Any] = REQUEST, cap: Any = CAP, since: bool = False
) -> tuple[str, hints.Hint]:
    """A claim made as the webhook makes it: its task's message, with its hint, pushed by the
    claim script. Returns the analysis id and the hint the worker reads from the message.
    `since`: the claim reads a live poll's sequence into the hint, as the webhook's does."""
    spec = spec_of(request)
    task_since = None
    if since:
        sequence = sequence_key(PREFIX, sequence_id(spec))
        task_since = (sequence, hints.SINCE_UNKNOWN, hints.SINCE_NEW)

    async def run() -> tuple[str, hints.Hint]:
        client = aioredis.from_url(url)
        try:
            spec_json, now = spec.to_json(), time.time()
            hint, slot = hints.for_claim(spec_json, now, cap)
            producer = RedisTaskProducer(app, client, QUEUE)
            new_id = "a" * 16 + str(time.monotonic_ns())[-16:]
            message = producer.envelope(ANALYZE_TASK, [new_id], {hints.HEADER: hint.header()})
            found = await AsyncStore(client, PREFIX).claim(
                spec.identity(), spec_json, pending_seconds=60, result_ttl_seconds=600, now=now,
                new_id=new_id, task=(QUEUE, message),
                task_slot=(slot, *hint.slot_marker()) if slot else None, task_since=task_since,
            )  # fmt: skip
            pushed_text = await client.lindex(QUEUE, 0)
            assert pushed_text is not None
            pushed = json.loads(pushed_text)
        finally:
            await client.aclose()
        # What the worker reads: Celery's request carries the message's headers.
        header = pushed["headers"][hints.HEADER]
        assert json.loads(base64.b64decode(pushed["body"]))[0] == [found.analysis_id]
        read = hints.read({**pushed["headers"], "retries": 0})
        assert read is not None and read.spec == header["spec"]
        return found.analysis_id, read

    return asyncio.run(run())


@pytest.fixture
def url(redis_flushed) -> str:
    return str(redis_flushed.url)


def port_of(url: str) -> int:
    for script in (START, START_WITH_SLOT):  # as after any first analysis: no NOSCRIPT
        redis.Redis.from_url(url).script_load(script)
    return int(url.rsplit(":", 1)[1].split("/")[0])


def holders(url: str) -> list[bytes]:
    return list(cast(list[bytes], redis.Redis.from_url(url).zrange(CAP[0], 0, -1)))


def redis_ms(url: str) -> float:
    seconds, micros = redis.Redis.from_url(url).time()
    return seconds * 1000 + micros / 1000


def lease_left_ms(url: str, holder: str) -> float:
    """How long `holder`'s slot of the cap is leased for still, by Redis' clock."""
    score = redis.Redis.from_url(url).zscore(CAP[0], holder)
    assert score is not None, f"{holder} holds no slot"
    return score - redis_ms(url)


def test_the_claim_takes_its_tasks_query_slot_when_one_is_free_and_no_task_waits(url):
    _, hint = claim(url)
    assert hint.slot is not None and hint.cap == CAP[0]
    assert holders(url) == [hint.slot.encode()]
    # Leased briefly (a task whose worker dies before START frees it in seconds), not for
    # the query's 30 s: START leases it again.
    assert 3_000 < lease_left_ms(url, hint.slot) <= hints.CLAIM_SLOT_SECONDS * 1000


def test_no_slot_is_taken_behind_a_waiting_task_or_past_the_cap(url):
    kv = redis.Redis.from_url(url)
    kv.lpush(QUEUE, b"a task nobody took yet")
    _, behind = claim(url)
    assert behind.slot is None and holders(url) == []  # it would idle behind the backlog
    kv.delete(QUEUE)
    kv.zadd(CAP[0], {"one": time.time() * 1000 + 60_000, "two": time.time() * 1000 + 60_000})
    _, full = claim(url, {**REQUEST, "service": "other"})
    assert full.slot is None and sorted(holders(url)) == [b"one", b"two"]


def test_an_uncapped_claim_names_no_slot(url):
    _, hint = claim(url, cap=None)
    assert (hint.slot, hint.cap) == (None, None)


def run(store: Store, analysis_id: str, source: Any, hint: hints.Hint | None, **more: Any) -> str:
    handed_on: list[dict[str, Any]] = more.pop("handed_on", [])
    return execute(
        store, analysis_id, worker=more.pop("worker", "w1"), source=source, policies=POLICIES,
        lease_seconds=5, reuse_seconds=15, budget_seconds=10, after=handed_on.append,
        hint=hint, **more,
    )  # fmt: skip


class Seen:
    """The demo recording as a source that counts its queries and sets `asked` at each;
    `meanwhile` runs inside each query."""

    def __init__(self) -> None:
        self.inner = InterruptedSource()
        self.name = self.inner.name
        self.asked = threading.Event()
        self.queries = 0
        self.meanwhile: Any = lambda: None

    def latest_time(self, spec: Any, now: float) -> float:
        return self.inner.latest_time(spec, now)

    def observe(self, spec: Any, end: float, deadline: Any = None, seconds: Any = None) -> Any:
        observation = self.inner.source.observe(spec, end, deadline, seconds)
        self.meanwhile()
        self.queries += 1
        self.asked.set()
        return observation

    def observe_range(
        self, spec: Any, start: float, end: float, step: float, seconds: Any = None
    ) -> Any:
        # The tests count live polls: a replay passed through would go uncounted.
        raise NotImplementedError("Seen counts live polls only; a replay here would go uncounted")


def test_the_query_goes_out_before_starts_answer_is_read(url):
    """START's reply is held back by a proxy until the query has been made: a worker that
    waited for it before querying would hold it 2 s, and the proxy would say so."""
    analysis_id, hint = claim(url, cap=None)
    with LossyRedisProxy(port_of(url)) as proxy:
        proxy.enabled = False  # nothing lost: only START's reply held
        source = Seen()
        start = f"EVAL:{START_SHA}"
        proxy.hold = lambda batch: source.asked if start in proxy_labels(batch) else None
        store = Store(redis.Redis.from_url(proxy.url), PREFIX)
        assert run(store, analysis_id, source, hint) == "done"
        assert proxy.held == [(start, True)]  # released by the query, not by the 2 s


def test_without_a_hint_start_answers_before_the_query(url):
    analysis_id, _ = claim(url, cap=None)
    with LossyRedisProxy(port_of(url)) as proxy:
        proxy.enabled = False
        source = Seen()
        start = f"EVALSHA:{START_SHA}"
        proxy.hold = lambda batch: source.asked if start in proxy_labels(batch) else None
        store = Store(redis.Redis.from_url(proxy.url), PREFIX)
        assert run(store, analysis_id, source, None) == "done"
        assert proxy.held == [(start, False)]  # the query waited for START


def test_start_sent_ahead_runs_before_the_query_on_a_redis_without_our_scripts(url):
    """After a restart or a fail-over Redis has no scripts: START sent by its SHA1 would come
    back NOSCRIPT, read only after the query, and the analysis would run without its lease (a
    worker dying in a slow query would then be found out only when the claim lapses, 120 s).
    It is sent whole: the lease is there when the query runs."""
    analysis_id, hint = claim(url, cap=None)
    kv = redis.Redis.from_url(url)
    kv.script_flush()
    lease = Store(kv, PREFIX).keys.lease(analysis_id)
    held_during_query: list[bytes | str | None] = []
    source = Seen()
    source.meanwhile = lambda: held_during_query.append(kv.get(lease))
    assert run(Store(redis.Redis.from_url(url), PREFIX), analysis_id, source, hint) == "done"
    assert held_during_query == [b"w1"]


def proxy_labels(batch: list[bytes]) -> list[str]:
    return [label(c) for c in batch]


def test_an_analysis_another_worker_holds_is_queried_but_nothing_is_written(url):
    """The message delivered twice: the second worker's query was made ahead of START, which
    then answers `taken`. Its result is dropped; the slot goes back; a live poll's sequence,
    the one thing written before FINISH, is left as it was."""
    analysis_id, hint = claim(url)
    kv = redis.Redis.from_url(url)
    store = Store(kv, PREFIX)
    assert store.begin(analysis_id, "w-first", 30)[0] == "started"
    cap = QueryCap(kv, CAP[0], CAP[1])
    source = Seen()
    handed_on: list[dict[str, Any]] = []
    sequences = SequenceStore(kv, PREFIX, 3600)
    got = run(store, analysis_id, CappedSource(source, cap), hint, worker="w-second",
              sequences=sequences, handed_on=handed_on)  # fmt: skip
    assert got == "taken" and source.queries == 1
    record = store.record(analysis_id)
    assert record is not None
    assert (record["status"], record["worker"]) == ("running", "w-first")
    assert handed_on == [] and holders(url) == []
    live = spec_of(REQUEST)
    assert live.live and sequences.load(sequence_id(live)) == (None, 0)


def test_a_done_analysis_delivered_again_is_offered_to_the_follow_up_not_recorded_again(url):
    analysis_id, hint = claim(url)
    kv = redis.Redis.from_url(url)
    store, cap = Store(kv, PREFIX), QueryCap(kv, CAP[0], CAP[1])
    handed_on: list[dict[str, Any]] = []
    assert run(store, analysis_id, CappedSource(Seen(), cap), hint, handed_on=handed_on) == "done"
    record = store.record(analysis_id)
    assert record is not None
    finished_at = record["finished_at"]
    again = run(store, analysis_id, CappedSource(Seen(), cap), hint, worker="w2",
                handed_on=handed_on)  # fmt: skip
    assert again == "done"
    record = store.record(analysis_id)
    assert record is not None and record["finished_at"] == finished_at
    assert [r["analysis_id"] for r in handed_on] == [analysis_id, analysis_id]
    assert holders(url) == []


def test_starts_sent_ahead_lease_the_claims_slot_again_for_the_query(url):
    """The claim leased its slot for seconds; START, sent with the query, leases it for the
    worker's query lease (30 s here), so a slow query keeps its slot to the end."""
    analysis_id, hint = claim(url)
    assert hint.ahead and hint.slot is not None
    kv = redis.Redis.from_url(url)
    cap = QueryCap(kv, CAP[0], CAP[1], lease_seconds=30)
    left: list[float] = []
    source = Seen()
    source.meanwhile = lambda: left.append(lease_left_ms(url, hint.slot or ""))
    assert run(Store(kv, PREFIX), analysis_id, CappedSource(source, cap), hint) == "done"
    assert len(left) == 1 and 25_000 < left[0] <= 30_000
    assert holders(url) == []  # given back after the query


def test_a_hint_with_a_slot_of_another_cap_is_not_trusted(url):
    """A worker whose cap differs from the webhook's (another Prometheus URL or prefix) takes
    its own slot with START, before its query, as without a hint, and gives the claim's back
    at once (not left idle to the end of its lease)."""
    analysis_id, hint = claim(url)
    kv = redis.Redis.from_url(url)
    other = QueryCap(kv, cap_key(PREFIX, "http://elsewhere:9090"), 1)
    seen: list[tuple[int, list[bytes]]] = []
    source = Seen()
    source.meanwhile = lambda: seen.append((other.holders(), holders(url)))
    assert run(Store(kv, PREFIX), analysis_id, CappedSource(source, other), hint) == "done"
    assert seen == [(1, [])]  # the query ran in a slot of the worker's own cap


def test_an_uncapped_worker_gives_the_claims_slot_back(url):
    """A worker without a cap (set on the webhook only) queries at once and frees the slot
    the claim took for it: other, capped, workers may use it."""
    analysis_id, hint = claim(url)
    assert holders(url) == [(hint.slot or "").encode()]
    seen: list[list[bytes]] = []
    source = Seen()
    source.meanwhile = lambda: seen.append(holders(url))
    assert run(Store(redis.Redis.from_url(url), PREFIX), analysis_id, source, hint) == "done"
    assert seen == [[]]


def test_a_slot_is_given_back_only_in_a_cap_of_ours(url):
    """The cap's key comes from a message: a key outside our prefix's caps is not touched."""
    kv = redis.Redis.from_url(url)
    kv.zadd("someone:else", {"h": 1})
    store = Store(kv, PREFIX)
    store.give_back_slot("someone:else", "h")
    store.give_back_slot(f"{PREFIX}other", "h")
    assert kv.zrange("someone:else", 0, -1) == [b"h"]
    kv.zadd(CAP[0], {"h": 1})
    store.give_back_slot(CAP[0], "h")
    assert holders(url) == []


@pytest.mark.parametrize(
    "change",
    [
        {"retries": 1},  # Celery's retry of the task
        {"redelivered": True},  # put back on the queue (kombu marks it)
        {"delivery_info": {"redelivered": True}},
    ],
)
def test_only_a_first_delivery_sends_its_query_ahead(url, change):
    _, hint = claim(url)
    header = {hints.HEADER: hint.header(), "retries": 0}
    first = hints.read(header)
    assert first is not None and first.ahead
    again = hints.read({**header, **change})
    assert again is not None and not again.ahead and again.slot == hint.slot


def test_a_message_that_waited_has_start_answer_first_and_keep_the_claims_slot(url):
    """A message read more than a second after its claim (a busy worker): START answers first,
    as without a hint, and takes the slot the claim took as its own (not a second one, which
    would leave the claim's idle until its lease ran out)."""
    analysis_id, hint = claim(url)
    stale = hints.read({hints.HEADER: hint.header()}, now=hint.queued_at + 5)
    assert stale is not None and not stale.ahead
    kv = redis.Redis.from_url(url)
    cap = QueryCap(kv, CAP[0], CAP[1])
    seen: list[list[bytes]] = []
    source = Seen()
    source.meanwhile = lambda: seen.append(holders(url))
    with LossyRedisProxy(port_of(url)) as proxy:
        proxy.enabled = False
        start = f"EVALSHA:{sha_of(START_WITH_SLOT)}"
        proxy.hold = lambda batch: source.asked if start in proxy_labels(batch) else None
        store = Store(redis.Redis.from_url(proxy.url), PREFIX)
        assert run(store, analysis_id, CappedSource(source, cap), stale) == "done"
        assert proxy.held == [(start, False)]  # the query waited for START
    assert hint.slot is not None and seen == [[hint.slot.encode()]] and holders(url) == []


def test_a_malformed_hint_is_no_hint(url):
    _, hint = claim(url)
    for bad in ({"spec": "x"}, {"queued_at": "soon"}, {"slot": 3}, {"cap": ["x"]}):
        assert hints.read({hints.HEADER: {**hint.header(), **bad}}) is None
    assert hints.read({hints.HEADER: "not a hint"}) is None


@pytest.mark.parametrize("cap", [CAP, None], ids=["capped", "uncapped"])
def test_a_live_polls_hint_says_when_its_sequence_last_ended(url, cap):
    """For the worker to send a live poll's query as its message arrives (worker/ahead.py), the
    claim writes into the hint what the query depends on: when the canary's previous poll ended
    (or that there was none), read from the sequence in the same script."""
    kv = redis.Redis.from_url(url)
    store, sequences = Store(kv, PREFIX), SequenceStore(kv, PREFIX, 3600)
    analysis_id, first = claim(url, cap=cap, since=True)
    assert first.since == hints.NEW and first.spec["live"] is True
    assert (first.slot is not None) == (cap is not None)  # the slot's text replaced as before
    assert run(store, analysis_id, Seen(), first, sequences=sequences) == "done"
    saved, _ = sequences.load(sequence_id(spec_of(REQUEST)))
    assert saved is not None

    # The next poll of the same canary (another revision: a claim of its own).
    _, second = claim(url, {**REQUEST, "revision": "5"}, cap=cap, since=True)
    assert second.since == saved.last_end

    # A sequence saved by a version that kept no `last_end` beside its state: not known, so
    # the worker reads the sequence first, as before.
    kv.hdel(sequences.key(sequence_id(spec_of(REQUEST))), "last_end")
    _, third = claim(url, {**REQUEST, "revision": "6"}, cap=cap, since=True)
    assert third.since is None


def test_a_hint_without_since_or_with_a_bad_one_is_read_as_not_known():
    spec = spec_of(REQUEST).to_json()
    for since in (None, True, "soon", [1], {"a": 1}):
        header = {**hints.Hint(spec, time.time(), None, None).header(), "since": since}
        read = hints.read({hints.HEADER: header, "retries": 0})
        assert read is not None and read.since is None, since
    for known in (hints.NEW, 1700000000, 1700000000.5):
        header = {**hints.Hint(spec, time.time(), None, None).header(), "since": known}
        read = hints.read({hints.HEADER: header, "retries": 0})
        assert read is not None and read.since == known
