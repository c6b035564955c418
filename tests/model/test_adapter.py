"""The own-model protocol (model/adapter.py): every shape of user VAE it reads, the math it uses from
model/losses.py, and the plain refusals when a model does not fit. Pure PyTorch, no export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.adapter import (
    AdaptedVAE,
    ModelRefused,
    check_decoder_shape,
    check_outputs,
    resolve_protocol,
)
from model.sigmoid_logits import sigmoid_as_logits

F_IN, D = 12, 3
SHAPE = (3, 2, 2)


class Gaussian(nn.Module):
    """An encoder module returning (mu, log_var)."""

    def __init__(self, n_in: int = F_IN) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(1), nn.Linear(n_in, 8), nn.ReLU())
        self.mu, self.log_var = nn.Linear(8, D), nn.Linear(8, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.log_var(h)


class WithSubmodules(nn.Module):
    """The tutorial's shape: `encoder` and `decoder` submodules, a Sigmoid at the end, forward (recon, mu, log_var)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Gaussian()
        self.decoder = nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, F_IN), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x)
        return self.decoder(mu), mu, log_var


class ForwardOnly(nn.Module):
    """No encode and no encoder: forward returns [recon, input, mu, log_var] (PyTorch-VAE's order)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Gaussian()
        self.decoder = nn.Linear(D, F_IN)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mu, log_var = self.net(x)
        return [self.decoder(mu), x, mu, log_var]


class ShapedMethods(nn.Module):
    """encode/decode methods on (B, C, H, W) items, encode returning a list."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = Gaussian(16)
        self.out = nn.Linear(D, F_IN)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.head(self.conv(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(z).view(-1, *SHAPE)


def probe(n: int = 4) -> torch.Tensor:
    return torch.rand(n, F_IN, generator=torch.Generator().manual_seed(0))


def test_encoder_submodule_and_flat_items() -> None:
    protocol = resolve_protocol(WithSubmodules().eval(), probe(), input_shape=SHAPE)
    assert (protocol.encode, protocol.decode, protocol.layout, protocol.latent_dim) == ("encoder", "decoder", "flat", D)


def test_forward_list_is_read_for_mu_and_log_var() -> None:
    model = ForwardOnly().eval()
    protocol = resolve_protocol(model, probe(), input_shape=(F_IN,))
    assert (protocol.encode, protocol.posterior_at) == ("forward", 2)
    vae = AdaptedVAE(model, protocol, input_shape=(F_IN,), decoder_output="logits")
    mu, log_var = vae.encode(probe())
    assert torch.equal(mu, model.net(probe())[0]) and torch.equal(log_var, model.net(probe())[1])


def test_an_encoder_of_features_only_falls_through_to_forward() -> None:
    class FeatureEncoder(WithSubmodules):  # PyTorch-VAE's naming: `encoder` gives hidden features, not a posterior
        def __init__(self) -> None:
            super().__init__()
            self.head = self.encoder
            self.encoder = nn.Sequential(nn.Identity())

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            mu, log_var = self.head(self.encoder(x))
            return self.decoder(mu), mu, log_var

    protocol = resolve_protocol(FeatureEncoder().eval(), probe(), input_shape=(F_IN,))
    assert (protocol.encode, protocol.posterior_at) == ("forward", 1)


def test_shaped_items_are_tried_when_flat_ones_fail() -> None:
    model = ShapedMethods().eval()
    protocol = resolve_protocol(model, probe(), input_shape=SHAPE)
    assert (protocol.encode, protocol.layout) == ("encode", "shaped")
    vae = AdaptedVAE(model, protocol, input_shape=SHAPE, decoder_output="mean", gaussian_log_var=0.0)
    assert torch.equal(vae.encode(probe())[0], model.encode(probe().view(-1, *SHAPE))[0])
    assert vae.decode(torch.zeros(2, 5, D)).shape == (2, 5, F_IN)  # (B, K) folded into one batch axis and back


def test_a_model_without_encode_is_refused_naming_what_it_has() -> None:
    class NoEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk, self.decoder = nn.Linear(F_IN, D), nn.Linear(D, F_IN)

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return self.trunk(x)

    with pytest.raises(ModelRefused, match=r"no way to encode.*encode\(x\) -> \(mu, log_var\).*"
                                           r"submodules \['trunk', 'decoder'\], methods \['embed'\]"):
        resolve_protocol(NoEncoder(), probe(), input_shape=(F_IN,))


def test_forward_with_unknown_outputs_is_refused() -> None:
    class FiveOutputs(ForwardOnly):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            mu, log_var = self.net(x)
            return [self.decoder(mu), mu, log_var, mu, x]  # (..., z?): which two are the posterior is unknowable

    with pytest.raises(ModelRefused, match=r"forward\(x\) on x of shape \(4, 12\): returned 5 outputs"):
        resolve_protocol(FiveOutputs(), probe(), input_shape=(F_IN,))


def test_declared_outputs_must_fit_the_likelihood() -> None:
    with pytest.raises(ModelRefused, match="'probs' is a bernoulli decoder"):
        check_outputs("gaussian", "probs", None)
    with pytest.raises(ModelRefused, match="gaussian_log_var"):
        check_outputs("gaussian", "mean", None)
    check_outputs("gaussian", "mean_log_var", None)


def test_decoder_of_the_wrong_size_is_refused() -> None:
    model = WithSubmodules().eval()
    protocol = resolve_protocol(model, probe(), input_shape=SHAPE)
    with pytest.raises(ModelRefused, match=r"returned shape \(3, 12\).*needs \(3, 24\)"):
        check_decoder_shape(model, protocol, torch.zeros(3, D), input_shape=SHAPE, decoder_output="mean_log_var")


def test_log_likelihoods_are_the_losses_of_model_losses() -> None:
    x, z = probe(), torch.randn(4, D)
    model = WithSubmodules().eval()
    protocol = resolve_protocol(model, x, input_shape=SHAPE)
    probs = AdaptedVAE(model, protocol, input_shape=SHAPE, decoder_output="probs")
    p = model.decoder(z)
    torch.testing.assert_close(probs.log_prob(probs.decode(z), x), -F.binary_cross_entropy(p, x, reduction="none"))
    gaussian = AdaptedVAE(model, protocol, input_shape=SHAPE, decoder_output="mean", gaussian_log_var=-1.0)
    want = torch.distributions.Normal(p, torch.exp(torch.tensor(-0.5))).log_prob(x)
    torch.testing.assert_close(gaussian.log_prob(gaussian.decode(z), x), want)
    both = AdaptedVAE(model, protocol, input_shape=(F_IN // 2,), decoder_output="mean_log_var")
    mean, log_var = both.decode(z)  # one tensor of 2F: the mean's half first
    assert torch.equal(mean, p[:, :6]) and torch.equal(log_var, p[:, 6:])


def test_a_final_sigmoid_is_read_as_logits_and_put_back() -> None:
    model = WithSubmodules().eval()
    protocol = resolve_protocol(model, probe(), input_shape=SHAPE)
    z = torch.randn(5, D)
    with torch.no_grad():
        probs = model.decoder(z)
        with sigmoid_as_logits(model, protocol, z) as name:
            assert name == "decoder.3" and isinstance(model.decoder[3], nn.Identity)
            assert torch.equal(torch.sigmoid(model.decoder(z)), probs)
    assert isinstance(model.decoder[3], nn.Sigmoid) and torch.equal(model.decoder(z), probs)


def test_a_functional_sigmoid_stays_probabilities() -> None:
    class Functional(WithSubmodules):
        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.decoder[:3](z))

    model = Functional().eval()
    protocol = resolve_protocol(model, probe(), input_shape=SHAPE)
    with sigmoid_as_logits(model, protocol, torch.randn(5, D)) as name:
        assert name is None
