"""Verified loading of exported graphs and one `run` call per graph, on ONNX Runtime or TorchScript.

Each file's bytes are checked against the manifest's sha256 and then loaded from those same bytes,
so what runs is exactly what was verified (a file verified before, unchanged since, is not hashed
again: core/verified.py). torch is imported only for the TorchScript backend.

How the ONNX Runtime sessions hold memory is a `SessionLayout`: a model repository serves many
small models, so there the sessions grow no arenas and may share one copy of the weights
(core/weights.py); docs/performance.md, "Models per GiB", has the figures.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config import VAEConfig
from model.contract import DEFAULT_MC_SAMPLES, REQUIRED_GRAPHS
from model.manifest import ArtifactError, load_manifest
from service.core.verified import VerifiedFiles
from service.core.weights import SharedWeights

log = logging.getLogger("vaeserve.runtime")

Feeds = dict[str, np.ndarray]
GraphFn = Callable[[Feeds], Feeds]


@dataclass(frozen=True)
class SessionLayout:
    """How one model's ONNX Runtime sessions hold memory."""

    # A per-session CPU arena keeps the largest batch it ever ran (a warm-up batch of 64 scorer items
    # is MiBs) for every graph of every model; without one, a run's buffers go back when it ends.
    arena: bool = True
    # One copy of each weight for all the model's graphs, instead of each session's own packed copy.
    # ONNX Runtime (Python) cannot share packed weights, so the GEMMs pack per run: numbers differ
    # in float32 rounding (1e-7 relative) and a batch-1 scorer run takes ~25% longer.
    share_weights: bool = False


@dataclass
class ModelRuntime:
    """A loaded, verified model: manifest facts plus one callable per graph."""

    manifest: dict[str, Any]
    config: VAEConfig
    backend: str
    device: str
    graphs: dict[str, GraphFn]
    artifacts_dir: Path
    precision: str = "float32"  # int8: the graphs of `vaeserve export --quantize int8`, where there is one
    weights: SharedWeights | None = None  # the arrays the sessions share (kept alive with them)
    memory_bytes: int | None = None  # measured by the loader: resident memory this version added

    @property
    def name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["model"]["version"])

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        """Run one graph on a batch; blocking, so callers run it off the event loop."""
        return self.graphs[graph](feeds)

    def inputs(self, graph: str) -> list[str]:
        return [spec["name"] for spec in self.manifest["graphs"][graph]["inputs"]]

    def outputs(self, graph: str) -> list[str]:
        return [spec["name"] for spec in self.manifest["graphs"][graph]["outputs"]]

    def warm_up(self, *, batch_sizes: tuple[int, ...] = (1, 8, 64), mc_samples: int = DEFAULT_MC_SAMPLES) -> None:
        """Run every graph once per batch size so the first request pays no allocation cost."""
        d, f = self.config.latent_dim, self.config.input_dim
        for n in batch_sizes:
            feeds = {"x": np.full((n, f), 0.5, dtype=np.float32), "z": np.zeros((n, d), dtype=np.float32),
                     "eps": np.zeros((n, mc_samples, d), dtype=np.float32),
                     "u": np.full(n, 0.5, dtype=np.float32), "noise": np.zeros((n, d), dtype=np.float32)}
            for graph in self.graphs:
                self.run(graph, {name: feeds[name] for name in self.inputs(graph)})


