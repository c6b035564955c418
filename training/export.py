"""Export: encoder, decoder and scorers to ONNX and TorchScript, parity-checked, with a manifest."""

from __future__ import annotations

import contextlib
import logging
import platform
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model.contract import DEFAULT_MC_SAMPLES, GRAPH_IO, SCORE_VARIANTS
from model.graphs import NEIGHBORS, NormalReference, build_graphs
from model.losses import knn_distance, mahalanobis_sq
from model.manifest import write_manifest
from model.vae import VAE
from training.checkpoint import standardization_tensors
from training.evaluate import latent_statistics, score_examples
from training.onnx_rewrites import cheaper_softplus
from training.precision import precision_record

log = logging.getLogger("vaeserve.export")

PARITY_BATCH_SIZES = (1, 7, 256)
PARITY_TOLERANCE = 1e-4
CALIBRATION_MC_SAMPLES = DEFAULT_MC_SAMPLES  # calibration must match what requests send by default
# The neighbour score's bank: at most this many normal training items (8192 keeps a one-class
# Fashion-MNIST bank whole), in this many principal components of the encoder features. The whole
# bank is read for every batch: 8192 x 512 float32 (16.8 MB) took a single-item request's p50 from
# ~1.2 to 2.1 ms; in 64 components (2.1 MB) the one-class AUROCs moved by 0.06 at most.
NEIGHBOR_BANK_SIZE = 8192
NEIGHBOR_COMPONENTS = 64
QUANTILE_LEVELS = [round(q, 4) for q in np.linspace(0.0, 1.0, 1001)]  # 0.1% grid for percentiles
REPORTED_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
DEFAULT_THRESHOLD_QUANTILE = 0.99
# Conformal p-values (model/conformal.py) count the calibration scores >= s. The 0.1% grid above
# gets that count only to within n/1000 (at n = 5,000 validation items, 5 of the 50 scores that
# decide a 1% false-alarm rate), so the scores themselves are kept, sorted: 4 variants x 5,000
# floats, ~0.4 MB of JSON. Beyond CALIBRATION_SCORES_KEPT a random subset is kept, which keeps the
# guarantee (with n = that many) and bounds the manifest for large tabular validation splits.
CALIBRATION_SCORES_KEPT = 20_000
# The drift reference (service/core/drift.py): latent means in 0.5% quantiles per unit (KS against them
# is off by at most 0.005, a tenth of what a 1,000-item window can detect), score deciles for PSI.
LATENT_QUANTILE_LEVELS = [round(q, 4) for q in np.linspace(0.0, 1.0, 201)]
ACTIVE_UNIT_VARIANCE = 0.01  # Cov_x(E_q[z_j]) above this: an active unit (Burda et al. 2015), as in evaluate


# What torch says on every export of these graphs, each checked and harmless here; any other warning
# still shows. (category, message regex, module that triggers it or "" for any)
EXPECTED_EXPORT_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", ""),  # torch's own pytree internals
    (UserWarning, r"# The axis name: .* will not be used", ""),  # x and eps share the batch axis, as meant
    (DeprecationWarning, r"`torch\.jit\.(trace|load)", ""),  # TorchScript is a deliberate second backend
    # min(k, bank rows) in knn_distance: the bank is a constant buffer, so the traced branch is right
    (torch.jit.TracerWarning, r"Converting a tensor to a Python boolean", r"model\.losses"),
)


class _SkipTorchvisionNotices(logging.Filter):
    """Without torchvision, torch's ONNX op registry logs one WARNING per torchvision op it skips, on
    every export (16 lines for our four graphs); these graphs use no torchvision op. Everything else
    that logger says still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


_TORCHVISION_NOTICES = _SkipTorchvisionNotices()


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The expected warnings and notices of one export silenced, nothing else."""
    logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_TORCHVISION_NOTICES)  # idempotent
    with warnings.catch_warnings():
        for category, message, module in EXPECTED_EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield


class ParityError(Exception):
    """An exported graph disagrees with PyTorch beyond tolerance."""


