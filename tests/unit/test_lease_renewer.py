"""The one lease-renewing thread of a worker process (worker/jobs.py): every running analysis is
renewed a few times per lease period, leases added while it sleeps included; none after its
analysis ends."""

from __future__ import annotations

import threading
import time
from collections import Counter

from worker.jobs import LeaseRenewer, lease_kept


class CountingStore:
    """Counts renewals per analysis (the renewal itself is the store's, tested elsewhere)."""

    def __init__(self) -> None:
        self.renewals: Counter[str] = Counter()
        self.lock = threading.Lock()

    def renew(self, analysis_id: str, worker: str, lease_seconds: float) -> bool:
        with self.lock:
            self.renewals[analysis_id] += 1
        return True


def test_each_lease_is_renewed_on_time_and_none_after_its_analysis(monkeypatch) -> None:
    renewer = LeaseRenewer()
    monkeypatch.setattr("worker.jobs._renewer", renewer)
    store = CountingStore()
    with lease_kept(store, "long", "w", 1.2) as long_lease:  # type: ignore[arg-type]
        time.sleep(0.1)  # the thread now sleeps until the long lease is due (at 0.4 s)
        with lease_kept(store, "short", "w", 0.15) as short_lease:  # type: ignore[arg-type]
            time.sleep(0.35)
            # Renewed every 0.05 s from the start, not first when the long one was due.
            assert not short_lease.lost
        after_short = store.renewals["short"]
        time.sleep(0.45)
        assert not long_lease.lost
    ended = dict(store.renewals)
    time.sleep(0.3)
    assert store.renewals["long"] >= 2  # at 0.4 and 0.8 s
    assert after_short >= 5
    assert store.renewals["short"] <= after_short + 1  # none once its analysis ended
    assert dict(store.renewals) == ended  # and none for either after both ended


def test_an_idle_renewer_renews_nothing(monkeypatch) -> None:
    renewer = LeaseRenewer()
    monkeypatch.setattr("worker.jobs._renewer", renewer)
    store = CountingStore()
    with lease_kept(store, "quick", "w", 6.0):  # type: ignore[arg-type]
        pass  # an analysis of a few ms: its first renewal would be due in 2 s
    time.sleep(0.2)
    assert store.renewals == Counter()
