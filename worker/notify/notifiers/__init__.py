"""The chat services we deliver to, one module each; adding one is a module and a line here."""

from __future__ import annotations

from worker.notify.notifiers.base import Notifier, PreparedRequest, Reply
from worker.notify.notifiers.dingtalk import DingTalk
from worker.notify.notifiers.discord import Discord
from worker.notify.notifiers.feishu import Feishu
from worker.notify.notifiers.generic import Generic
from worker.notify.notifiers.slack import Slack
from worker.notify.notifiers.teams import Teams
from worker.notify.notifiers.wecom import WeCom

NOTIFIERS: dict[str, Notifier] = {
    n.kind: n for n in (Slack(), Teams(), DingTalk(), WeCom(), Feishu(), Generic(), Discord())
}


def notifier_for(kind: str) -> Notifier:
    return NOTIFIERS[kind]


__all__ = ["NOTIFIERS", "Notifier", "PreparedRequest", "Reply", "notifier_for"]
