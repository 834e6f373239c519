"""What an analysis task's message tells its worker before START answers.

START (worker/store.py) is a round trip before the worker may trust its claim on an analysis;
the PromQL query it then sends needs only the analysis' spec and, where queries are capped, a
query slot (a live poll: also when its canary's previous poll ended). The webhook knows these
when it claims: it puts them in the task's message (a Celery header, which a worker that
predates it ignores), and the claim script takes the slot for it and reads the sequence into it
(`since`). A worker holding such a message sends the query as it reads the message
(worker/ahead.py) and START as the task begins, and reads START's answer before it writes
anything (a sequence, a result): a message whose analysis turns out to be someone else's costs
one query, never a record (worker/jobs.py, `execute`).

A hint is used only on a message's first delivery, fresh from its claim: a retried task, a
message put back on the queue, or one that waited long has START answer first, as before.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from worker.query_cap import SlotRequest, cap_key
from worker.settings import Settings

HEADER = "ra_hint"
# A message older than this (by the webhook's clock against the worker's) is not trusted ahead
# of START: its slot may be near the end of its lease.
FRESH_SECONDS = 1.0
# The lease of the slot a claim takes: a worker using it sends START first, which leases it
# again for the query's time (the worker's own lease); one that cannot use it gives it back.
# What is left is the slot of a task whose worker died before START, or whose message waited
# in a busy worker: free again after this, not after the query's lease (30 s). It covers a
# fresh message (under FRESH_SECONDS) and clocks a few seconds apart.
CLAIM_SLOT_SECONDS = 5.0


@dataclass(frozen=True)
class Hint:
    spec: dict[str, Any]
    queued_at: float
    # The holder of the query slot the claim took for this analysis (None: it took none).
    slot: str | None
    cap: str | None  # the cap's key the slot is in
    # Whether the query may go before START answers: a first delivery, fresh from its claim.
    # Otherwise START answers first, and takes the claim's slot (still held, or again) as its
    # own, so a slot is never held twice for one analysis.
    ahead: bool = True
    # A live poll's sequence as its claim found it: when its previous poll ended, NEW (no
    # sequence yet), or None (not known: the worker reads it first). See worker/ahead.py.
    since: float | str | None = None

    def header(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "queued_at": self.queued_at,
            "slot": self.slot,
            "cap": self.cap,
            "since": self.since,
        }

    def slot_marker(self) -> tuple[str, str]:
        """The slot's text in the message as orjson writes it, and what replaces it when the
        claim could take no slot: the claim script edits the message it pushes."""
        return f'"slot":{orjson.dumps(self.slot).decode()}', '"slot":null'


# The hint's text the claim script replaces for a live poll: `"since":<seconds>` where its
# sequence says when the previous poll ended, SINCE_NEW where there is no sequence yet.
SINCE_UNKNOWN = '"since":null'
NEW = "new"
SINCE_NEW = f'"since":"{NEW}"'


def for_claim(
    spec: dict[str, Any], queued_at: float, cap: tuple[str, int, int] | None
) -> tuple[Hint, SlotRequest | None]:
    """The hint of a new claim's task, and the query slot the claim should take for it (a new
    holder of `cap`, from `cap_of`, leased CLAIM_SLOT_SECONDS at most; None: uncapped)."""
    if cap is None:
        return Hint(spec, queued_at, None, None), None
    key, limit, lease_ms = cap
    lease_ms = min(lease_ms, int(CLAIM_SLOT_SECONDS * 1000))
    slot = SlotRequest(key, limit, uuid.uuid4().hex, lease_ms)
    return Hint(spec, queued_at, slot.holder, key), slot


def cap_of(settings: Settings) -> tuple[str, int, int] | None:
    """The query cap the workers run under, as (key, limit, slot lease ms); None: uncapped."""
    limit = settings.prometheus_max_concurrent_queries
    if not limit or settings.recording or not settings.prometheus_url:
        return None
    lease_ms = max(1, int(settings.task_soft_time_limit * 1000))
    return cap_key(settings.key_prefix, settings.prometheus_url), limit, lease_ms


def read(request: Any, now: float | None = None) -> Hint | None:
    """The hint of a Celery task request (None: none, or not one of ours); `ahead` says
    whether it may be used ahead of START."""
    value = request.get(HEADER)
    if not isinstance(value, dict):
        return None
    spec, queued_at = value.get("spec"), value.get("queued_at")
    slot, cap, since = value.get("slot"), value.get("cap"), value.get("since")
    if not isinstance(spec, dict) or not isinstance(queued_at, int | float):
        return None
    if not (slot is None or isinstance(slot, str)) or not (cap is None or isinstance(cap, str)):
        return None
    if isinstance(since, bool) or not (since in (None, NEW) or isinstance(since, int | float)):
        since = None
    delivery = request.get("delivery_info") or {}
    again = bool(request.get("retries") or request.get("redelivered"))
    again = again or (isinstance(delivery, dict) and bool(delivery.get("redelivered")))
    age = (time.time() if now is None else now) - queued_at
    ahead = not again and -FRESH_SECONDS < age < FRESH_SECONDS
    return Hint(spec, float(queued_at), slot, cap, ahead, since)
