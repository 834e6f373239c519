"""Traffic actions taken after a verdict (shifting Istio VirtualService weights)."""

from worker.traffic.istio import (
    ActionRecord,
    Destination,
    TrafficTarget,
    api_client_from_settings,
    rollback,
    shift_traffic,
    step_up,
)

__all__ = [
    "ActionRecord",
    "Destination",
    "TrafficTarget",
    "api_client_from_settings",
    "rollback",
    "shift_traffic",
    "step_up",
]
