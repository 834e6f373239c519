"""Celery task names, shared by the webhook (which enqueues) and the worker (which runs)."""

ANALYZE_TASK = "rollout_analyzer.analyze"
ACT_TASK = "rollout_analyzer.act"
NOTIFY_TASK = "rollout_analyzer.notify"
ARGO_EVENT_TASK = "rollout_analyzer.argo_event"
REDELIVER_TASK = "rollout_analyzer.redeliver"
