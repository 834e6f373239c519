"""Key names, laid out so that every key one Lua script touches shares a Redis Cluster hash tag.

Redis Cluster runs a script on the node owning its keys' slot; keys of different slots in one
script fail (CROSSSLOT). Only the part of a key inside `{...}` is hashed, so:

- an analysis's keys (its claim, record and lease) carry `{t}`, where `t` = SLOT_TAG_CHARS hex
  characters hashed from the claim's identity, and the analysis id *starts* with `t`: the id
  alone names the slot (GET /v1/analyses/{id}, the worker's task) and a claim's later analyses
  land beside its earlier ones (CLAIM reads the previous record);
- a rollout's verdict state and its events carry the tag of the rollout key (TRANSITION).

Single-key data (the worker set, dead letters, rate counters, step marks) needs no tag.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

# 16**4 = 65,536 tags over Redis Cluster's 16,384 slots: even spread, and short ids stay 32 hex.
SLOT_TAG_CHARS = 4


def slot_tag(name: str) -> str:
    return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:SLOT_TAG_CHARS]


def new_analysis_id(identity: str) -> str:
    """32 hex characters (the API's format): the identity's slot tag, then 112 random bits."""
    return slot_tag(identity) + uuid.uuid4().hex[SLOT_TAG_CHARS:]


def event_rollout_key(event_id: str) -> str:
    """The rollout key an event id was made from (`key#seq` for verdicts, `key!name` for
    Argo's notifications; a rollout key itself may hold '#', never '!')."""
    if "!" in event_id:
        return event_id.rpartition("!")[0]
    return event_id.rpartition("#")[0]


@dataclass(frozen=True)
class Keys:
    prefix: str

    def claim(self, identity: str) -> str:
        return f"{self.prefix}{{{slot_tag(identity)}}}claim:{identity}"

    def tagged_prefix(self, analysis_id: str) -> str:
        return f"{self.prefix}{{{analysis_id[:SLOT_TAG_CHARS]}}}"

    def record(self, analysis_id: str) -> str:
        return f"{self.prefix}{{{analysis_id[:SLOT_TAG_CHARS]}}}analysis:{analysis_id}"

    def lease(self, analysis_id: str) -> str:
        return f"{self.prefix}{{{analysis_id[:SLOT_TAG_CHARS]}}}lease:{analysis_id}"

    @property
    def record_pattern(self) -> str:
        return f"{self.prefix}{{*}}analysis:*"

    def done_channel(self, analysis_id: str) -> str:
        return f"{self.prefix}done:{analysis_id}"

    @property
    def done_pattern(self) -> str:
        return f"{self.prefix}done:*"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def followup_workers(self) -> str:
        return f"{self.prefix}followup-workers"

    def rollout_state(self, rollout_key: str) -> str:
        return f"{self.prefix}{{{slot_tag(rollout_key)}}}rollout:{rollout_key}"

    def event_prefix(self, rollout_key: str) -> str:
        """What TRANSITION prepends to the event ids it makes: the rollout's tag included."""
        return f"{self.prefix}{{{slot_tag(rollout_key)}}}event:"

    def event(self, event_id: str) -> str:
        return self.event_prefix(event_rollout_key(event_id)) + event_id

    # Before the tags (standalone Redis only): read during an upgrade, never written.
    def legacy_rollout_state(self, rollout_key: str) -> str:
        return f"{self.prefix}rollout:{rollout_key}"

    def legacy_event(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}"
