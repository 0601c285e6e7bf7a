"""Prometheus metrics and /healthz for the scheduled catch-up."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

OUTCOMES = ("applied", "noop", "duplicate", "stale", "unknown", "quarantined", "rejected")


class Metrics:
    """The catch-up job's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "projections_events",
            "Events read by scheduled catch-up, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "projections_batch_duration_seconds",
            "Time to read, fold and write one batch.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.runs = Counter(
            "projections_runs", "Catch-up ticks by result.", ["result"], registry=self.registry
        )
        self.lag_events = Gauge(
            "projections_lag_events", "Events stored after the checkpoint.", registry=self.registry
        )
        self.lag_seconds = Gauge(
            "projections_lag_seconds",
            "Event time between the checkpoint and the newest stored event.",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "projections_last_success_timestamp_seconds",
            "Unix time of the last successful catch-up.",
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.events.labels(outcome)
        self.healthy = True
        self.last_result = "none"

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def health(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of /healthz: 503 after a failed tick until one succeeds."""
        body = {
            "status": "ok" if self.healthy else "failing",
            "last_result": self.last_result,
            "last_success": self.last_success._value.get() or None,
            "time": time.time(),
        }
        return (200 if self.healthy else 503), body


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics and /healthz on a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                payload, code, kind = metrics.exposition(), 200, CONTENT_TYPE_LATEST
            elif self.path.split("?")[0] == "/healthz":
                code, body = metrics.health()
                payload, kind = orjson.dumps(body), "application/json"
            else:
                payload, code, kind = b"not found\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not worth a log line."""

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
