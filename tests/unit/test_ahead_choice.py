"""Which query worker/ahead.py sends on a message's delivery: the one the analysis' task will
make first (run_analysis for a fixed window, run_live for a live poll), or none."""

from __future__ import annotations

import time
from typing import Any

from analysis.request import parse_request, resolve
from tests.unit.test_jobs import POLICIES, REQUEST
from worker import ahead, hints
from worker.jobs import live_seconds


class Sender:
    """A source that notes what it is asked to send ahead."""

    name = "prometheus"

    def __init__(self) -> None:
        self.sent: list[tuple[float, float | None, int]] = []

    def latest_time(self, spec: Any, now: float) -> float:
        return now

    def send_ahead(self, spec: Any, end: float, seconds: float | None = None, *, most: int) -> bool:
        self.sent.append((end, seconds, most))
        return True


def hint_for(request: dict[str, Any], since: Any = None, queued_at: float = 1700000000.4):
    spec = resolve(parse_request(request), POLICIES, now=queued_at)
    return hints.Hint(spec.to_json(), queued_at, None, None, True, since)


def test_a_fixed_window_sends_its_windows_query():
    source: Any = Sender()  # as much of a source as query_ahead uses
    hint = hint_for({**REQUEST, "end": "1699990000"})
    assert ahead.query_ahead(hint, source, POLICIES, most=8)
    assert source.sent == [(1699990000.0, None, 8)]


def test_a_live_poll_sends_the_interval_since_its_previous_poll_as_run_live_would():
    source: Any = Sender()  # as much of a source as query_ahead uses
    spec = resolve(parse_request(REQUEST), POLICIES)
    assert ahead.query_ahead(hint_for(REQUEST, hints.NEW), source, POLICIES, most=1)
    assert ahead.query_ahead(hint_for(REQUEST, 1699999940.0), source, POLICIES, most=1)
    # The end in whole seconds, as run_live takes it; the same seconds as run_live would ask.
    assert source.sent == [
        (1700000000.0, spec.window_seconds, 1),
        (1700000000.0, 60.0, 1),
    ]
    assert live_seconds(spec, 1700000000.0, None) == spec.window_seconds
    assert live_seconds(spec, 1700000000.0, 1699999940.0) == 60.0


def test_nothing_is_sent_where_the_task_would_ask_something_else_or_nothing():
    source: Any = Sender()  # as much of a source as query_ahead uses
    # The sequence's state unknown: the task reads it first.
    assert not ahead.query_ahead(hint_for(REQUEST, None), source, POLICIES, most=1)
    # Nothing new since the previous poll: the task asks no query at all.
    assert not ahead.query_ahead(hint_for(REQUEST, 1699999999.5), source, POLICIES, most=1)
    # A source that cannot send ahead (a recording).
    assert not ahead.query_ahead(hint_for(REQUEST, hints.NEW), object(), POLICIES, most=1)  # type: ignore[arg-type]
    assert source.sent == []


class Message:
    def __init__(self, headers: dict[str, Any], redelivered: bool = False) -> None:
        self.headers = headers
        self.delivery_info = {"redelivered": redelivered}


def test_a_message_that_is_not_fresh_or_not_first_sends_nothing():
    spec = resolve(parse_request({**REQUEST, "end": "1699990000"}), POLICIES)
    stale = hints.Hint(spec.to_json(), time.time() - 5, None, None).header()
    fresh = hints.Hint(spec.to_json(), time.time(), None, None).header()
    # Decided before any source is looked at: no settings or Redis needed to say no.
    assert not ahead.send_query_ahead(Message({hints.HEADER: stale, "retries": 0}), 8)
    assert not ahead.send_query_ahead(Message({hints.HEADER: fresh, "retries": 1}), 8)
    assert not ahead.send_query_ahead(Message({hints.HEADER: fresh}, redelivered=True), 8)
    assert not ahead.send_query_ahead(Message({"retries": 0}), 8)
    assert not ahead.send_query_ahead(object(), 8)


def test_only_a_pool_that_runs_the_task_in_this_process_sends_ahead():
    from celery.concurrency import prefork, solo, thread

    # Instances without their start-up: only their kind matters here.
    assert ahead.runs_here(object.__new__(thread.TaskPool))
    assert ahead.runs_here(object.__new__(solo.TaskPool))
    assert not ahead.runs_here(object.__new__(prefork.TaskPool))  # the task runs in a child
    assert not ahead.runs_here(None)
