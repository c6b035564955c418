"""int8 graphs beside the float ones (`vaeserve export --quantize int8`), refused unless their scores
stay within MAX_P99_NATS of the float scorer's on held-out data.

The recipe, each step measured on a 10-epoch 784-512-512-32 model (docs/performance.md):
- The float graphs come already rewritten by export (training/onnx_rewrites.py: Softplus, scalar in
  ONNX Runtime and 34% of the float scorer's time at K=16, becomes relu(l) + log(1 + exp(-|l|))).
- ONNX Runtime static quantization, QDQ, MinMax ranges from the validation split, per-channel int8
  weights, uint8 activations, layer outputs left in float (a uint8 logit cost 1+ nats). Static, not
  dynamic: with dynamic ranges an item's score moved by up to 0.15 nats with the rest of its batch.
- Layers kept in float: those reading or writing the latent (the decoder's first layer sees the
  noise's tails: 0.25 nats of p99 alone, for 2% of the work) and, in the scorers, the encoder (run
  once per item, not K times; it keeps mu and the KL exact).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from model.contract import DEFAULT_MC_SAMPLES
from model.manifest import load_manifest, write_manifest
from training.staging import staged_write

log = logging.getLogger("vaeserve.quantize")

PRECISIONS = ("int8",)
MAX_P99_NATS = 0.5  # refuse an int8 export whose p99 |score - float score| is above this
NATS_SCORES = ("elbo_score", "iwae_score")  # the variants in nats, which the limit applies to
REPORTED_SCORES = ("reconstruction_nll", "kl", "elbo_score", "iwae_score", "elbo_latent_score", "knn_score",
                   "elbo_knn_score")
CALIBRATION_ITEMS = 1024  # validation items whose activations set the ranges (x K=16 noise draws)
PARITY_ITEMS = 2000  # held-out items the parity is measured on
MC_SAMPLES = DEFAULT_MC_SAMPLES  # the calibration and parity K: what requests send by default
CHUNK = 256  # parity chunk c draws its noise from numpy default_rng(c), as a request with seed c would
QUANTIZABLE_INPUTS = {"x", "eps", "z"}  # graphs fed anything else (a VampPrior sampler) stay float


class QuantizationRefused(Exception):
    """The int8 graphs disagree with the float ones beyond the limit; nothing was written."""


def int8_file(graph: str) -> str:
    return f"{graph}.int8.onnx"


def export_with_int8(target: Path, export: Callable[[Path], object], *, calibration_x: np.ndarray,
                     heldout_x: np.ndarray, heldout_split: str, max_p99_nats: float = MAX_P99_NATS) -> dict[str, Any]:
    """export(folder) the float graphs into a staging folder beside target, add the int8 graphs, and only
    then move everything into target (manifest.json last): a refusal leaves target as it was."""
    def write(staging: Path) -> dict[str, Any]:
        export(staging)
        return quantize_artifacts(staging, calibration_x=calibration_x, heldout_x=heldout_x,
                                  heldout_split=heldout_split, max_p99_nats=max_p99_nats)

    return staged_write(target, write)


def quantize_artifacts(directory: Path, *, calibration_x: np.ndarray, heldout_x: np.ndarray,
                       heldout_split: str = "test", max_p99_nats: float = MAX_P99_NATS) -> dict[str, Any]:
    """Write <graph>.int8.onnx for every quantizable graph of an export, measure their parity and add
    both to manifest.json; on refusal (or any error) remove what was written and leave the manifest."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    latent_dim = int(manifest["config"]["latent_dim"])
    calibration_x = calibration_x[:CALIBRATION_ITEMS].astype(np.float32)
    heldout_x = heldout_x[:PARITY_ITEMS].astype(np.float32)
    written: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as work:
            for name, spec in manifest["graphs"].items():
                inputs = [i["name"] for i in spec["inputs"]]
                if not set(inputs) <= QUANTIZABLE_INPUTS:
                    continue
                feeds = list(_calibration_feeds(inputs, calibration_x, directory / manifest["graphs"]["encoder"]["onnx"],
                                                latent_dim=latent_dim))
                if quantize_graph(directory / spec["onnx"], directory / int8_file(name), feeds,
                                  latent_dim=latent_dim, work=Path(work)):
                    written[name] = int8_file(name)
        parity = {"split": f"{heldout_split} (held-out)",
                  **measure_parity(directory, manifest, written, heldout_x, latent_dim=latent_dim)}
        worst = max((parity["scores"][g][s]["p99"] for g in parity["scores"] for s in NATS_SCORES
                     if s in parity["scores"][g]), default=0.0)
        log.info("int8 parity: p99 |delta score| %.3f nats (limit %.3g)", worst, max_p99_nats)
        if worst > max_p99_nats:
            raise QuantizationRefused(f"int8 graphs refused: p99 |score - float score| is {worst:.3f} nats on "
                                      f"{len(heldout_x)} held-out items, above the limit {max_p99_nats:g}; "
                                      "the export is left without int8 graphs")
    except BaseException:
        for file_name in written.values():
            (directory / file_name).unlink(missing_ok=True)
        raise
    manifest["quantization"] = {"int8": {"graphs": {g: {"onnx": f} for g, f in written.items()},
                                         "method": _method(len(calibration_x)), "parity": parity,
                                         "max_p99_nats": max_p99_nats}}
    manifest["files"].update({f: {} for f in written.values()})
    write_manifest(directory, manifest)
    return manifest


