"""A VAE of your own behind vaeserve's protocol: encode(x) -> (mu, log_var) and decode(z) -> the
likelihood's parameters, on flattened items (B, F) as every exported graph takes them.

resolve_protocol finds once, by calling the model on a few real items, how to call it: an `encode`
method, else an `encoder` submodule, else `forward` returning (recon, mu, log_var) or [recon, input,
mu, log_var]; a `decode` method, else a `decoder` submodule; items flat (B, F) or shaped (B, C, H, W).
AdaptedVAE then calls the user's own module, so what is exported, checked and served is that module,
not a rebuild of it. docs/own-model.md is the user's side of this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from model.config import Likelihood
from model.losses import bernoulli_log_prob, bernoulli_log_prob_from_probs, gaussian_log_prob, reparameterize
from model.vae import MonteCarloTerms, standard_prior_terms

# What decode(z) returns: Bernoulli logits, Bernoulli probabilities (a decoder ending in a Sigmoid), a
# Gaussian mean (with a fixed log-variance given at export), or a Gaussian mean and log-variance.
DecoderOutput = Literal["logits", "probs", "mean", "mean_log_var"]
DECODER_LIKELIHOOD: dict[str, Likelihood] = {"logits": "bernoulli", "probs": "bernoulli", "mean": "gaussian",
                                             "mean_log_var": "gaussian"}
InputLayout = Literal["auto", "flat", "shaped"]
EncodeRoute = Literal["encode", "encoder", "forward"]
DecodeRoute = Literal["decode", "decoder"]
ENCODE_ROUTES: tuple[EncodeRoute, ...] = ("encode", "encoder", "forward")  # tried in this order
DECODE_ROUTES: tuple[DecodeRoute, ...] = ("decode", "decoder")
EXPECTED = ("encode(x) -> (mu, log_var), or an `encoder` submodule returning (mu, log_var), or forward(x) "
            "returning (recon, mu, log_var) or [recon, input, mu, log_var]; and decode(z) or a `decoder` submodule")


class ModelRefused(ValueError):
    """The model cannot be exported as it is; the message names the problem. Nothing was written."""


@dataclass(frozen=True)
class Protocol:
    """How the user's module is called, found once by resolve_protocol."""

    encode: EncodeRoute
    decode: DecodeRoute
    layout: Literal["flat", "shaped"]  # what encode takes: (B, F), or (B, *input_shape)
    latent_dim: int
    posterior_at: int = 0  # index of mu in what the encode route returns (log_var follows it)


def check_outputs(likelihood: str, decoder_output: str, gaussian_log_var: float | None) -> None:
    """The declared likelihood and decoder output agree; a fixed-variance Gaussian says its variance."""
    if decoder_output not in DECODER_LIKELIHOOD:
        raise ModelRefused(f"decoder_output must be one of {sorted(DECODER_LIKELIHOOD)}, got {decoder_output!r}")
    if DECODER_LIKELIHOOD[decoder_output] != likelihood:
        raise ModelRefused(f"decoder_output {decoder_output!r} is a {DECODER_LIKELIHOOD[decoder_output]} decoder, "
                           f"but likelihood is {likelihood!r}")
    if decoder_output == "mean" and gaussian_log_var is None:
        raise ModelRefused("decoder_output 'mean' needs gaussian_log_var: the fixed log-variance of p(x|z) the "
                           "model was trained with (a sum-of-squares loss is 0.0 up to its weight)")


def found_attributes(module: nn.Module) -> str:
    """The submodules and own methods a module has, for a message that says what was found."""
    children = [name for name, _ in module.named_children()]
    base = set(dir(nn.Module))
    methods = sorted(n for n in dir(type(module)) if not n.startswith("_") and n not in base
                     and callable(getattr(type(module), n, None)))
    overrides = " (forward overridden)" if type(module).forward is not nn.Module.forward else ""
    return f"submodules {children}, methods {methods}{overrides}"


