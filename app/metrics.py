"""Prometheus metrics of one app instance (its own registry, so tests can run several)."""

from __future__ import annotations

import contextlib

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
        self.image_queue_depth = Gauge(
            "pix2pix_image_queue_depth",
            "Image jobs (decode, prepare, blend, encode) waiting for an image worker thread",
            registry=self.registry,
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
        self.queue_wait = Histogram(
            "pix2pix_queue_wait_seconds",
            "Time an input waits in its model's queue before its batch runs",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_requests = Counter(
            "pix2pix_model_requests",
            "Translate requests per served model, by HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "pix2pix_model_version_info",
            "1 for the version each model serves now",
            ["model", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "pix2pix_model_reloads",
            "Model folder changes handled, by outcome (added, replaced, removed, failed)",
            ["model", "outcome"],
            registry=self.registry,
        )

        self._versions: dict[str, str] = {}

    def show_version(self, name: str, version: str) -> None:
        """Make ``version`` the one series of ``pix2pix_model_version_info`` for ``name``."""
        previous = self._versions.pop(name, None)
        if previous is not None and previous != version:
            self.model_version.remove(name, previous)
        self.model_version.labels(name, version).set(1)
        self._versions[name] = version

    def forget_model(self, name: str) -> None:
        """Drop the gauges of a model that is no longer served (counters keep their history)."""
        for gauge in (self.model_ready, self.load_seconds, self.queue_depth):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        previous = self._versions.pop(name, None)
        if previous is not None:
            self.model_version.remove(name, previous)