def example_inputs(graph: str, *, batch: int, latent_dim: int, sample_x: np.ndarray, k: int = 3,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Representative inputs for a graph: rows of real data for x, N(0, I) for z and eps."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.from_numpy(sample_x[torch.randint(len(sample_x), (batch,), generator=gen).numpy()])
    if graph == "encoder":
        return (rows,)
    if graph == "decoder":
        return (torch.randn(batch, latent_dim, generator=gen),)
    if graph == "sampler":  # the VampPrior's: a component per uniform u, N(0, I) noise within it
        return torch.rand(batch, generator=gen), torch.randn(batch, latent_dim, generator=gen)
    return rows, torch.randn(batch, k, latent_dim, generator=gen)


def export_onnx(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, graph: str, *,
                outputs: tuple[str, ...] | None = None) -> None:
    """torch.export-based ONNX export with a dynamic batch axis (and dynamic K for eps); the outputs are
    GRAPH_IO's unless named (a scorer without neighbour outputs)."""
    inputs, outputs = GRAPH_IO[graph][0], outputs or GRAPH_IO[graph][1]
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic: dict[str, dict[int, Any]] = {name: {0: batch} for name in inputs}
    if "eps" in inputs:
        dynamic["eps"] = {0: batch, 1: torch.export.Dim("k", min=1, max=1 << 16)}
    with _quiet_export():
        program = torch.onnx.export(module, args, dynamic_shapes=dynamic, input_names=list(inputs),
                                    output_names=list(outputs), dynamo=True, optimize=True, verbose=False)
    assert program is not None, "torch.onnx.export returned no program"
    program.save(str(path))
    # ONNX Runtime's Softplus kernel is scalar: 34% of the float scorer's time at K=16; the exact
    # rewrite made the float scorer 1.33-1.49x faster (benchmarks/quantized_graphs.py). Parity below checks it.
    model = onnx.load(str(path))
    cheaper_softplus(model)
    onnx.save(model, str(path))


def export_torchscript(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    """Traced TorchScript (the graphs have no data-dependent control flow)."""
    with torch.no_grad(), _quiet_export():
        traced = torch.jit.trace(module, args, check_trace=False)
    traced.save(str(path))


def parity(graphs: Mapping[str, Callable[..., Any]], directory: Path, *, latent_dim: int,
           sample_x: np.ndarray) -> dict[str, dict[str, float]]:
    """Max |exported - PyTorch| per graph and backend over batches of 1, 7 and 256; graphs maps each
    exported graph to what it must equal, run eagerly (the graph's module, or a user's own model)."""
    report: dict[str, dict[str, float]] = {}
    for name, module in graphs.items():
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        with _quiet_export():
            scripted = torch.jit.load(str(directory / f"{name}.pt"))
        worst = {"onnxruntime": 0.0, "torchscript": 0.0}
        scaled = {"onnxruntime": 0.0, "torchscript": 0.0}
        for batch in PARITY_BATCH_SIZES:
            args = example_inputs(name, batch=batch, latent_dim=latent_dim, sample_x=sample_x, k=5, seed=batch)
            with torch.no_grad():
                expected = _as_tuple(module(*args))
                got_ts = _as_tuple(scripted(*args))
            feeds = {n: a.numpy() for n, a in zip(GRAPH_IO[name][0], args)}
            got_ort = session.run(None, feeds)
            for backend, got in (("onnxruntime", got_ort), ("torchscript", [g.numpy() for g in got_ts])):
                for want, have in zip(expected, got):
                    diff = np.abs(want.numpy() - np.asarray(have))
                    worst[backend] = max(worst[backend], float(diff.max()))
                    # Absolute below magnitude 1, relative above: raw tabular outputs reach 1e3-1e4,
                    # where one float32 ulp is already above 1e-4.
                    scale = np.maximum(1.0, np.abs(want.numpy()))
                    scaled[backend] = max(scaled[backend], float((diff / scale).max()))
        report[name] = worst
        report[f"{name}_scaled"] = scaled
        log.info("parity %-11s onnxruntime %.2e  torchscript %.2e (scaled %.2e, %.2e)", name, worst["onnxruntime"],
                 worst["torchscript"], scaled["onnxruntime"], scaled["torchscript"])
        for backend, diff in scaled.items():
            if diff > PARITY_TOLERANCE:
                raise ParityError(f"{name} via {backend} differs from PyTorch by {diff:.3g} (|diff| / max(1, |value|)) "
                                  f"> {PARITY_TOLERANCE}")
    return report


def parity_record(report: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The manifest's `parity`: what parity() measured, and the tolerance it held it to."""
    return {"batch_sizes": list(PARITY_BATCH_SIZES), "tolerance": PARITY_TOLERANCE,
            "tolerance_applies_to": "max |exported - pytorch| / max(1, |pytorch|)",
            "max_abs_diff": {k: v for k, v in report.items() if not k.endswith("_scaled")},
            "max_scaled_diff": {k.removesuffix("_scaled"): v for k, v in report.items() if k.endswith("_scaled")}}


def library_versions() -> dict[str, str]:
    return {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def normal_reference(model: VAE, train_x: np.ndarray, val_x: np.ndarray, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the scorer compares inputs with (model.graphs.NormalReference), from normal data:
    latent means (mean, ridge-regularized precision), a bank of encoder features of at most
    NEIGHBOR_BANK_SIZE training items, and the location and scale of the -ELBO, latent and
    neighbour scores on held-out normal data."""
    with torch.no_grad():
        features = torch.cat([model.encoder.features(torch.from_numpy(train_x[i:i + 4096]))
                              for i in range(0, len(train_x), 4096)])
        mean, precision = latent_reference(model.encoder.posterior(features)[0])
        # Dead units have no spread: a floor keeps them at ~0 instead of dividing by zero.
        feature_mean, feature_std = features.mean(0), features.std(0).clamp(min=1e-3)
        _, _, right = torch.linalg.svd((features - feature_mean) / feature_std, full_matrices=False)
        keep = np.sort(np.random.default_rng(seed).permutation(len(features))[:NEIGHBOR_BANK_SIZE])
        stats = {"mean": mean, "precision": precision, "feature_mean": feature_mean, "feature_std": feature_std,
                 "feature_projection": right[:NEIGHBOR_COMPONENTS].T.contiguous()}  # (H, P) top principal directions
        coordinates = NormalReference(len(mean), features.shape[1], stats).bank_coordinates
        stats["feature_bank"] = coordinates(features[torch.from_numpy(keep)])
        val_features = model.encoder.features(torch.from_numpy(val_x))
        val_mu = model.encoder.posterior(val_features)[0].double()
        knn = knn_distance(coordinates(val_features), stats["feature_bank"], NEIGHBORS)
    latent = mahalanobis_sq(val_mu, mean, precision)
    elbo = torch.from_numpy(score_examples(model, val_x, k=CALIBRATION_MC_SAMPLES, seed=1)["elbo_score"])
    return {**stats, "elbo_scale": location_scale(elbo), "latent_scale": location_scale(latent),
            "knn_scale": location_scale(knn)}


def latent_reference(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and ridge-regularized precision (D, D) of posterior means mu (N, D) of normal data, float64."""
    mu = mu.double()
    mean = mu.mean(0)
    cov = torch.cov(mu.T).reshape(len(mean), len(mean))
    # Ridge: collapsed dimensions have ~0 variance, and would otherwise dominate the distance.
    ridge = 1e-2 * torch.diagonal(cov).mean().clamp(min=1e-8)
    return mean, torch.linalg.inv(cov + ridge * torch.eye(len(mean), dtype=torch.float64))


def location_scale(values: torch.Tensor) -> torch.Tensor:
    """(mean, sd) of a score on held-out normal data, to put scores on one scale (NormalReference)."""
    return torch.stack([values.mean(), values.std().clamp(min=1e-8)]).double()


def onnx_variant_scores(scorer_path: Path, x: np.ndarray, *, latent_dim: int,
                        mc_samples: int = CALIBRATION_MC_SAMPLES, seed: int = 0,
                        with_mu: bool = False) -> dict[str, np.ndarray]:
    """Every score variant for x (and the posterior means, key "mu"), computed by the exported
    scorer graph as the service runs it."""
    session = ort.InferenceSession(str(scorer_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    # Every variant the graph computes (a user's own model has no neighbour score).
    keys = [f"{variant}_score" for variant in SCORE_VARIANTS if f"{variant}_score" in names] + (["mu"] if with_mu else [])
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for start in range(0, len(x), 256):
        xb = x[start:start + 256].astype(np.float32)
        eps = rng.standard_normal((len(xb), mc_samples, latent_dim), dtype=np.float32)
        outputs = dict(zip(names, session.run(None, {"x": xb, "eps": eps})))
        for key in keys:
            parts[key].append(outputs[key])
    return {key.removesuffix("_score"): np.concatenate(p) for key, p in parts.items()}


def calibrate(directory: Path, x_normal: np.ndarray, *, latent_dim: int,
              seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Quantiles and sorted scores of each score variant on held-out normal data, computed by the
    exported scorer, and the drift reference (posterior means and score deciles) of the same data."""
    scores = onnx_variant_scores(directory / "scorer.onnx", x_normal, latent_dim=latent_dim, seed=seed, with_mu=True)
    mu = scores.pop("mu")
    variants = {}
    for name, values in scores.items():
        grid = np.quantile(values, QUANTILE_LEVELS)
        variants[name] = {
            "quantiles": [float(v) for v in grid],
            **{label: float(np.quantile(values, q)) for label, q in REPORTED_QUANTILES.items()},
            "threshold": float(np.quantile(values, DEFAULT_THRESHOLD_QUANTILE)),
        }
    kept = np.sort(np.random.default_rng(seed).permutation(len(mu))[:CALIBRATION_SCORES_KEPT])
    calibration = {
        "split": "validation (held-out normal data)", "examples": int(len(x_normal)),
        "mc_samples": CALIBRATION_MC_SAMPLES, "quantile_levels": QUANTILE_LEVELS,
        "default_threshold_quantile": DEFAULT_THRESHOLD_QUANTILE, "variants": variants,
        "sorted_scores_examples": int(len(kept)),
        "sorted_scores": {name: np.sort(values[kept]).tolist() for name, values in scores.items()},
    }
    return calibration, drift_reference(mu, scores)


def drift_reference(mu: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the service's drift windows are compared with: per latent unit the mean, standard
    deviation, activity and 0.5% quantiles of mu(x); per score variant its deciles."""
    variance = mu.astype(np.float64).var(0)

    def deciles(values: np.ndarray) -> dict[str, list[float]]:
        edges = np.quantile(values, np.arange(1, 10) / 10)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=10)
        return {"edges": edges.tolist(), "fractions": (counts / len(values)).tolist()}

    return {
        "split": "validation (held-out normal data)", "examples": int(len(mu)), "mc_samples": CALIBRATION_MC_SAMPLES,
        "latent": {"mean": mu.mean(0).tolist(), "sd": np.sqrt(variance).tolist(),
                   "active": (variance > ACTIVE_UNIT_VARIANCE).tolist(), "quantile_levels": LATENT_QUANTILE_LEVELS,
                   "quantiles": np.quantile(mu, LATENT_QUANTILE_LEVELS, axis=0).T.tolist()},  # (D, L)
        "scores": {name: deciles(values) for name, values in scores.items()},
    }


def export_model(model: VAE, payload: dict[str, Any], out_dir: Path, *, train_x: np.ndarray, val_x: np.ndarray,
                 name: str, version: str, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every graph in both formats, check parity, calibrate, and write manifest.json.

    train_x and val_x are raw features (the graphs standardize; the bare VAE sees standardized ones).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    stats = payload.get("standardization")
    mean, std = standardization_tensors(payload)
    reference = normal_reference(model, _standardized(train_x.astype(np.float32), stats),
                                 _standardized(val_x.astype(np.float32), stats))
    graphs = build_graphs(model, mean, std, reference)
    config = model.config
    val_x = val_x.astype(np.float32)
    for graph_name, module in graphs.items():
        args = example_inputs(graph_name, batch=4, latent_dim=config.latent_dim, sample_x=val_x)
        export_onnx(module, args, out_dir / f"{graph_name}.onnx", graph_name)
        export_torchscript(module, args, out_dir / f"{graph_name}.pt")
    parity_report = parity(graphs, out_dir, latent_dim=config.latent_dim, sample_x=val_x)
    calibration, drift = calibrate(out_dir, val_x, latent_dim=config.latent_dim)
    manifest: dict[str, Any] = {
        "model": {"name": name, "version": version, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "config": config.to_dict(),
        "input": input_spec(config.input_shape, is_image=config.is_image, standardization=stats,
                            table=(payload.get("dataset") or {}).get("table")),
        "likelihood": config.likelihood,
        "graphs": graph_specs(config.input_dim, config.latent_dim, graphs=list(graphs)),
        # What /sample draws from; the VampPrior's components are baked into the sampler graph.
        "prior": {"kind": config.prior, **({"pseudo_inputs": config.pseudo_inputs} if config.prior == "vampprior" else {})},
        "training": {"train_config": payload.get("train_config"), "dataset": payload.get("dataset"),
                     "data_spec": payload.get("data_spec"), "epoch": payload.get("epoch"),
                     "val_neg_elbo": payload.get("val_neg_elbo"), "precision": precision_record(payload)},
        "metrics": metrics or {},
        "latent": latent_statistics(model, _standardized(val_x, stats)),
        "calibration": calibration,
        "drift_reference": drift,
        "parity": parity_record(parity_report),
        "libraries": library_versions(),
        "files": {f"{g}.{ext}": {} for g in graphs for ext in ("onnx", "pt")},
    }
    write_manifest(out_dir, manifest)
    return manifest


def input_spec(shape: tuple[int, ...], *, is_image: bool, standardization: dict[str, Any] | None,
               table: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"shape": list(shape), "dtype": "float32", "features": int(np.prod(shape))}
    if table:
        return {**spec, "range": None, "table": table,
                "preprocessing": "records by column name (or rows in column order) encoded by `table` "
                                 "(model/table_schema.py): numbers standardized, categories one-hot"}
    if is_image:
        colour = "RGB" if shape[0] == 3 else "grayscale"
        spec.update(range=[0.0, 1.0], layout="CHW", formats=["PNG", "JPEG"],
                    preprocessing=f"pixels scaled to [0, 1], channels first; PNG or JPEG accepted ({colour}, "
                                  f"resized to {shape[1]}x{shape[2]})")
    else:
        spec.update(range=None, preprocessing="standardized inside the graphs with the training statistics",
                    standardization=standardization)
    return spec


def graph_specs(n_features: int, latent_dim: int, *, graphs: list[str],
                io: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = GRAPH_IO) -> dict[str, Any]:
    """The manifest's `graphs`: per graph its files and its inputs' and outputs' names, shapes and dtypes."""
    shapes = {"x": ["batch", n_features], "z": ["batch", latent_dim], "eps": ["batch", "k", latent_dim],
              "u": ["batch"], "noise": ["batch", latent_dim],
              "mu": ["batch", latent_dim], "log_var": ["batch", latent_dim], "x_mean": ["batch", n_features],
              "feature_nll": ["batch", n_features],
              **{name: ["batch"] for name in GRAPH_IO["scorer"][1] if name not in ("feature_nll", "mu")}}
    float64 = set(GRAPH_IO["scorer"][1]) - {"mu"}  # the scores: sums of log-densities in float64
    return {
        name: {
            "onnx": f"{name}.onnx", "torchscript": f"{name}.pt",
            "inputs": [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in ins],
            "outputs": [{"name": n, "shape": shapes[n], "dtype": "float64" if n in float64 else "float32"} for n in outs],
        }
        for name, (ins, outs) in io.items() if name in graphs
    }


def _standardized(x: np.ndarray, stats: dict[str, Any] | None) -> np.ndarray:
    """Validation rows as the networks see them (the graphs standardize; the bare VAE does not)."""
    if not stats:
        return x
    return ((x - np.asarray(stats["mean"], dtype=np.float32)) / np.asarray(stats["std"], dtype=np.float32)).astype(np.float32)