def load_runtime(artifacts_dir: Path, *, backend: str, device: str, intra_op_threads: int = 0,
                 precision: str = "float32", layout: SessionLayout = SessionLayout(),
                 verified: VerifiedFiles | None = None) -> ModelRuntime:
    """Read the manifest, verify and load every graph for the chosen backend, device and precision."""
    manifest = load_manifest(artifacts_dir, verify_files=False)
    config = VAEConfig.from_dict(manifest["config"])
    int8 = _int8_files(manifest, backend=backend, directory=artifacts_dir) if precision == "int8" else {}
    verified = verified if verified is not None else VerifiedFiles()
    weights = SharedWeights() if layout.share_weights and backend == "onnxruntime" else None
    graphs: dict[str, GraphFn] = {}
    resolved_device = "cpu"
    for name, spec in manifest["graphs"].items():
        file_name = int8.get(name) or spec["onnx" if backend == "onnxruntime" else "torchscript"]
        data = verified.read(artifacts_dir, file_name, manifest)
        if backend == "onnxruntime":
            graphs[name], resolved_device = _load_onnx(data, {**spec, "onnx": file_name}, device=device,
                                                       threads=intra_op_threads, arena=layout.arena, weights=weights)
        else:
            graphs[name], resolved_device = _load_torchscript(data, spec, device=device, threads=intra_op_threads)
    # A VampPrior model's /sample needs its sampler graph (the mixture's components are baked in there).
    missing = {*REQUIRED_GRAPHS, *(["sampler"] if config.prior == "vampprior" else [])} - set(graphs)
    if missing:
        raise ArtifactError(f"manifest lacks graphs {sorted(missing)}")
    log.info("loaded %s %s on %s/%s (%s) from %s", manifest["model"]["name"], manifest["model"]["version"],
             backend, resolved_device, precision, artifacts_dir)
    return ModelRuntime(manifest, config, backend, resolved_device, graphs, Path(artifacts_dir), precision, weights)


def _int8_files(manifest: dict[str, Any], *, backend: str, directory: Path) -> dict[str, str]:
    """Graph -> its int8 ONNX file; a graph without one (a VampPrior sampler) runs in float."""
    if backend != "onnxruntime":
        raise ArtifactError("precision int8 runs int8 ONNX graphs: use backend onnxruntime")
    graphs = manifest.get("quantization", {}).get("int8", {}).get("graphs")
    if not graphs:
        raise ArtifactError(f"precision int8, but {directory} has no int8 graphs: export it with "
                            "`vaeserve export --quantize int8`, or serve it with precision float32")
    return {name: str(graph["onnx"]) for name, graph in graphs.items()}


def _load_onnx(data: bytes, spec: dict[str, Any], *, device: str, threads: int, arena: bool = True,
               weights: SharedWeights | None = None) -> tuple[GraphFn, str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    if device == "cuda" and not use_cuda:
        raise ArtifactError(f"device=cuda but ONNX Runtime offers only {available}: install onnxruntime-gpu")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads would spin waiting for the next batch, burning a core between batches: a
    # single-item request cost 0.92 ms of server CPU with spinning, 0.59 without, at the same rate.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    if weights is not None and not use_cuda:
        # Packing would give each session its own copy again, beside the shared one.
        options.add_session_config_entry("session.disable_prepacking", "1")
        try:
            shared = weights.for_graph(data)
        except ValueError as exc:
            raise ArtifactError(f"{spec['onnx']}: {exc}") from exc
        for initializer, array in shared.items():
            options.add_initializer(initializer, weights.ort_value(array))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        raise ArtifactError(f"ONNX Runtime cannot load {spec['onnx']}: {exc}") from exc
    if not use_cuda and getattr(session, "_model_bytes", None) is data:
        # The Python wrapper keeps the model's bytes for life, only to re-create the session when a GPU
        # provider fails (its own TODO calls it bad): a whole copy of the weights per graph, for nothing on CPU.
        session._model_bytes = None
    outputs = [o["name"] for o in spec["outputs"]]

    def run(feeds: Feeds) -> Feeds:
        return dict(zip(outputs, session.run(outputs, feeds)))

    return run, "cuda" if use_cuda else "cpu"


def _load_torchscript(data: bytes, spec: dict[str, Any], *, device: str, threads: int) -> tuple[GraphFn, str]:
    import torch

    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise ArtifactError("device=cuda but torch sees no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    target = torch.device("cuda" if use_cuda else "cpu")
    try:
        module = torch.jit.load(io.BytesIO(data), map_location=target).eval()
    except Exception as exc:  # torch raises RuntimeError subclasses for bad archives
        raise ArtifactError(f"TorchScript cannot load {spec['torchscript']}: {exc}") from exc
    inputs = [i["name"] for i in spec["inputs"]]
    outputs = [o["name"] for o in spec["outputs"]]

    def run(feeds: Feeds) -> Feeds:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(feeds[name]).to(target) for name in inputs))
        result = result if isinstance(result, (tuple, list)) else (result,)
        return {name: r.cpu().numpy() for name, r in zip(outputs, result)}

    return run, target.type
