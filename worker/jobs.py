"""Running one analysis by id: the body of the Celery task, also used in-process by the demo.

Idempotent: a second delivery of the same id finds it done (or held by a live worker) and
returns; a delivery after its worker died takes it over. A worker that loses its lease (a
renewal refused, or none confirmed for a whole lease period) stops: it records nothing and
runs no follow-up, since another worker may hold the analysis by then.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from analysis.observation import Observation, SideCounts
from analysis.policy import PolicySet
from analysis.report import live_report, run_analysis
from analysis.request import AnalysisSpec, RequestError
from analysis.sequential import Poll, advance
from analysis.sources import MetricsSource, SourceError
from worker import tracing
from worker.hints import Hint
from worker.history import History
from worker.query_cap import CappedSource, holding, slot_request
from worker.sequences import SequenceStore, sequence_id
from worker.store import Store

log = logging.getLogger("rollout_analyzer.worker")
# A live poll whose sequence save lost a race waits this long before trying again, doubling.
CAS_PAUSE_SECONDS = 0.001
CAS_PAUSE_MAX_SECONDS = 0.02


class Lease:
    """What the renewals learnt: whether this worker still holds the analysis."""

    def __init__(self, store: Store, analysis_id: str, worker: str, lease_seconds: float) -> None:
        self.store = store
        self.analysis_id = analysis_id
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.confirmed_at = time.monotonic()  # START just set it
        self.due = self.confirmed_at + lease_seconds / 3
        self.refused = threading.Event()
        self.ended = False  # the body is over: no renewal after it (FINISH removed the lease)

    @property
    def lost(self) -> bool:
        # Unconfirmed for a whole period, the lease may have lapsed and another worker taken it.
        expired = time.monotonic() - self.confirmed_at >= self.lease_seconds
        return self.refused.is_set() or expired

    def renew(self) -> None:
        try:
            if not self.store.renew(self.analysis_id, self.worker, self.lease_seconds):
                self.refused.set()
                log.warning("lease lost", extra={"analysis_id": self.analysis_id})
                return
            self.confirmed_at = time.monotonic()
        except Exception:  # a blip in Redis must not kill the analysis; the next renew may work
            log.warning("lease renewal failed", extra={"analysis_id": self.analysis_id})
        self.due = time.monotonic() + self.lease_seconds / 3


class LeaseRenewer:
    """One thread per process renews the leases of every analysis running in it, a few times
    per lease period (a thread per analysis cost ~0.1 ms of CPU each, for renewals that an
    analysis of a few milliseconds never needs)."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._asleep_until = math.inf  # when the thread wakes next by itself

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
                self._thread.start()
            # Leases share one period, so a new one is rarely due before the next wake: only
            # then wake the thread (a wake per analysis cost more than its renewals).
            if lease.due < self._asleep_until:
                self._wake.notify()

    def remove(self, lease: Lease) -> None:
        with self._lock:
            lease.ended = True
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.due <= now]
                if not due:
                    # Until the next lease is due; with none, until one is added.
                    wake = min((lease.due for lease in self._leases), default=math.inf)
                    self._asleep_until = wake
                    self._wake.wait(None if wake == math.inf else max(0.01, wake - now))
                    self._asleep_until = -math.inf  # awake: a lease added now is seen anyway
                    continue
            for lease in due:  # outside the lock: a slow Redis never blocks add/remove
                if not (lease.ended or lease.refused.is_set()):
                    lease.renew()


_renewer = LeaseRenewer()


@contextmanager
def lease_kept(
    store: Store, analysis_id: str, worker: str, lease_seconds: float
) -> Iterator[Lease]:
    """Renew the lease a few times per lease period while the body runs."""
    lease = Lease(store, analysis_id, worker, lease_seconds)
    _renewer.add(lease)
    try:
        yield lease
    finally:
        _renewer.remove(lease)


class NotStarted(Exception):
    """START, read after the query sent ahead of it, did not start the analysis here."""

    def __init__(self, state: str, record: dict[str, Any] | None) -> None:
        super().__init__(state)
        self.state = state
        self.record = record


