"""One settings object for the service, read from VAESERVE_* variables; built by the caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix="VAESERVE_", extra="ignore")

    artifacts_dir: Path = Field(Path("artifacts"), description="folder written by `vaeserve export` (one model; "
                                                               "ignored when model_repository is set)")
    model_repository: Path | None = Field(None, description="many models: <dir>/<model>/<version>/manifest.json "
                                                            "(`vaeserve export --repository`)")
    default_model: str | None = Field(None, description="the model the un-prefixed routes serve (default: the only one)")
    preload: str = Field("all", description="models loaded at start: all, none, or comma-separated names; "
                                            "the others load on their first request")
    lazy_load_wait: bool = Field(True, description="a request to a model that is not loaded waits for it to load "
                                                   "and warm (false: 503 with Retry-After at once)")
    max_loaded_models: int = Field(0, ge=0, description="model versions kept loaded, least recently used unloaded "
                                                        "first (0: no limit)")
    max_loaded_bytes: int = Field(0, ge=0, description="resident memory the loaded model versions may hold together "
                                  "(each version's measured size, GET /models), least recently used unloaded first, "
                                  "never one with requests in flight (0: no limit; with a model_repository)")
    share_weights: bool | None = Field(None, description="one copy of each weight for all of a model's graphs "
                                       "(ONNX Runtime): ~40% less memory per float32 model, numbers within float32 "
                                       "rounding, batch-1 scorer runs ~25% slower (docs/performance.md); unset: on "
                                       "with a model_repository and float32 precision")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    server: Literal["uvicorn", "granian"] = Field("uvicorn", description="HTTP server: uvicorn, or Granian (the "
                                                  "`granian` extra; docs/operations.md says what differs)")
    workers: int = Field(1, ge=1, description="server processes sharing the port (SO_REUSEPORT), each with its own "
                                              "models and batchers; metrics merged in one /metrics")
    backend: Literal["onnxruntime", "torchscript"] = Field("onnxruntime", description="inference engine")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when the backend can use it")
    precision: Literal["float32", "int8"] = Field("float32", description="graphs to run: float32, or the int8 ones of "
                                                  "`vaeserve export --quantize int8` (ONNX Runtime only; a model "
                                                  "exported without them does not load)")
    max_batch_size: int = Field(256, ge=1, description="items per executed batch; 1 turns batching off")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, description="how long a batch waits for more items under load (a lone request never waits)"
    )
    batch_wait_when_idle: bool = Field(False, description="also make a lone request wait batch_wait_timeout_s")
    inline_batch_max_weight: int = Field(1, ge=0, description="batches of at most this weight (items; a scorer item "
                                         "with K draws weighs ceil(K/16)) run on the event loop, not a worker "
                                         "thread: a lone request skips the hand-off (0: always a thread)")
    max_queue_items: int = Field(4096, ge=1, description="queued items per model (all its graphs and versions) before its requests get 429")
    request_timeout_s: float = Field(10.0, gt=0, description="a request still queued after this gets 504")
    max_in_flight: int = Field(512, ge=1, description="model requests in the process at once (from their body's "
                                                      "arrival to their answer) before more get 503 + Retry-After")
    max_items_per_request: int = Field(1024, ge=1, description="items in one request before 413")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request body size before 413")
    body_read_timeout_s: float = Field(10.0, gt=0, description="a request body not fully received this long after "
                                                               "its reading starts gets 408 (slow or stalled clients)")
    max_header_bytes: int = Field(64 * 1024, ge=8192, description="request line and headers of one request before "
                                  "431 and close (uvicorn; Granian: its read buffer, docs/operations.md)")
    header_timeout_s: float = Field(10.0, gt=0, description="a request head (line and headers) not complete this "
                                    "long after its first byte gets 408 and the connection closes (slow clients)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle connection (no request begun: after an "
                                        "answer, or since it opened) closes after this")
    max_mc_samples: int = Field(1024, ge=1, description="upper bound for mc_samples in /anomaly-score")
    max_sample_n: int = Field(1024, ge=1, description="upper bound for n in /sample")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime / torch threads per graph (0: 1 with a model_repository, else the library default)")
    inference_workers: int = Field(2, ge=1, description="threads running batches (one batch per graph at a time)")
    shutdown_drain_timeout_s: float = Field(20.0, ge=0, description="on SIGTERM, how long to drain queues")
    shutdown_grace_s: float = Field(2.0, ge=0, description="on SIGTERM, how long readiness answers 503 before the "
                                                           "port closes, so load balancers notice")
    log_level: str = Field("info", description="uvicorn and service log level")
    api_keys: list[str] = Field(default_factory=list, description="accepted Bearer keys (JSON list); empty: no auth")
    api_keys_file: Path | None = Field(None, description="file with one accepted Bearer key per line")
    admin_api_keys: list[str] = Field(default_factory=list, description="Bearer keys for /admin/*; empty: admin routes off")
    metrics_require_key: bool = Field(False, description="also require an API key for /metrics")
    cors_allow_origins: list[str] = Field(default_factory=list, description="CORS origins (JSON list); empty: CORS off")
    # Operating it (deploy/README.md): request logs, traces, per-key quotas, input drift.
    access_log: Literal["json", "text", "off"] = Field(
        "off", description="one line per request (JSON lines on stdout, or in the service log's format): "
                           "request id, route, model, status, items, queue/compute/total seconds; no input data")
    tracing: bool | None = Field(None, description="OpenTelemetry spans over OTLP (the `tracing` extra); unset: on "
                                                   "when OTEL_EXPORTER_OTLP_ENDPOINT is set")
    key_quotas: dict[str, Any] | None = Field(None, description="per-key quotas, JSON (service/http/quotas.py: "
                                              "requests_per_s, item_samples_per_s, burst_s; `default` for unlisted keys)")
    key_quotas_file: Path | None = Field(None, description="the same as a JSON file, re-read on SIGHUP")
    drift_window_items: int = Field(1000, ge=0, description="drift window: the last N items per model version "
                                                            "(0: drift monitoring off)")
    drift_window_s: float = Field(600.0, gt=0, description="drift window: only items from the last N seconds")
    drift_min_items: int = Field(200, ge=10, description="items a window needs before it is compared")
    drift_ks_alpha: float = Field(0.01, gt=0, lt=1, description="latent drift when the Bonferroni-corrected KS "
                                                                "p-value is below this")
    drift_ks_min_distance: float = Field(0.1, ge=0, le=1, description="and only when the KS distance (largest "
                                         "gap between the CDFs) is at least this")
    drift_mean_shift_sd: float = Field(0.5, gt=0, description="latent drift when a unit's window mean moves this "
                                                              "many reference standard deviations")
    drift_psi_threshold: float = Field(0.25, gt=0, description="score drift when the population stability index "
                                                               "of the scores exceeds this")

    # Feedback and bulk jobs (docs/feedback-and-jobs.md).
    data_dir: Path = Field(Path("data"), description="the store (SQLite, WAL: feedback, thresholds, jobs) and job "
                                                     "files; every worker of the service shares it")
    score_id_secret: str | None = Field(None, description="HMAC key that signs score_ids (unset: one is generated "
                                        "once and kept in the store)")
    input_dir: Path | None = Field(None, description="POST /jobs may name a file under this folder instead of "
                                                     "uploading one (unset: uploads only)")
    max_job_upload_bytes: int = Field(1 << 30, ge=1024, description="an upload to POST /jobs before 413")
    max_job_items: int = Field(2_000_000, ge=1, description="items in one job before 413")
    max_active_jobs: int = Field(2, ge=1, description="queued and running jobs at once before POST /jobs gets 429")
    job_retention_s: float = Field(7 * 86400.0, gt=0, description="finished jobs and their files are deleted "
                                                                 "this long after they end")
    job_batch_items: int = Field(2, ge=1, description="items a job hands the batcher at a time (small: an online "
                                                      "request never waits long behind one)")
    job_idle_s: float = Field(0.005, ge=0, description="a job's next batch waits until no online request has been "
                                                       "in flight for this long (0: none right now)")

    def accepted_api_keys(self) -> list[str]:
        """Keys from the setting and the key file together."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines() if line.strip()]
        return keys
