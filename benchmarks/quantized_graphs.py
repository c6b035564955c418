"""int8 against float32 scorers in-process: items/s of the float scorer_core, the same graph with only
the softplus rewrite (training/quantize.py: what part of the gain is not int8), and the int8 graph,
on the same inputs at the batch sizes the batcher forms, K = 16. Rounds alternate; medians print.

    .venv/bin/python benchmarks/quantized_graphs.py --artifacts artifacts [--threads 1] [--graph scorer_core]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.scorer_graphs import items_per_second  # noqa: E402
from training.onnx_rewrites import cheaper_softplus  # noqa: E402


def session(model: str | bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="an export with --quantize int8")
    parser.add_argument("--graph", default="scorer_core")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--mc-samples", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    latent_dim, n_features = manifest["config"]["latent_dim"], manifest["input"]["features"]
    float_path = args.artifacts / manifest["graphs"][args.graph]["onnx"]
    rewritten = onnx.load(str(float_path))
    cheaper_softplus(rewritten)
    sessions = {"float32": session(str(float_path), args.threads),
                "float32+softplus": session(rewritten.SerializeToString(), args.threads),
                "int8": session(str(args.artifacts / manifest["quantization"]["int8"]["graphs"][args.graph]["onnx"]),
                                args.threads)}
    rng = np.random.default_rng(0)
    print(f"{manifest['model']['name']} {manifest['model']['version']} {args.graph}, K = {args.mc_samples}, "
          f"{args.threads} thread(s), medians of {args.rounds} alternating rounds")
    for batch in args.batch_sizes:
        feeds = {"x": rng.random((batch, n_features), dtype=np.float32),
                 "eps": rng.standard_normal((batch, args.mc_samples, latent_dim), dtype=np.float32)}
        rates: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                rates[name].append(items_per_second(sess, feeds, args.seconds))
        f, s, q = (float(np.median(rates[n])) for n in sessions)
        print(f"batch {batch:3d}: float32 {f:7.0f} items/s, float32+softplus {s:7.0f} ({s / f:.2f}x), "
              f"int8 {q:7.0f} ({q / f:.2f}x float32, {q / s:.2f}x float32+softplus)")


if __name__ == "__main__":
    main()
