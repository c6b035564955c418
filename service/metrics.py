"""Prometheus metrics in their own registry, vaeserve_ prefix, seconds and _total per convention."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 items: powers of two
SCORE_BUCKETS = (50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800, 1000, 1500, 2000, 5000)


class Metrics:
    """Every metric the service exports; one instance per app, so tests stay isolated."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("vaeserve_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.request_latency = Histogram("vaeserve_request_latency_seconds", "Time from request to response",
                                         ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("vaeserve_queue_wait_seconds", "Time items wait in a batcher queue",
                                    ["graph"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_time = Histogram("vaeserve_inference_seconds", "Time to run one batch through a graph",
                                        ["graph"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("vaeserve_batch_size_items", "Items per executed batch",
                                    ["graph"], buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queue_depth = Gauge("vaeserve_queue_depth_items", "Items waiting in a batcher queue", ["graph"], registry=r)
        self.rejections = Counter("vaeserve_rejections_total", "Requests refused, by reason", ["reason"], registry=r)
        self.anomaly_score = Histogram("vaeserve_anomaly_score_nats", "Anomaly scores served (for drift dashboards)",
                                       ["variant"], buckets=SCORE_BUCKETS, registry=r)
        self.model_info = Gauge("vaeserve_model_info", "The loaded model (value is always 1)",
                                ["name", "version", "backend", "device"], registry=r)
        self.ready = Gauge("vaeserve_ready", "1 when the model is verified, warmed up and serving", registry=r)

    def set_model(self, *, name: str, version: str, backend: str, device: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version, backend=backend, device=device).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
