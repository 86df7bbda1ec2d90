"""Prometheus metrics of one app instance (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pix2pix_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pix2pix_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "pix2pix_batch_size",
            "Inputs per inference batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "pix2pix_inference_seconds",
            "Time of one inference batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "pix2pix_queue_depth", "Requests waiting per model", ["model"], registry=self.registry
        )
        self.load_seconds = Gauge(
            "pix2pix_model_load_seconds",
            "Seconds taken to load each model",
            ["model"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "pix2pix_model_ready", "1 when the model serves", ["model"], registry=self.registry
        )
