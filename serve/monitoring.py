"""Prometheus metrics: requests by endpoint and status, prediction latency, rejected inputs by reason."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("flowerlab_http_requests", "HTTP requests by endpoint and status code",
                   ["endpoint", "status"])
PREDICTION_SECONDS = Histogram("flowerlab_prediction_seconds",
                               "Time to decode, preprocess and classify one accepted upload",
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
REJECTED = Counter("flowerlab_rejected_inputs", "Requests rejected for their input, by reason", ["reason"])


def metrics_response() -> Response:
    """The default registry in Prometheus' text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Count every HTTP response by route template (bounded label values) and status code."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception escaping the app becomes a 500 further out

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            REQUESTS.labels(endpoint_label(scope), str(status)).inc()


def endpoint_label(scope: Scope) -> str:
    """The route template; raw paths from scanners would make the label values unbounded."""
    route = scope.get("route")  # set by the router; absent when a middleware answered first
    if route is not None:
        return route.path
    known = {getattr(r, "path", None) for r in scope["app"].routes}
    return scope["path"] if scope["path"] in known else "unmatched"