def _method(calibration_items: int) -> dict[str, Any]:
    return {"library": f"onnxruntime {ort.__version__} quantize_static", "format": "QDQ", "calibration": "MinMax",
            "calibration_split": "validation", "calibration_items": calibration_items, "mc_samples": MC_SAMPLES,
            "weights": "int8, per channel", "activations": "uint8, per tensor", "layer_outputs": "float",
            "float_layers": "those reading or writing the latent; the encoder inside the scorers",
            "rewrites": ["softplus(l) = relu(l) + log(1 + exp(-|l|))"]}


def quantize_graph(source: Path, target: Path, feeds: list[dict[str, np.ndarray]], *, latent_dim: int,
                   work: Path) -> bool:
    """Quantize one float graph into target; False (nothing written) when it has no layer to quantize."""
    prepared = work / f"{source.stem}.prepared.onnx"
    # Symbolic shape inference cannot follow the dynamic K axis; ONNX's own inference is enough here.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    layers = quantizable_layers(onnx.load(str(prepared)), latent_dim=latent_dim)
    if not layers:
        return False
    quantize_static(str(prepared), str(target), _Feeds(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_quantize=layers,
                    extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    return True


def quantizable_layers(model: onnx.ModelProto, *, latent_dim: int) -> list[str]:
    """The MatMul/Gemm nodes of the VAE's own weights to quantize (see the module docstring)."""
    graph = model.graph
    weights = {i.name: tuple(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    inputs = {i.name for i in graph.input}
    after_eps = {"eps"} if "eps" in inputs else None
    if after_eps is not None:  # everything computed from the noise: the decoder, run K times per item
        for node in graph.node:
            if after_eps.intersection(node.input):
                after_eps.update(node.output)
    layers = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        if node.input[1].startswith("reference."):  # the normal-data reference (neighbour bank): exact
            continue
        shape = weights[node.input[1]]
        if len(shape) != 2 or latent_dim in shape:
            continue
        if after_eps is not None and node.input[0] not in after_eps:
            continue
        layers.append(node.name)
    return layers


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds, self.position = feeds, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]


def _calibration_feeds(inputs: list[str], x: np.ndarray, encoder: Path, *, latent_dim: int,
                       batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Validation items with K=16 noise draws for the scorers; for the decoder, latents the service
    decodes: posterior samples of the items (reconstructions) and prior draws (/sample), half each."""
    rng = np.random.default_rng(0)
    session = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"]) if "z" in inputs else None
    for start in range(0, len(x), batch):
        xb = x[start:start + batch]
        feeds = {"x": xb, "eps": rng.standard_normal((len(xb), MC_SAMPLES, latent_dim), dtype=np.float32)}
        if session is not None:
            mu, log_var = session.run(None, {"x": xb})
            z = mu + np.exp(0.5 * log_var) * rng.standard_normal(mu.shape, dtype=np.float32)
            feeds["z"] = np.concatenate([z, rng.standard_normal(mu.shape, dtype=np.float32)]).astype(np.float32)
        yield {name: feeds[name] for name in inputs}


def measure_parity(directory: Path, manifest: dict[str, Any], quantized: dict[str, str], x: np.ndarray, *,
                   latent_dim: int) -> dict[str, Any]:
    """Max and p99 |int8 - float| of each score (nats, or the standardized variants' units) of each
    quantized scorer on held-out items, and max |int8 - float| of every output of every graph."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    outputs: dict[str, dict[str, float]] = {}
    encoder = ort.InferenceSession(str(directory / manifest["graphs"]["encoder"]["onnx"]),
                                   providers=["CPUExecutionProvider"])
    for name, file_name in quantized.items():
        inputs = [i["name"] for i in manifest["graphs"][name]["inputs"]]
        sessions = [ort.InferenceSession(str(directory / f), providers=["CPUExecutionProvider"])
                    for f in (manifest["graphs"][name]["onnx"], file_name)]
        names = [o.name for o in sessions[0].get_outputs()]
        diffs: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for chunk, start in enumerate(range(0, len(x), CHUNK)):
            feeds = _parity_feeds(inputs, x[start:start + CHUNK], encoder, seed=chunk, latent_dim=latent_dim)
            want, got = (s.run(None, feeds) for s in sessions)
            for n, a, b in zip(names, want, got):
                diffs[n].append(np.abs(a.astype(np.float64) - b).reshape(len(a), -1).max(1))
        per_item = {n: np.concatenate(d) for n, d in diffs.items()}
        outputs[name] = {n: float(d.max()) for n, d in per_item.items()}
        if "eps" in inputs:
            scores[name] = {n: {"max": float(per_item[n].max()), "p99": float(np.quantile(per_item[n], 0.99))}
                            for n in REPORTED_SCORES if n in per_item}
    return {"items": int(len(x)), "mc_samples": MC_SAMPLES,
            "noise": f"chunk c of {CHUNK} items: numpy default_rng(c) (a request of those items with seed c)",
            "scores": scores, "max_abs_diff": outputs}


def _parity_feeds(inputs: list[str], xb: np.ndarray, encoder: ort.InferenceSession, *, seed: int,
                  latent_dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if "z" in inputs:  # the decoder at the posterior means, as /reconstruct runs it
        return {"z": encoder.run(["mu"], {"x": xb})[0]}
    feeds = {"x": xb}
    if "eps" in inputs:
        feeds["eps"] = rng.standard_normal((len(xb), MC_SAMPLES, latent_dim), dtype=np.float32)
    return feeds
