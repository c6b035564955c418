"""Prometheus metrics in their own registry, vaeserve_ prefix, seconds and _total per convention.

With several workers (service.server.workers sets PROMETHEUS_MULTIPROC_DIR before they start) each process
writes its values to files there and /metrics, whichever worker answers, merges every worker's
files: the same names and labels, counters summed; gauges as each says (multiprocess_mode).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 items: powers of two
SCORE_BUCKETS = (50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800, 1000, 1500, 2000, 5000)


class Metrics:
    """Every metric the service exports; one instance per app, so tests stay isolated."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r: CollectorRegistry | None = self.registry
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if self.multiprocess:  # the metrics are read from the files; registered here too they would show twice
            MultiProcessCollector(self.registry)
            r = None
        self.requests = Counter("vaeserve_requests_total", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.request_latency = Histogram("vaeserve_request_latency_seconds", "Time from request to response",
                                         ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        # Per (model, version, graph): bounded by the loaded versions (children go when one unloads).
        graph_labels = ["model", "version", "graph"]
        self.queue_wait = Histogram("vaeserve_queue_wait_seconds", "Time items wait in a batcher queue",
                                    graph_labels, buckets=LATENCY_BUCKETS_S, registry=r)
        self.inference_time = Histogram("vaeserve_inference_seconds", "Time to run one batch through a graph",
                                        graph_labels, buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("vaeserve_batch_size_items", "Items per executed batch",
                                    graph_labels, buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queue_depth = Gauge("vaeserve_queue_depth_items", "Items waiting in a batcher queue", graph_labels, registry=r,
                                 multiprocess_mode="livesum")
        self.rejections = Counter("vaeserve_rejections_total", "Requests refused, by reason", ["reason"], registry=r)
        self.accept_errors = Counter("vaeserve_accept_errors_total", "Failed accept() calls, by errno (EMFILE: out of "
                                     "descriptors)", ["reason"], registry=r)
        self.client_disconnects = Counter("vaeserve_client_disconnects_total", "Requests whose client went away "
                                          "before the answer (status 499 in vaeserve_requests_total; not errors)",
                                          registry=r)
        self.anomaly_score = Histogram("vaeserve_anomaly_score_nats", "Anomaly scores served (for drift dashboards)",
                                       ["model", "version", "variant"], buckets=SCORE_BUCKETS, registry=r)
        self.model_info = Gauge("vaeserve_model_info", "A loaded model version (value is always 1)",
                                ["name", "version", "backend", "device"], registry=r, multiprocess_mode="livemax")
        # Summed over workers: each holds its own copy (VAESERVE_MAX_LOADED_BYTES is per process).
        self.model_memory = Gauge("vaeserve_model_memory_bytes", "Resident memory a loaded model version added "
                                  "when it loaded (measured: service/core/memory.py)", ["model", "version"],
                                  registry=r, multiprocess_mode="livesum")
        # With several workers: 1 only when every live worker is ready.
        self.ready = Gauge("vaeserve_ready", "1 when the model is verified, warmed up and serving", registry=r,
                           multiprocess_mode="livemin")
        # Autoscaling (deploy/k8s/custom-metrics) and per-key quotas (service/http/quotas.py: key *names*, never keys).
        self.in_flight = Gauge("vaeserve_in_flight_requests", "Requests being handled (probes and scrapes excluded)",
                               registry=r, multiprocess_mode="livesum")
        self.key_requests = Counter("vaeserve_key_requests_total", "Requests admitted per API key name", ["key"],
                                    registry=r)
        self.key_item_samples = Counter("vaeserve_key_item_samples_total", "Items x Monte Carlo samples admitted "
                                        "per API key name", ["key"], registry=r)
        self.key_refusals = Counter("vaeserve_key_quota_refusals_total", "Requests refused over a key's quota, by "
                                    "key name and limit (requests, item_samples)", ["key", "limit"], registry=r)
        self.model_requests = Counter("vaeserve_model_requests_total", "Requests served per model version "
                                      "(canary shares)", ["model", "version"], registry=r)
        self.models_loaded = Gauge("vaeserve_models_loaded", "Model versions loaded and warm", registry=r,
                                   multiprocess_mode="livemin")
        self.model_loads = Counter("vaeserve_model_loads_total", "Model version loads, by outcome",
                                   ["model", "outcome"], registry=r)
        self.model_load_time = Histogram("vaeserve_model_load_seconds", "Time to verify, load and warm a version",
                                         buckets=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0), registry=r)
        self.model_unloads = Counter("vaeserve_model_unloads_total", "Model versions unloaded, by reason",
                                     ["reason"], registry=r)
        self.shadow_requests = Counter("vaeserve_shadow_requests_total", "Requests mirrored to a shadow version, by "
                                       "outcome (computed, dropped under load, failed)", ["model", "version", "outcome"],
                                       registry=r)
        self.shadow_score = Histogram("vaeserve_shadow_score_nats", "Scores a shadow version computed (never served)",
                                      ["model", "version"], buckets=SCORE_BUCKETS, registry=r)
        self.shadow_difference = Histogram("vaeserve_shadow_score_difference_nats",
                                           "|shadow score - served score| per item", ["model", "version"],
                                           buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 500), registry=r)

    def model_loaded(self, *, name: str, version: str, backend: str, device: str,
                     memory_bytes: int | None = None) -> None:
        self.model_info.labels(name=name, version=version, backend=backend, device=device).set(1)
        if memory_bytes is not None:
            self.model_memory.labels(model=name, version=version).set(memory_bytes)

    def model_unloaded(self, *, name: str, version: str, graphs: list[str]) -> None:
        """Drop the version's series so label sets stay bounded by what is loaded."""
        if self.multiprocess:  # prometheus-client cannot remove series from the files: the gauges say 0
            for labels in list(self.model_info._metrics):  # noqa: SLF001
                if labels[:2] == (name, version):
                    self.model_info.labels(*labels).set(0)
            for graph in graphs:
                self.queue_depth.labels(name, version, graph).set(0)
            self.model_memory.labels(name, version).set(0)
            return
        for metric in (self.queue_wait, self.inference_time, self.batch_size, self.queue_depth):
            for graph in graphs:
                _remove(metric, name, version, graph)
        for labels in list(self.model_info._metrics):  # noqa: SLF001 - prometheus-client has no remove-by-prefix
            if labels[:2] == (name, version):
                self.model_info.remove(*labels)
        for labels in list(self.anomaly_score._metrics):  # noqa: SLF001
            if labels[:2] == (name, version):
                self.anomaly_score.remove(*labels)
        _remove(self.model_requests, name, version)
        _remove(self.model_memory, name, version)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