def resolve_protocol(module: nn.Module, probe: torch.Tensor, *, input_shape: tuple[int, ...],
                     input_layout: InputLayout = "auto") -> Protocol:
    """How to call the module, tried on probe items (B, F): the first encode route and item layout that
    give (mu, log_var); ModelRefused naming what is missing, or what each try gave."""
    encode_routes = [r for r in ENCODE_ROUTES if _has(module, r)]
    decode_route = next((r for r in DECODE_ROUTES if _has(module, r)), None)
    if not encode_routes or decode_route is None:
        missing = "way to encode" if not encode_routes else "way to decode"
        raise ModelRefused(f"the model has no {missing}: vaeserve expects {EXPECTED}; found {found_attributes(module)}")
    layouts: list[Literal["flat", "shaped"]] = (
        ["flat"] if len(input_shape) == 1 else ["flat", "shaped"] if input_layout == "auto" else
        ["flat" if input_layout == "flat" else "shaped"])
    failures = []
    for route in encode_routes:
        for layout in layouts:
            x = probe if layout == "flat" else probe.reshape(len(probe), *input_shape)
            try:
                with torch.no_grad():
                    out = call_route(module, route, x)
                at = _posterior_index(out, route, x)
            except Exception as exc:  # noqa: BLE001 - any failure of the user's code is reported, with its layout
                how = "" if isinstance(exc, ModelRefused) else "failed: "
                failures.append(f"{_route_text(route)} on x of shape {tuple(x.shape)}: {how}{exc}")
                continue
            _check_posterior(out[at], out[at + 1], batch=len(probe), route=route)  # a posterior of wrong shape: final
            return Protocol(route, decode_route, layout, int(out[at].shape[1]), at)
    raise ModelRefused("; ".join(failures) + f" (vaeserve expects {EXPECTED})")


def _has(module: nn.Module, route: str) -> bool:
    if route == "forward":
        return type(module).forward is not nn.Module.forward
    if route in ("encoder", "decoder"):
        return isinstance(getattr(module, route, None), nn.Module)
    return callable(getattr(module, route, None))


def call_route(module: nn.Module, route: str, x: torch.Tensor) -> Any:
    """Call the user's module the way a protocol route says: module(x), or its method or submodule `route`."""
    return module(x) if route == "forward" else getattr(module, route)(x)


def _route_text(route: str) -> str:
    return {"encode": "encode(x)", "encoder": "encoder(x)", "forward": "forward(x)",
            "decode": "decode(z)", "decoder": "decoder(z)"}[route]


def _posterior_index(out: Any, route: str, x: torch.Tensor) -> int:
    """Where mu sits in what the encode route returned; ModelRefused when it is not a known form."""
    if not isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__}" + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else "")
        raise ModelRefused(f"returned {got}, not (mu, log_var)")
    if route != "forward" and len(out) == 2:
        return 0
    if route == "forward" and len(out) == 3:
        return 1  # (recon, mu, log_var): the tutorial's
    if route == "forward" and len(out) == 4 and out[1] is x:
        return 2  # [recon, input, mu, log_var]: PyTorch-VAE's
    raise ModelRefused(f"returned {len(out)} outputs, which vaeserve cannot read as (mu, log_var)")


def _check_posterior(mu: Any, log_var: Any, *, batch: int, route: str) -> None:
    if not isinstance(mu, torch.Tensor) or not isinstance(log_var, torch.Tensor):
        raise ModelRefused(f"{_route_text(route)}: mu and log_var must be tensors, got {type(mu).__name__} and "
                           f"{type(log_var).__name__}")
    if mu.dim() != 2 or mu.shape[0] != batch or mu.shape != log_var.shape:
        raise ModelRefused(f"{_route_text(route)}: mu has shape {tuple(mu.shape)} and log_var {tuple(log_var.shape)} "
                           f"for {batch} items; both must be (batch, latent_dim) = ({batch}, D)")


