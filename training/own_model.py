"""`vaeserve.export_model`: a VAE of your own (an nn.Module with model/adapter.py's protocol) exported as
vaeserve's graphs, checked against that module, calibrated, and described by a manifest of the same
schema as a trained model's, so the service cannot tell the two apart (docs/own-model.md).

Everything that can refuse the model runs before the target is touched, or inside a staging folder
(training/staging.py): a refused model leaves the output folder or repository exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.adapted_graphs import OWN_GRAPH_IO, build_own_graphs
from model.adapter import (
    AdaptedVAE,
    DecoderOutput,
    InputLayout,
    ModelRefused,
    check_decoder_shape,
    check_outputs,
    resolve_protocol,
)
from model.config import Likelihood, VAEConfig
from model.manifest import write_manifest
from model.repository import check_name, check_version, next_version, version_dir
from model.sigmoid_logits import final_sigmoid, sigmoid_as_logits
from training.evaluate import posterior_statistics
from training.export import (
    ParityError,
    calibrate,
    example_inputs,
    export_onnx,
    export_torchscript,
    graph_specs,
    input_spec,
    library_versions,
    parity,
    parity_record,
)
from training.own_checks import check_decoder, checked_items, normal_statistics, posteriors
from training.own_source import source_record
from training.staging import staged_write

log = logging.getLogger("vaeserve.export")


def export_model(model: nn.Module, *, name: str, input_shape: Sequence[int], likelihood: Likelihood,
                 decoder_output: DecoderOutput, calibration: np.ndarray, out: Path | str | None = None,
                 repository: Path | str | None = None, version: str | None = None,
                 reference: np.ndarray | None = None, gaussian_log_var: float | None = None,
                 input_layout: InputLayout = "auto", metrics: dict[str, Any] | None = None,
                 weights_file: Path | str | None = None, factory: str | None = None) -> dict[str, Any]:
    """Export `model` to `out` (an artifacts folder) or `repository` (a new version of `name`) and return
    its manifest; ModelRefused, naming the problem, with nothing written, when it cannot be served.

    calibration: held-out normal items (n, F) or (n, *input_shape), for thresholds and p-values;
    reference: normal training items for the latent score's mean and covariance (default: calibration).
    """
    started = time.perf_counter()
    target, version = export_target(out=out, repository=repository, name=name, version=version)
    shape = tuple(int(d) for d in input_shape)
    check_outputs(likelihood, decoder_output, gaussian_log_var)
    calibration_x = checked_items(calibration, input_shape=shape, likelihood=likelihood, what="calibration")
    reference_x = calibration_x if reference is None else checked_items(reference, input_shape=shape,
                                                                           likelihood=likelihood, what="reference")
    with contextlib.ExitStack() as stack:
        vae, sigmoid = _adapted(stack, model, calibration_x[:4], input_shape=shape, decoder_output=decoder_output,
                                gaussian_log_var=gaussian_log_var, input_layout=input_layout)
        mu, log_var = posteriors(vae, calibration_x)
        check_decoder(vae, mu)
        graphs = build_own_graphs(vae, normal_statistics(vae, reference_x, calibration_x, calibration_mu=mu))
        known = {
            "model": {"name": name, "version": version,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "config": _config(shape, vae, likelihood=likelihood, gaussian_log_var=gaussian_log_var).to_dict(),
            "input": _input(shape, likelihood=likelihood), "likelihood": likelihood,
            "prior": {"kind": "standard"}, "metrics": metrics or {}, "training": {"trained": "outside vaeserve"},
            "source": source_record(model, vae.protocol, decoder_output=decoder_output,
                                    gaussian_log_var=gaussian_log_var, sigmoid=sigmoid, factory=factory,
                                    weights_file=weights_file),
            "latent": posterior_statistics(mu, log_var),
        }
        manifest = staged_write(target, lambda folder: _write(folder, graphs, calibration_x, known))
    log.info("exported %s %s to %s in %.1f s", name, version, target, time.perf_counter() - started)
    return manifest


def export_target(*, out: Path | str | None, repository: Path | str | None, name: str,
                  version: str | None) -> tuple[Path, str]:
    """The folder to write and the version: out, or <repository>/<name>/<version> (the next integer)."""
    check_name(name)
    if (out is None) == (repository is None):
        raise ValueError("export: give out (an artifacts folder) or repository, exactly one of them")
    if repository is not None:
        version = check_version(version or next_version(Path(repository), name))
        target = version_dir(Path(repository), name, version)
        if target.exists():
            raise ValueError(f"export: {target} already exists; versions are immutable, pick another version")
        return target, version
    return Path(str(out)), check_version(version or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"))


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode on the CPU (a copy if it is elsewhere), its own mode restored afterwards."""
    if not isinstance(model, nn.Module):
        raise ModelRefused(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    on_cpu = all(p.device.type == "cpu" for p in [*model.parameters(), *model.buffers()])
    module = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _adapted(stack: contextlib.ExitStack, model: nn.Module, probe: np.ndarray, *, input_shape: tuple[int, ...],
             decoder_output: DecoderOutput, gaussian_log_var: float | None,
             input_layout: InputLayout) -> tuple[AdaptedVAE, str | None]:
    """The user's model in eval mode behind its protocol, for the rest of the stack's block, and the name of
    the final nn.Sigmoid read as logits (None if none)."""
    module = stack.enter_context(_evaluating(model))
    stack.enter_context(torch.no_grad())
    protocol = resolve_protocol(module, torch.from_numpy(probe), input_shape=input_shape, input_layout=input_layout)
    latents = torch.randn(8, protocol.latent_dim, generator=torch.Generator().manual_seed(0))
    check_decoder_shape(module, protocol, latents, input_shape=input_shape, decoder_output=decoder_output)
    sigmoid_out = final_sigmoid(module, protocol, latents)[0]
    if decoder_output == "logits" and sigmoid_out:
        raise ModelRefused(f"decoder_output is 'logits', but decode(z) returns the output of the nn.Sigmoid "
                           f"{sigmoid_out!r}: those are probabilities (decoder_output 'probs')")
    sigmoid = (stack.enter_context(sigmoid_as_logits(module, protocol, latents)) if decoder_output == "probs"
               else None)
    vae = AdaptedVAE(module, protocol, input_shape=input_shape, gaussian_log_var=gaussian_log_var,
                     decoder_output="logits" if sigmoid else decoder_output)
    return vae, sigmoid


def _write(folder: Path, graphs: dict[str, nn.Module], calibration_x: np.ndarray,
           known: dict[str, Any]) -> dict[str, Any]:
    """The graphs in both formats, their parity with the user's module, the calibration, the manifest."""
    folder.mkdir(parents=True)
    latent_dim = int(known["config"]["latent_dim"])
    for graph, module in graphs.items():
        args = example_inputs(graph, batch=4, latent_dim=latent_dim, sample_x=calibration_x)
        _traced(graph, "ONNX", partial(export_onnx, module, args, folder / f"{graph}.onnx", graph,
                                       outputs=OWN_GRAPH_IO[graph][1]))
        _traced(graph, "TorchScript", partial(export_torchscript, module, args, folder / f"{graph}.pt"))
    try:
        # Eagerly, each graph is the user's own module called through its protocol: that is the reference.
        report = parity(graphs, folder, latent_dim=latent_dim, sample_x=calibration_x)
    except ParityError as exc:
        raise ModelRefused(f"the exported graphs disagree with the model in PyTorch: {exc}") from None
    calibration, drift = calibrate(folder, calibration_x, latent_dim=latent_dim)
    for variant, values in calibration["sorted_scores"].items():
        if not np.isfinite(values).all():
            raise ModelRefused(f"the exported scorer gives NaN or infinite {variant} scores on calibration items")
    manifest = {**known, "graphs": graph_specs(int(np.prod(known["input"]["shape"])), latent_dim, graphs=list(graphs),
                                               io=OWN_GRAPH_IO),
                "calibration": calibration, "drift_reference": drift,
                "parity": {**parity_record(report), "reference": "the model's own module in PyTorch, called "
                                                                 "through its protocol (model/adapter.py)"},
                "libraries": library_versions(), "files": {f"{g}.{ext}": {} for g in graphs for ext in ("onnx", "pt")}}
    write_manifest(folder, manifest)
    return manifest


def _traced(graph: str, backend: str, export: Callable[[], None]) -> None:
    """Run one export; ModelRefused naming the graph, the backend and the user's line when it cannot be
    traced, or when tracing warned that a traced graph would hard-code a value of the example input."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            export()
        except Exception as exc:  # noqa: BLE001 - every exporter failure of a user's model is a refusal
            raise ModelRefused(f"the {graph} graph cannot be exported to {backend}: {_trace_reason(str(exc))}") from None
    for warning in caught:
        if issubclass(warning.category, torch.jit.TracerWarning):
            raise ModelRefused(f"the {graph} graph cannot be traced to {backend} faithfully: {warning.message} "
                               f"({warning.filename}:{warning.lineno})")


def _trace_reason(text: str) -> str:
    """One line from an exporter's error: what went wrong and the user's line that did it."""
    call = re.search(r"The following call raised this error:\n\s*(.*)\n\s*(.*)\n", text)
    where = f" at {call.group(1).strip()}: `{call.group(2).strip()}`" if call else ""
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        return ("control flow that depends on tensor values (a Python `if` or loop on data), which ONNX cannot "
                f"trace{where}; write it with torch.where, or move it out of encode/decode")
    summary = re.search(r"## Exception summary\n\n(.*)", text)
    return (summary.group(1) if summary else text.strip().splitlines()[0] if text.strip() else "unknown error") + where


def _config(shape: tuple[int, ...], vae: AdaptedVAE, *, likelihood: Likelihood,
            gaussian_log_var: float | None) -> VAEConfig:
    """The manifest's config: what the service reads (input shape, latent size, likelihood). No hidden
    sizes: the architecture is the user's, inside the graphs, never rebuilt from the config."""
    fixed = vae.decoder_output == "mean"
    return VAEConfig(input_shape=shape, hidden_sizes=(), latent_dim=vae.protocol.latent_dim, likelihood=likelihood,
                     gaussian_variance="fixed" if fixed else "learned",
                     fixed_log_var=float(gaussian_log_var or 0.0) if fixed else 0.0)


def _input(shape: tuple[int, ...], *, likelihood: str) -> dict[str, Any]:
    """The manifest's `input`: images as our own; other items as the model takes them, with no preprocessing."""
    if len(shape) == 3:
        return input_spec(shape, is_image=True, standardization=None)
    return {"shape": list(shape), "dtype": "float32", "features": int(np.prod(shape)),
            "range": [0.0, 1.0] if likelihood == "bernoulli" else None,
            "preprocessing": "none: items as the model's encode takes them"}
