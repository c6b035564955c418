"""`vaeserve export --module pkg.mod:factory --weights ...`: the command-line form of
vaeserve.export_model (training/own_model.py); training/cli.py defines the options."""

from __future__ import annotations

import argparse
from typing import Any

from model.adapter import DECODER_LIKELIHOOD
from model.repository import version_dir
from training.own_model import export_model
from training.own_source import load_items, load_module


def export_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`vaeserve export --module ...`: load the module and its items, export_model; a summary to print."""
    if args.quantize:
        raise ValueError("export: --quantize is for checkpoints of `vaeserve train`, not with --module")
    if args.decoder_output is None:
        raise ValueError("export: --module needs --decoder-output (logits, probs, mean or mean_log_var)")
    if args.calibration is None:
        raise ValueError("export: --module needs --calibration (an .npy of held-out normal items, or fashion-mnist)")
    manifest = export_model(
        load_module(args.module, args.weights), name=args.name, version=args.version, out=args.out,
        repository=args.repository, input_shape=args.input_shape,
        likelihood=args.likelihood or DECODER_LIKELIHOOD[args.decoder_output],
        decoder_output=args.decoder_output, gaussian_log_var=args.gaussian_log_var, input_layout=args.input_layout,
        calibration=load_items(args.calibration),
        reference=None if args.reference is None else load_items(args.reference),
        weights_file=args.weights, factory=args.module)
    folder = args.out or version_dir(args.repository, args.name, manifest["model"]["version"])
    return {"artifacts": str(folder), "model": manifest["model"], "source": manifest["source"],
            "parity": manifest["parity"]["max_scaled_diff"]}
