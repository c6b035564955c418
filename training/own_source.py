"""Where a model of your own comes from: `--module pkg.mod:factory`, `--weights` and items, loaded for
`vaeserve export` (training/own_cli.py), and the manifest's `source` record (class, factory, protocol,
weight digests)."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.adapter import ModelRefused, Protocol
from model.manifest import sha256_file

# Why a variant a trained model has is missing from an own model's calibration and graphs.
LEFT_OUT_VARIANTS = {"elbo_knn": "needs the encoder's last hidden layer, which the protocol does not expose"}
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # checkpoints that wrap the state_dict


def load_module(factory: str, weights: Path | None) -> nn.Module:
    """factory() from 'package.module:factory' (importable from the current folder or PYTHONPATH), with the
    state_dict in `weights` loaded strictly (torch.load weights_only: nothing is unpickled)."""
    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--module: expected 'package.module:factory', got {factory!r}")
    if os.getcwd() not in sys.path:  # as `python -m` would: the user's module usually sits beside them
        sys.path.insert(0, os.getcwd())
    make = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(make):
        raise ValueError(f"--module: {module_name} has no callable {attribute!r}")
    model = make()
    if not isinstance(model, nn.Module):
        raise ModelRefused(f"--module: {factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = next((state[k] for k in STATE_DICT_KEYS if isinstance(state.get(k), dict)), state)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelRefused(f"--weights: {weights} does not fit {factory}(): {exc}") from None
    return model


def load_items(path: str) -> np.ndarray:
    """Normal items from an .npy array, or 'fashion-mnist': Fashion-MNIST's validation split."""
    if path == "fashion-mnist":
        from training.data import load_fashion_mnist

        return load_fashion_mnist().val_x
    if not path.endswith(".npy"):
        raise ValueError(f"--calibration/--reference: an .npy array of items or 'fashion-mnist', got {path!r}")
    return np.load(path, allow_pickle=False)


def source_record(model: nn.Module, protocol: Protocol, *, decoder_output: str, gaussian_log_var: float | None,
                  sigmoid: str | None, factory: str | None, weights_file: Path | str | None) -> dict[str, Any]:
    """The manifest's `source`: what was exported, how it was called, and digests of its weights."""
    return {
        "kind": "own model", "module": type(model).__module__, "class": type(model).__qualname__,
        "factory": factory,
        "weights_file": None if weights_file is None else {"path": str(weights_file),
                                                           "sha256": sha256_file(Path(weights_file))},
        "state_dict_sha256": state_dict_sha256(model),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "protocol": {"encode": protocol.encode, "decode": protocol.decode, "input_layout": protocol.layout,
                     "decoder_output": decoder_output, "gaussian_log_var": gaussian_log_var,
                     # probs from this nn.Sigmoid are read as its logits (model/adapter.py sigmoid_as_logits)
                     "logits_before_sigmoid": sigmoid},
        "score_variants_left_out": LEFT_OUT_VARIANTS,
    }


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict's names, dtypes, shapes and bytes: the weights exported, file or not."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()
