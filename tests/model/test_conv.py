"""The conv architecture: flattened (B, F) in and out, any leading axes on z, exports with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model.config import VAEConfig
from model.vae import VAE

TINY_CONV = VAEConfig(input_shape=(1, 28, 28), hidden_sizes=(16,), latent_dim=3, likelihood="gaussian",
                      architecture="conv")


def test_conv_vae_takes_flat_inputs_and_gives_per_feature_terms_that_train() -> None:
    torch.manual_seed(0)
    vae = VAE(TINY_CONV)
    x, eps = torch.rand(5, 784), torch.randn(5, 4, 3)
    terms = vae(x, eps)
    assert terms.log_px_features.shape == (5, 4, 784)
    assert terms.log_weights.shape == (5, 4)
    assert terms.mu.shape == terms.log_var.shape == terms.kl_dims.shape == (5, 3)
    loss = -terms.log_px_features.sum((1, 2)).mean() / 4 + terms.kl_dims.sum(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in vae.encoder.stem.parameters())


def test_conv_decoder_folds_any_leading_axes_and_restores_them() -> None:
    torch.manual_seed(0)
    decoder = VAE(TINY_CONV).decoder.eval()
    z = torch.randn(2, 5, 3)  # (B, K, D)
    with torch.no_grad():
        batched = decoder(z)
        assert batched.shape == (2, 5, 784)
        assert decoder(z[0, 0]).shape == (784,)
        torch.testing.assert_close(batched[1], decoder(z[1]))  # folding mixes no rows


@pytest.mark.parametrize("shape", [(784,), (1, 3, 30)])
def test_conv_refuses_inputs_that_are_not_images_it_can_halve_twice(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="conv"):
        VAEConfig(input_shape=shape, architecture="conv")


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 32, 32), (3, 27, 45), (1, 5, 7)])
def test_conv_takes_images_of_any_size_and_gives_them_back_at_that_size(shape: tuple[int, ...]) -> None:
    """Odd sides lose a pixel to each halving; the transposed convolutions' output_padding returns it."""
    from model.vae import VAE

    vae = VAE(VAEConfig(input_shape=shape, architecture="conv", hidden_sizes=(16,), latent_dim=3))
    x = torch.rand(2, vae.config.input_dim)
    assert vae.reconstruct(x).shape == x.shape and vae.encoder(x)[0].shape == (2, 3)


def test_configs_saved_before_architecture_existed_load_as_mlp() -> None:
    old = {k: v for k, v in VAEConfig().to_dict().items() if k != "architecture"}
    assert VAEConfig.from_dict(old).architecture == "mlp"
    assert VAEConfig.from_dict(TINY_CONV.to_dict()) == TINY_CONV
    with pytest.raises(ValueError, match="architecture"):
        VAEConfig(architecture="resnet")  # type: ignore[arg-type]


def test_conv_export_passes_parity_and_keeps_batch_and_k_dynamic(tmp_path: Path) -> None:
    from training.export import export_model

    torch.manual_seed(0)
    images = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    manifest = export_model(VAE(TINY_CONV).eval(), {}, tmp_path, train_x=images, val_x=images[:32],
                            name="tiny-conv", version="1")
    assert manifest["config"]["architecture"] == "conv"
    for graph in manifest["parity"]["max_scaled_diff"].values():  # export_model raises above tolerance
        assert graph["onnxruntime"] <= 1e-4 and graph["torchscript"] <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "scorer.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for batch, k in ((1, 1), (3, 9)):
        out = dict(zip(names, session.run(None, {"x": images[:batch], "eps": np.zeros((batch, k, 3), np.float32)})))
        assert out["elbo_score"].shape == (batch,) and out["feature_nll"].shape == (batch, 784)
