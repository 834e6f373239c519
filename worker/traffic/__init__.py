"""Traffic actions taken after a verdict, through a router (Istio VirtualService or Gateway API
HTTPRoute): `router` is the interface, `shift` the engine, `policy` picks the router."""

from worker.traffic.gateway_api import Backend, HTTPRouteTarget
from worker.traffic.istio import Destination, TrafficTarget
from worker.traffic.kube import api_client_from_settings
from worker.traffic.router import Router
from worker.traffic.shift import ActionRecord, rollback, shift_traffic, step_up

__all__ = [
    "ActionRecord",
    "Backend",
    "Destination",
    "HTTPRouteTarget",
    "Router",
    "TrafficTarget",
    "api_client_from_settings",
    "rollback",
    "shift_traffic",
    "step_up",
]
