"""Which queue a task goes to: analyses on their own, everything that follows a verdict on another.

A chat service that answers slowly or 429s can then fill only the follow-up queue; workers
consume both by default (`rollout-analyzer worker`), or one each (`--queues`, deploy/).
"""

from __future__ import annotations

from worker.settings import Settings
from worker.task_names import ACT_TASK, ARGO_EVENT_TASK, NOTIFY_TASK, REDELIVER_TASK

FOLLOWUP_TASKS = frozenset({ACT_TASK, NOTIFY_TASK, ARGO_EVENT_TASK, REDELIVER_TASK})
# A traffic action goes on the follow-up queue's first list (kombu's priority 0), chat (a
# message, or a dead letter sent again) on its last: a worker whose follow-up slots are all
# taken (worker/broker.py) still reads actions, so a rollback never waits behind chat
# deliveries hanging for their timeout.
CHAT_PRIORITY = 9
CHAT_TASKS = frozenset({NOTIFY_TASK, REDELIVER_TASK})


def queue_for(settings: Settings, task: str) -> str:
    return settings.followups if task in FOLLOWUP_TASKS else settings.queue


def consumed(settings: Settings, which: str) -> list[str]:
    """The queues a worker started with `--queues which` (all, analyses, followups) reads."""
    return {
        "all": [settings.queue, settings.followups],
        "analyses": [settings.queue],
        "followups": [settings.followups],
    }[which]


def priority_for(task: str) -> int | None:
    """kombu's priority for a task (None: the default, the first list)."""
    return CHAT_PRIORITY if task in CHAT_TASKS else None
