"""Every key one Lua script touches shares a Redis Cluster slot; ids carry their slot tag."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import cast

import fakeredis
import pytest
from redis.crc import key_slot

from analysis.policy import PolicySet
from worker.followup import Followup
from worker.keyspace import Keys, event_rollout_key, new_analysis_id, slot_tag
from worker.store import AsyncStore, Store

KEYS = Keys("ra:")
IDENTITIES = [f'{{"service":"svc-{i}","end":null}}' for i in range(200)]
ROLLOUT_KEYS = [f"shop/checkout-{i}@{i % 7}" for i in range(100)] + ["shop/svc#6d4f8b7c9a"]


def slots(*keys: str) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_analysis_ids_keep_the_api_format_and_start_with_their_claims_tag():
    for identity in IDENTITIES:
        analysis_id = new_analysis_id(identity)
        assert re.fullmatch(r"[0-9a-f]{32}", analysis_id)
        assert analysis_id.startswith(slot_tag(identity))
    assert len({new_analysis_id("same") for _ in range(1000)}) == 1000


def test_claim_record_and_lease_of_an_analysis_share_one_slot():
    for identity in IDENTITIES:
        a, b = new_analysis_id(identity), new_analysis_id(identity)  # CLAIM reads the previous
        together = slots(KEYS.claim(identity), KEYS.record(a), KEYS.lease(a), KEYS.record(b))
        assert len(together) == 1, identity
    # ...and different canaries spread over the cluster.
    assert len(slots(*(KEYS.claim(i) for i in IDENTITIES))) > 150


def test_a_rollouts_state_and_its_events_share_one_slot():
    for key in ROLLOUT_KEYS:
        verdict_event, argo_event = f"{key}#3", f"{key}!rollout-aborted"
        assert event_rollout_key(verdict_event) == key == event_rollout_key(argo_event)
        assert len(slots(KEYS.rollout_state(key), KEYS.event(verdict_event))) == 1
        assert KEYS.event(verdict_event) == KEYS.event_prefix(key) + verdict_event


def test_the_scripts_run_with_their_keys_declared_in_one_slot():
    """fakeredis runs the real Lua; the key names each script wrote all hash to one slot."""
    server = fakeredis.FakeServer()
    store, astore = (
        Store(fakeredis.FakeRedis(server=server)),
        AsyncStore(fakeredis.FakeAsyncRedis(server=server)),
    )
    claim = asyncio.run(
        astore.claim("id-1", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=0)
    )
    assert store.start(claim.analysis_id, "w", 5) == "started"
    store.finish(claim.analysis_id, "w", status="done", payload={"v": 1}, reuse_seconds=5)
    keys = cast(list[bytes], store.redis.keys("ra:*"))  # FakeRedis decodes no responses
    written = [k.decode() for k in keys if not k.endswith(b"workers")]
    assert written and len(slots(*written)) == 1, written


def followup(client: fakeredis.FakeRedis) -> Followup:
    policies = PolicySet.load(None)
    enqueued: list[object] = []
    return Followup(
        redis=client,
        prefix="ra:",
        policies=policies,
        targets={},
        enqueue=lambda task, args: enqueued.append((task, args)),
    )


RESULT = {
    "analysis_id": "a" * 32,
    "verdict": "pass",
    "service": "checkout",
    "namespace": "shop",
    "rollout": "checkout",
    "revision": "4",
    "live": True,
    "timing": {"queued_at": time.time()},
    "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z", "seconds": 300},
}


def test_a_verdict_recorded_before_the_upgrade_is_not_announced_again():
    client = fakeredis.FakeRedis()
    # The state under its pre-tag name, as the previous release left it.
    client.hset(
        "ra:rollout:shop/checkout@4",
        mapping={"analysis_id": "b" * 32, "verdict": "pass", "window_end": 1, "seq": 1},
    )
    assert followup(client).on_verdict(RESULT) is None  # same verdict: no event
    event_id = followup(client).on_verdict({**RESULT, "analysis_id": "c" * 32, "verdict": "fail"})
    assert event_id == "shop/checkout@4#2"  # the count goes on from the old state
    event = client.get(KEYS.event(event_id))
    assert event is not None
    assert json.loads(event)["previous"] == "pass"


def test_an_event_queued_before_the_upgrade_is_still_found():
    client = fakeredis.FakeRedis()
    client.set("ra:event:shop/checkout@4#1", json.dumps({"event_id": "shop/checkout@4#1"}))
    assert followup(client).event("shop/checkout@4#1") == {"event_id": "shop/checkout@4#1"}


@pytest.mark.parametrize("event_id", ["ns/r@1#2", "ns/svc#abc#2", "ns/r@1!rollout-aborted"])
def test_event_ids_name_their_rollout(event_id: str):
    assert event_rollout_key(event_id) in ("ns/r@1", "ns/svc#abc")
