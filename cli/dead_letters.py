"""`rollout-analyzer dead-letters list|retry|drop`: the chat deliveries that gave up.

The same operations as the webhook's /v1/dead-letters, straight on Redis and the task queue:
a retry is a task on the follow-up queue, sent by a worker through the one delivery path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from cli.output import CliError, Command, emit_json, output_option, settings


@contextmanager
def _letters() -> Iterator[Any]:
    import redis

    from worker.notify.dead_letter import DeadLetters

    current = settings()
    client = redis.Redis.from_url(current.redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        yield DeadLetters(client, key=f"{current.key_prefix}dead-letters")
    except redis.RedisError as exc:
        raise CliError(f"Redis at ROLLOUT_ANALYZER_REDIS_URL is unreachable: {exc}") from None
    finally:
        client.close()


def _enqueue_retries(ids: list[str]) -> None:
    from worker.celery_app import app
    from worker.queues import queue_for
    from worker.task_names import REDELIVER_TASK

    queue = queue_for(settings(), REDELIVER_TASK)
    for entry_id in ids:
        app.send_task(REDELIVER_TASK, args=[entry_id], queue=queue)


@click.group("dead-letters")
def dead_letters() -> None:
    """List, retry or drop chat deliveries that failed after their retries.

    Example: rollout-analyzer dead-letters list
    """


@dead_letters.command("list", cls=Command)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_option
def list_letters(limit: int, output: str) -> None:
    """Newest first: id, target, when it failed, retries so far, and why.

    Example: rollout-analyzer dead-letters list --limit 10
    """
    with _letters() as letters:
        entries = letters.list(limit)
    if output == "json":
        emit_json(entries)
        return
    if not entries:
        click.echo("no dead letters")
        return
    for entry in entries:
        failed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["failed_at"]))
        note = entry["notification"]
        what = f"{note.get('namespace')}/{note.get('rollout')} {note.get('verdict')}"
        reason = entry["result"].get("reason", "")
        click.echo(
            f"{entry['id']}  {entry['target']}  {failed}  retries={entry.get('retries', 0)}  "
            f"{what}  {reason}"
        )


@dead_letters.command("retry", cls=Command)
@click.argument("entry_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter.")
def retry(entry_id: str | None, retry_all: bool) -> None:
    """Send one dead letter (by id) or all of them again, through a worker.

    Example: rollout-analyzer dead-letters retry --all
    """
    if bool(entry_id) == retry_all:
        raise CliError("give one dead letter's id or --all (see `dead-letters list`)")
    with _letters() as letters:
        known = [entry["id"] for entry in reversed(letters.list(None))]
    ids = known if retry_all else [i for i in known if i == entry_id]
    if entry_id and not ids:
        raise CliError(f"entry_id: no dead letter {entry_id!r} (retried or dropped already?)")
    try:
        _enqueue_retries(ids)
    except Exception as exc:
        raise CliError(f"the task queue is unreachable: {exc}") from None
    click.echo(f"{len(ids)} retr{'y' if len(ids) == 1 else 'ies'} queued")


@dead_letters.command("drop", cls=Command)
@click.argument("entry_id")
def drop(entry_id: str) -> None:
    """Forget one dead letter.

    Example: rollout-analyzer dead-letters drop 3f2a…
    """
    with _letters() as letters:
        dropped = letters.drop(entry_id)
    if not dropped:
        raise CliError(f"entry_id: no dead letter {entry_id!r} (retried or dropped already?)")
    click.echo(f"dropped {entry_id}")