def run_live(
    spec: AnalysisSpec,
    source: MetricsSource,
    sequences: SequenceStore,
    end: float,
    deadline: float,
    before_save: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """One live poll: the interval since the canary's previous poll, added to its sequence.

    One PromQL round trip (none when the poll adds no new time: a retry or a stale request).
    The save is a compare-and-set: a poll that raced another re-reads and tries again, after a
    short random pause, until `deadline` (monotonic): N polls of one canary at once take N
    rounds, and a fixed number of tries failed the rest of a burst's polls. `before_save` runs
    before the first save (it raises when the poll is not this worker's to record).
    """
    seq_id = sequence_id(spec)
    end = float(int(end))  # whole seconds: PromQL ranges and offsets take no fractions
    pause = CAS_PAUSE_SECONDS
    while True:
        state, version = sequences.load(seq_id)
        seconds = live_seconds(spec, end, None if state is None else state.last_end)
        if seconds is None:
            observation = Observation(end, 0.0, SideCounts(), SideCounts(), (), 0, source.name)
        else:
            observation = source.observe(spec, end, deadline, seconds)
        poll = Poll(end, observation.window_seconds, observation.canary, observation.baseline)
        result = advance(state, poll, spec.policy)
        before_save()
        if sequences.save(seq_id, result.sequence, version):
            return live_report(spec, observation, result, seq_id)
        if time.monotonic() + pause >= deadline:
            raise SourceError("another poll of this canary kept changing its sequence; try again")
        time.sleep(pause * random.uniform(0.5, 1.5))  # spread the racing polls apart
        pause = min(CAS_PAUSE_MAX_SECONDS, pause * 2)


def live_seconds(spec: AnalysisSpec, end: float, last_end: float | None) -> float | None:
    """What a live poll ending at `end` queries: the spec's window for a new sequence, else the
    time since the previous poll; None when that adds no new time (no query at all)."""
    if last_end is None:
        return spec.window_seconds
    return None if end - last_end < 1 else end - last_end


Begun = tuple[str, dict[str, Any] | None, str | None]  # START's answer: see Store.begin


def execute(
    store: Store,
    analysis_id: str,
    *,
    worker: str,
    source: MetricsSource,
    policies: PolicySet,
    lease_seconds: float,
    reuse_seconds: float,
    budget_seconds: float,
    after: Callable[[dict[str, Any]], object] | None = None,
    sequences: SequenceStore | None = None,
    history: History | None = None,
    hint: Hint | None = None,
) -> str:
    """Compute and record one analysis; returns what happened (started/done/taken/…).

    With a usable `hint` (worker/hints.py) START is sent and the query with it; START's answer
    is read before anything is written. Without one, START answers first and takes the
    query's slot along where it can. A done analysis goes on its rollout's timeline
    (`history`, the report pages), then to `after` (its event)."""
    spec_data: Any
    confirmed: list[str] = []  # START's answer, once read and found "started"
    if hint is not None and hint.slot and hint.cap and claimed_slot(hint, source) is None:
        # The claim took a slot of a cap this worker does not query under: not held idle.
        store.give_back_slot(hint.cap, hint.slot)
    if hint is not None and hint.ahead and usable(hint, store, source):
        # START leases the claim's slot again, for as long as the query may take.
        begun = store.begin_sent(
            analysis_id, worker, lease_seconds, slot_request(source, hint.slot)
        )
        spec_data, queued_at, held = hint.spec, hint.queued_at, hint.slot
    else:
        # START takes the query's slot too where it can: one round trip less (query_cap.py);
        # the slot the claim took for it, if any, under the same holder (never a second one).
        slot = slot_request(source, claimed_slot(hint, source)) if store.on_one_node else None
        answer = store.begin(analysis_id, worker, lease_seconds, slot)
        state, found, held = answer
        tracing.set_attributes({"analysis.id": analysis_id, "analysis.worker_state": state})
        if state != "started":
            return skipped(analysis_id, state, found, after, history)
        record: dict[str, Any] = found or {}
        spec_data, queued_at = record.get("spec"), float(record.get("queued_at", time.time()))
        confirmed.append(state)  # read above, its attributes set: nothing left to confirm

        def begun() -> Begun:
            return answer

    def confirm() -> None:
        if confirmed:
            return
        state, found, _ = begun()
        tracing.set_attributes({"analysis.id": analysis_id, "analysis.worker_state": state})
        if state != "started":
            raise NotStarted(state, found)
        confirmed.append(state)

    try:
        return compute(
            store,
            analysis_id,
            spec_data,
            queued_at,
            confirm,
            worker=worker,
            source=source,
            held=held,
            policies=policies,
            lease_seconds=lease_seconds,
            reuse_seconds=reuse_seconds,
            budget_seconds=budget_seconds,
            after=after,
            sequences=sequences,
            history=history,
        )
    except NotStarted as not_here:
        return skipped(analysis_id, not_here.state, not_here.record, after, history)
    finally:
        begun()  # read: its connection goes back to the pool


def usable(hint: Hint | None, store: Store, source: MetricsSource) -> bool:
    """Whether the query may go before START's answer: with the slot the claim took for it
    in this worker's cap, or under no cap (and START a script on one Redis)."""
    if hint is None or not store.on_one_node:
        return False
    if isinstance(source, CappedSource):
        return hint.slot is not None and hint.cap == source.cap.key
    return True


def claimed_slot(hint: Hint | None, source: MetricsSource) -> str | None:
    """The holder of the slot the claim took for the analysis, in this worker's cap."""
    if hint is None or not isinstance(source, CappedSource) or hint.cap != source.cap.key:
        return None
    return hint.slot


def skipped(
    analysis_id: str,
    state: str,
    found: dict[str, Any] | None,
    after: Callable[[dict[str, Any]], object] | None,
    history: History | None,
) -> str:
    """An analysis START did not start here: done, taken, superseded, error or missing."""
    log.info("analysis skipped", extra={"analysis_id": analysis_id, "state": state})
    result = (found or {}).get("result")
    if state == "done" and after is not None and isinstance(result, dict) and "verdict" in result:
        # A redelivery after the follow-up may have been cut short: offer it again;
        # the follow-up is idempotent per event and step, a poll's line per poll.
        if history is not None:
            history.poll(result)
        after(result)
    return state


def compute(
    store: Store,
    analysis_id: str,
    spec_data: Any,
    queued_at: float,
    confirm: Callable[[], None],
    *,
    worker: str,
    source: MetricsSource,
    held: str | None,
    policies: PolicySet,
    lease_seconds: float,
    reuse_seconds: float,
    budget_seconds: float,
    after: Callable[[dict[str, Any]], object] | None,
    sequences: SequenceStore | None,
    history: History | None,
) -> str:
    """The analysis' query, verdict and FINISH; `confirm` raises NotStarted before the first
    write if START did not start it here."""
    # START's slot goes back as the query answers, Redis' reply to that read after FINISH:
    # neither waits on the way to the verdict.
    with holding(source, held) as source:
        started = time.time()
        deadline = time.monotonic() + budget_seconds
        status, payload = "done", {}
        end: float | None = None
        with lease_kept(store, analysis_id, worker, lease_seconds) as lease:
            try:
                if not isinstance(spec_data, dict):
                    raise KeyError("the analysis has no spec")
                spec = AnalysisSpec.from_json(spec_data, policies)
                end = spec.end if spec.end is not None else source.latest_time(spec, queued_at)
                with tracing.statistics_timed(source) as timed_source:
                    # A live poll (a window ending "now") joins its canary's sequence; a look at
                    # the past is one fixed window.
                    if sequences is not None and spec.live:
                        payload = run_live(spec, timed_source, sequences, end, deadline, confirm)
                    else:
                        payload = run_analysis(spec, timed_source, end=end, deadline=deadline)
            except (SourceError, RequestError, KeyError, ValueError) as exc:
                status = "error"
                payload = {"error": str(exc)[:1000]}
        confirm()
        if lease.lost:
            log.warning("analysis dropped: lease lost", extra={"analysis_id": analysis_id})
            return "lost"
        finished = time.time()
        payload["analysis_id"] = analysis_id
        payload["timing"] = {
            "queued_at": queued_at,
            "window_end": end,
            "started_at": started,
            "finished_at": finished,
            "queue_wait_seconds": round(started - queued_at, 6),
            "duration_seconds": round(finished - started, 6),
        }
        tracing.set_attributes(tracing.analysis_attributes(payload))
        # FINISH draws the poll's line on the timeline too where it can: one round trip less.
        line = None
        if history is not None and status == "done" and store.on_one_node:
            line = history.entry(payload)
        outcome = store.finish(
            analysis_id,
            worker,
            status=status,
            payload=payload,
            reuse_seconds=reuse_seconds,
            poll=line,
        )
        if outcome != "ok":
            # FINISH refused: the lease lapsed between the check above and the script.
            log.warning("analysis dropped", extra={"analysis_id": analysis_id, "state": outcome})
            return "lost"
    log.info(
        "analysis finished",
        extra={
            "analysis_id": analysis_id,
            "service": payload.get("service"),
            "rollout": payload.get("rollout"),
            "verdict": payload.get("verdict"),
            "status": status,
            "error": payload.get("error"),
            "duration_seconds": payload["timing"]["duration_seconds"],
            "queue_wait_seconds": payload["timing"]["queue_wait_seconds"],
            "round_trips": (payload.get("source") or {}).get("round_trips"),
        },
    )
    if status == "done":
        try:
            if history is not None:
                history.poll(payload, recorded=line is not None)
            if after is not None:
                after(payload)
        except Exception:  # the verdict stands; a redelivery or the next poll retries the event
            log.exception("follow-up failed", extra={"analysis_id": analysis_id})
    return status
