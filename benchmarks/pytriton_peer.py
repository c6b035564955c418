"""A Triton peer for the load benchmark: PyTriton serving the same exported scorer graph.

Triton Inference Server (the binary the nvidia-pytriton wheel ships) with its dynamic batcher in
front of a Python model callable that runs the model's `scorer_core.onnx` (or `scorer.onnx`) on
ONNX Runtime with K noise samples (`--mc-samples`, 1 by default) drawn the way vaeserve draws them:
what vaeserve's single-item `/anomaly-score` with `mc_samples: 1` computes, answered as a KServe v2
`elbo_score`.

    .venv-triton/bin/python benchmarks/pytriton_peer.py --artifacts artifacts --http-port 8010

nvidia-pytriton pins numpy < 2, so it lives in its own environment (the `bench` extra):
    python -m venv .venv-triton && .venv-triton/bin/pip install -e '.[bench]'
A request: POST /v2/models/vae/infer with
    {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [...]}]}

With `--graph NAME` it serves the scorer graph itself instead, as vaeserve's v2 route
`<model>.scorer_core` does: inputs x and eps, every output, under that name (perf_analyzer's row in
benchmarks/perf_analyzer.py sends both servers the same tensors).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig


@functools.lru_cache(maxsize=64)
def _noise(batch_size: int, mc_samples: int, latent_dim: int) -> np.ndarray:
    # seed 0, as vaeserve's default request seed; memoized per shape as vaeserve does
    return np.random.default_rng(0).standard_normal((batch_size, mc_samples, latent_dim), dtype=np.float32)


def scorer(artifacts: Path, *, mc_samples: int, threads: int):  # type: ignore[no-untyped-def]
    """The batched Python model callable: x (B, features) -> elbo_score (B, 1)."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    latent_dim = manifest["config"]["latent_dim"]
    graph = "scorer_core" if "scorer_core" in manifest["graphs"] else "scorer"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: the library default, as vaeserve's default
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifacts / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
    # every output, as vaeserve's runtime asks for (its answer uses several of them)
    outputs = [o["name"] for o in manifest["graphs"][graph]["outputs"]]
    score_index = outputs.index("elbo_score")

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        result = session.run(outputs, {"x": x, "eps": _noise(len(x), mc_samples, latent_dim)})
        return {"elbo_score": result[score_index].reshape(-1, 1)}

    return infer, manifest["input"]["features"]


def graph_model(artifacts: Path, *, threads: int):  # type: ignore[no-untyped-def]
    """The scorer graph as it is: (x, eps) -> every output; and the PyTriton tensors to bind."""
    manifest = json.loads((artifacts / "manifest.json").read_text())
    graph = "scorer_core" if "scorer_core" in manifest["graphs"] else "scorer"
    spec = manifest["graphs"][graph]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifacts / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])
    outputs = [o["name"] for o in spec["outputs"]]
    # Without the batch axis; "k" is dynamic; one value per item is (1,), as vaeserve's config says.
    dims = lambda t: tuple(-1 if d == "k" else d for d in t["shape"][1:]) or (1,)  # noqa: E731

    @batch
    def infer(x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
        result = session.run(outputs, {"x": x, "eps": eps})
        return {name: value.reshape(len(x), *dims(o)) for name, value, o in zip(outputs, result, spec["outputs"])}

    tensors = lambda ts: [Tensor(name=t["name"], dtype=np.dtype(t["dtype"]).type, shape=dims(t)) for t in ts]  # noqa: E731
    return infer, tensors(spec["inputs"]), tensors(spec["outputs"])


def _our_libpython_first() -> None:
    """Triton's Python backend stub links libpython3.X.so.1.0 from the loader's path: on a machine
    whose system Python differs from this interpreter (Debian's 3.11.2 under pyenv's 3.11.7 here)
    it would run this interpreter's standard library on another build's core and fail at model load
    (`'_thread.RLock' object has no attribute '_recursion_count'`). Put this interpreter's first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and sysconfig.get_config_var("Py_ENABLE_SHARED"):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--http-port", type=int, default=8010)
    parser.add_argument("--grpc-port", type=int, default=8011)
    parser.add_argument("--metrics-port", type=int, default=8012)
    parser.add_argument("--max-batch-size", type=int, default=256, help="as VAESERVE_MAX_BATCH_SIZE")
    parser.add_argument("--max-queue-delay-us", type=int, default=0,
                        help="Triton's dynamic batcher delay (0, Triton's default: batch what queued while busy)")
    parser.add_argument("--mc-samples", type=int, default=1, help="K: noise samples per item (eps input)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    parser.add_argument("--graph", default=None, help="serve the scorer graph itself under this name (x, eps -> "
                        "every output), as vaeserve's `<model>.scorer_core`")
    args = parser.parse_args()
    _our_libpython_first()
    if args.graph:
        infer, inputs, outputs = graph_model(args.artifacts, threads=args.threads)
        name = args.graph
    else:
        infer, features = scorer(args.artifacts, mc_samples=args.mc_samples, threads=args.threads)
        name, inputs = "vae", [Tensor(name="x", dtype=np.float32, shape=(features,))]
        outputs = [Tensor(name="elbo_score", dtype=np.float64, shape=(1,))]
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_verbose=0)
    # perf_analyzer reads the statistics endpoint, which PyTriton guards with a token by default;
    # vaeserve serves it open, so the peer does too where perf_analyzer measures it.
    security = TritonSecurityConfig(restricted_endpoints=[]) if args.graph else None
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=name,
            infer_func=infer,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
