"""Addresses of the report pages (webhooks/ui), for chat messages and API answers."""

from __future__ import annotations

from urllib.parse import quote


def report_path(analysis_id: str) -> str:
    return f"/ui/analyses/{analysis_id}"


def report_url(base_url: str, analysis_id: str) -> str:
    return base_url.rstrip("/") + report_path(analysis_id)


def timeline_path(namespace: str | None, rollout: str, revision: str | None = None) -> str:
    path = f"/ui/rollouts/{quote(namespace or '-', safe='')}/{quote(rollout, safe='')}"
    return path + (f"?revision={quote(revision, safe='')}" if revision else "")


def canary_path(namespace: str | None, service: str, canary: str) -> str:
    parts = (namespace or "-", service, canary)
    return "/ui/canaries/" + "/".join(quote(p, safe="") for p in parts)
