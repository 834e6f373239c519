"""Report pages for people: an analysis, a rollout's timeline, the recent rollouts."""

from webhooks.ui.routes import ui_router

__all__ = ["ui_router"]