class AdaptedVAE(nn.Module):
    """The user's module called through its Protocol: flat items in, the likelihood's parameters out."""

    fixed_log_var: torch.Tensor

    def __init__(self, module: nn.Module, protocol: Protocol, *, input_shape: tuple[int, ...],
                 decoder_output: DecoderOutput, gaussian_log_var: float | None = None) -> None:
        super().__init__()
        self.module, self.protocol = module, protocol
        self.input_shape, self.features = tuple(input_shape), math.prod(input_shape)
        self.decoder_output = decoder_output
        self.register_buffer("fixed_log_var", torch.tensor(float(gaussian_log_var or 0.0)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F) -> mu (B, D), log_var (B, D)."""
        if self.protocol.layout == "shaped":
            x = x.reshape(x.shape[0], *self.input_shape)
        out = call_route(self.module, self.protocol.encode, x)
        at = self.protocol.posterior_at
        return out[at], out[at + 1]

    def decode(self, z: torch.Tensor) -> Any:
        """z (..., D) -> the decoder's parameters (..., F), or (mean, log_var) for mean_log_var. The user's
        decoder takes one batch axis: the leading axes (B, K) are folded into it and restored."""
        lead, n = z.shape[:-1], self.features
        out = call_route(self.module, self.protocol.decode, z.reshape(-1, z.shape[-1]))
        if self.decoder_output != "mean_log_var":
            return out.reshape(*lead, n)
        if isinstance(out, (tuple, list)):
            return out[0].reshape(*lead, n), out[1].reshape(*lead, n)
        both = out.reshape(-1, 2 * n)  # one tensor: the mean's features (or channels) first, then the log-variance's
        return both[:, :n].reshape(*lead, n), both[:, n:].reshape(*lead, n)

    def mean(self, params: Any) -> torch.Tensor:
        """E[x|z] (..., F): what /reconstruct and /sample answer."""
        if self.decoder_output == "logits":
            return torch.sigmoid(params)
        return params[0] if self.decoder_output == "mean_log_var" else params

    def log_prob(self, params: Any, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per feature (..., F), from model/losses.py."""
        if self.decoder_output == "logits":
            return bernoulli_log_prob(params, x)
        if self.decoder_output == "probs":
            return bernoulli_log_prob_from_probs(params, x)
        if self.decoder_output == "mean":
            return gaussian_log_prob(params, self.fixed_log_var.expand_as(params), x)
        return gaussian_log_prob(params[0], params[1], x)

    def monte_carlo_terms(self, x: torch.Tensor, eps: torch.Tensor,
                          reduce_dtype: torch.dtype | None = None) -> MonteCarloTerms:
        """As VAE.monte_carlo_terms for the standard prior; the posterior mean stands in for the encoder's
        features, which the protocol does not expose (no neighbour score is built on them)."""
        mu, log_var = self.encode(x)  # (B, D)
        z = reparameterize(mu.unsqueeze(1), log_var.unsqueeze(1), eps)  # (B, K, D)
        log_px_features = self.log_prob(self.decode(z), x.unsqueeze(1))  # (B, K, F)
        if reduce_dtype is not None:
            log_px_features, z = log_px_features.to(reduce_dtype), z.to(reduce_dtype)
            mu, log_var = mu.to(reduce_dtype), log_var.to(reduce_dtype)
        return standard_prior_terms(log_px_features, z, mu, log_var, features=mu)


def check_decoder_shape(module: nn.Module, protocol: Protocol, z: torch.Tensor, *, input_shape: tuple[int, ...],
                        decoder_output: DecoderOutput) -> None:
    """decode(z) on (N, D) latents gives N items of the input's features; ModelRefused naming both if not."""
    route, features = _route_text(protocol.decode), math.prod(input_shape)
    try:
        with torch.no_grad():
            out = call_route(module, protocol.decode, z)
    except Exception as exc:  # noqa: BLE001 - the user's decoder failing on its own latent size is the finding
        raise ModelRefused(f"{route} failed on z of shape {tuple(z.shape)} (the latent size of the encoder's mu): "
                           f"{exc}") from None
    parts = list(out) if isinstance(out, (tuple, list)) else [out]
    pair = decoder_output == "mean_log_var" and len(parts) == 2  # (mean, log_var); else one tensor
    if not (pair or len(parts) == 1) or not all(isinstance(p, torch.Tensor) for p in parts):
        raise ModelRefused(f"{route} returned {len(parts)} outputs; decoder_output {decoder_output!r} expects "
                           f"{'a tensor, or (mean, log_var)' if decoder_output == 'mean_log_var' else 'one tensor'}")
    want = features * (2 if decoder_output == "mean_log_var" and not pair else 1)
    for part in parts:
        if part.shape[0] != len(z) or part[0].numel() != want:
            raise ModelRefused(f"{route} returned shape {tuple(part.shape)} for {len(z)} latents; input_shape "
                               f"{input_shape} needs ({len(z)}, {want}), or ({len(z)}, ...) with {want} values per item")
