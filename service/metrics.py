"""Prometheus metrics: one registry per app, so several apps (tests) never share counters."""

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ssdlite_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "ssdlite_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "ssdlite_inference_duration_seconds",
            "time of one inference call (a whole batch)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "ssdlite_inference_batch_size",
            "images per inference call",
            buckets=[b for b in (1, 2, 4, 8, 16, 32, 64) if b < max_batch_size] + [max_batch_size],
            registry=self.registry,
        )
        self.queue_depth = Gauge("ssdlite_queue_depth", "images waiting for inference", registry=self.registry)
        self.ws_frames = Counter(
            "ssdlite_ws_frames",
            "WebSocket frames by outcome (answered, dropped as stale, error)",
            ["outcome"],
            registry=self.registry,
        )
        self.ready = Gauge("ssdlite_ready", "1 once the model is loaded and warmed up", registry=self.registry)

    def observe_batch(self, size: int, seconds: float):
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class HTTPMetricsMiddleware:
    """Counts every HTTP response by its route template (not the raw path, to bound label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "<unmatched>"
            self.metrics.requests.labels(name, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
