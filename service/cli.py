"""`vaeserve serve` and `vaeserve score`: the service side of the command (no torch). Their modules
are imported when they run, so `vaeserve train` in the training image needs none of them."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from model.contract import DEFAULT_MC_SAMPLES, DEFAULT_SCORE_VARIANT, SCORE_VARIANTS

DEFAULT_URL = "http://127.0.0.1:8000"


def add_commands(sub: Any) -> None:
    """serve and score, on the dispatcher's subparsers (vaeserve/cli.py)."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    serve = sub.add_parser("serve", help="serve exported artifacts over HTTP (settings also from VAESERVE_* variables)",
                           formatter_class=formatter)
    serve.add_argument("--artifacts", type=Path, default=None, help="artifacts folder (VAESERVE_ARTIFACTS_DIR)")
    serve.add_argument("--repository", type=Path, default=None,
                       help="model repository <dir>/<model>/<version>/ (VAESERVE_MODEL_REPOSITORY; instead of --artifacts)")
    serve.add_argument("--host", default=None, help="bind address (VAESERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (VAESERVE_PORT, default 8000)")
    serve.add_argument("--backend", choices=["onnxruntime", "torchscript"], default=None, help="VAESERVE_BACKEND")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="VAESERVE_DEVICE")
    serve.add_argument("--server", choices=["uvicorn", "granian"], default=None, help="HTTP server (VAESERVE_SERVER, "
                       "default uvicorn)")
    serve.add_argument("--workers", type=int, default=None, help="server processes sharing the port, each with its "
                       "own models and batchers (VAESERVE_WORKERS, default 1)")
    serve.set_defaults(handler=_serve)

    score = sub.add_parser(
        "score", formatter_class=formatter,
        help="anomaly-score every item of an .npy, a .csv or a folder of PNGs into a CSV",
        description="Anomaly scores for every item of INPUT, written to --out as CSV (index, [file], score, "
                    "reconstruction_nll, kl, percentile, threshold, is_anomaly), through a running service (--url) "
                    "or offline on exported artifacts (--artifacts). Chunk c is scored with seed SEED + c, so "
                    "the same INPUT, --seed and --chunk-size give the same scores both ways.")
    score.add_argument("input", type=Path, metavar="INPUT",
                       help="items: .npy array (n, ...), .csv rows, .parquet, or a PNG folder; for a table model a "
                            "CSV (header row) or Parquet table with the model's columns")
    score.add_argument("--id-column", default=None, metavar="COLUMN",
                       help="tables: a column to carry to the output beside each row's scores (e.g. an id)")
    score.add_argument("--out", type=Path, required=True, help="CSV to write")
    where = score.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help=f"a running service, e.g. {DEFAULT_URL}")
    where.add_argument("--artifacts", type=Path, help="offline: an exported artifacts folder (ONNX Runtime)")
    score.add_argument("--score", default=DEFAULT_SCORE_VARIANT, choices=list(SCORE_VARIANTS), help="variant")
    score.add_argument("--mc-samples", type=int, default=DEFAULT_MC_SAMPLES, help="Monte Carlo samples K per item")
    score.add_argument("--seed", type=int, default=0, help="seed of the first chunk's noise")
    rate = score.add_mutually_exclusive_group()
    rate.add_argument("--target-fpr", type=float, default=None, help="flag this share of normal data")
    rate.add_argument("--contamination", type=float, default=None, help="expected share of anomalies")
    score.add_argument("--chunk-size", type=int, default=256, help="items per request (online) or graph run")
    online = score.add_argument_group("online (--url)")
    online.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    online.add_argument("--api-key", default=None, help="Bearer key, when the service requires one")
    online.add_argument("--model", default=None, help="model name (/models/{model}/...; default: the default model)")
    online.add_argument("--version", default=None, help="model version (with --model)")
    online.add_argument("--max-retries", type=int, default=30, help="retries per chunk on 429/503 (Retry-After)")
    online.add_argument("--timeout-s", type=float, default=120.0, help="per-request timeout")
    score.add_argument("--threads", type=int, default=0, help="offline: ONNX Runtime threads (0: all cores)")
    score.set_defaults(handler=_score)


def known_errors() -> tuple[type[Exception], ...]:
    """Failures `vaeserve` reports as one line (exit 2) instead of a traceback."""
    try:
        from service.client.types import VAEClientError
    except ImportError:  # a training-only install without httpx
        return ()
    return (VAEClientError,)


def _serve(args: argparse.Namespace) -> int:
    from service.server.main import serve

    overrides = {k: v for k, v in {"artifacts_dir": args.artifacts, "model_repository": args.repository,
                                   "host": args.host, "port": args.port,
                                   "backend": args.backend, "device": args.device, "server": args.server,
                                   "workers": args.workers}.items() if v is not None}
    if args.verbose:
        overrides["log_level"] = "debug"
    return serve(overrides)


def _score(args: argparse.Namespace) -> int:
    from service.client.bulk import OfflineScorer, ScoreOptions, score_offline, summary, write_csv
    from service.client.files import read_items

    if not args.input.exists():
        raise FileNotFoundError(f"{args.input}: no such file or folder")
    options = ScoreOptions(score=args.score, mc_samples=args.mc_samples, seed=args.seed, target_fpr=args.target_fpr,
                           contamination=args.contamination, chunk_size=args.chunk_size)
    if args.artifacts is not None:
        scorer = OfflineScorer(args.artifacts, threads=args.threads)
        items = read_items(args.input, spec=scorer.spec, id_column=args.id_column)
        start = time.perf_counter()
        scores = score_offline(items, scorer, options)
        seconds, mode = time.perf_counter() - start, "offline"
    else:
        items, scores, seconds = asyncio.run(_score_online(args, options))
        mode = "online"
    write_csv(args.out, scores, items)
    print(json.dumps(summary(scores, seconds=seconds, out=args.out, mode=mode, options=options), indent=2))
    return 0


async def _score_online(args: argparse.Namespace, options: Any) -> tuple[Any, Any, float]:
    from service.client import AsyncVAEClient
    from service.client.bulk import score_online
    from service.client.files import read_items
    from service.core.inputs import InputSpec

    async with AsyncVAEClient(args.url, api_key=args.api_key, timeout_s=args.timeout_s, max_retries=args.max_retries,
                              max_connections=max(1, args.concurrency)) as client:
        card = await client.model_card(model=args.model, version=args.version)
        items = read_items(args.input, spec=InputSpec.from_manifest(card), id_column=args.id_column)
        start = time.perf_counter()
        scores = await score_online(items, client, options, concurrency=args.concurrency, model=args.model,
                                    version=args.version)
        return items, scores, time.perf_counter() - start
