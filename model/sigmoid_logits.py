"""A decoder that ends in an nn.Sigmoid, read as the logits before it (model/adapter.py's probs).

Why: log(1 - p) of a saturated float32 p is ill-conditioned. ONNX Runtime's Sigmoid differs from
torch's by an ulp or two, which moved a grey pixel's log-likelihood by ~1e-3 nats (the tutorial's
VAE: scorer parity 3.3e-4, above the 1e-4 tolerance); from the logits, the same math
(model/losses.py bernoulli_log_prob) agreed to 2.2e-6. In PyTorch both give the model's own p:
sigmoid(logits) is checked to equal decode(z) exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from model.adapter import Protocol, call_route


@contextlib.contextmanager
def sigmoid_as_logits(module: nn.Module, protocol: Protocol, z: torch.Tensor) -> Iterator[str | None]:
    """For decoder_output 'probs': when decode(z) returns the output of an nn.Sigmoid submodule, that
    Sigmoid is an Identity inside this block (put back after), so decode returns its logits, and the
    name of the Sigmoid is yielded (None when there is none: a functional sigmoid is read as probs)."""
    name, probs = final_sigmoid(module, protocol, z)
    if name is None:
        yield None
        return
    parent_name, _, attribute = name.rpartition(".")
    parent = module.get_submodule(parent_name)
    sigmoid = parent.get_submodule(attribute)
    setattr(parent, attribute, nn.Identity())
    try:
        with torch.no_grad():
            exact = torch.equal(torch.sigmoid(call_route(module, protocol.decode, z)), probs)
        if not exact:  # something after the Sigmoid changes its output: read it as probabilities
            setattr(parent, attribute, sigmoid)
        yield name if exact else None
    finally:
        setattr(parent, attribute, sigmoid)


def final_sigmoid(module: nn.Module, protocol: Protocol, z: torch.Tensor) -> tuple[str | None, torch.Tensor]:
    """(the name of the nn.Sigmoid submodule whose output decode(z) returns, or None; decode(z))."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
             for name, m in module.named_modules() if isinstance(m, nn.Sigmoid)]
    try:
        with torch.no_grad():
            out = call_route(module, protocol.decode, z)
    finally:
        for hook in hooks:
            hook.remove()
    name = next((n for n, o in seen.items() if isinstance(out, torch.Tensor) and _same_values(o, out)), None)
    return name, out


def _same_values(out: torch.Tensor, probs: torch.Tensor) -> bool:
    """probs is out, or a view or reshape of it (a decoder that reshapes its Sigmoid's output)."""
    return out.numel() == probs.numel() and (out is probs or out.data_ptr() == probs.data_ptr())
