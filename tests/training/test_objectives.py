"""Training options of issue 17: a VampPrior trains its pseudo-inputs, the IWAE objective, the cosine
learning-rate schedule, and the combinations that are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.data import small_fashion_mnist
from model.config import VAEConfig
from model.losses import iwae_bound
from model.vae import VAE
from training.config import TrainConfig
from training.evaluate import score_examples
from training.loop import _iwae_loss, train


@pytest.fixture(scope="module")
def small_data():  # type: ignore[no-untyped-def]
    return small_fashion_mnist(train_items=2000, val_items=300)


def test_a_vampprior_run_learns_its_pseudo_inputs_and_lowers_the_loss(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = VAEConfig(hidden_sizes=(32,), latent_dim=4, prior="vampprior", pseudo_inputs=10)
    untrained = score_examples(VAE(config), small_data.val_x, k=1)["elbo_score"].mean()
    result = train(config, TrainConfig(epochs=2, batch_size=64, lr=2e-3, ema_decay=0), small_data, tmp_path)
    assert result.history[-1]["val_neg_elbo"] < untrained
    assert all(record["kl"] > 0 for record in result.history)
    start = VAE(config).prior  # the same start as train's: its generator, seeded by the seed, draws first
    start.initialize(torch.from_numpy(small_data.train_x), torch.Generator().manual_seed(0))  # type: ignore[union-attr]
    before, after = start.pseudo_inputs().detach(), result.model.prior.pseudo_inputs().detach()  # type: ignore[union-attr]
    moved = (after - before).abs().amax(1)  # (N,) per pseudo-input
    assert torch.all(moved > 1e-3), "every pseudo-input is trained"
    assert 0 < after.min() and after.max() < 1


def test_iwae_loss_is_the_negative_bound_and_anneals_the_kl_part() -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(input_shape=(12,), hidden_sizes=(8,), latent_dim=2))
    terms = vae(torch.rand(4, 12), torch.randn(4, 5, 2))
    torch.testing.assert_close(_iwae_loss(terms, 1.0, global_batch=4), -iwae_bound(terms.log_weights).mean())
    log_px = terms.log_px_features.sum(-1)
    torch.testing.assert_close(_iwae_loss(terms, 0.0, global_batch=4), -iwae_bound(log_px).mean())


def test_an_iwae_run_with_a_cosine_schedule_trains(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = VAEConfig(hidden_sizes=(32,), latent_dim=4)
    untrained = score_examples(VAE(config), small_data.val_x, k=1)["elbo_score"].mean()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, objective="iwae", train_k=4, lr_schedule="cosine")
    result = train(config, cfg, small_data, tmp_path)
    assert result.history[-1]["val_neg_elbo"] < untrained


def test_cosine_schedule_decays_from_lr_to_zero() -> None:
    cfg = TrainConfig(lr=1e-3, lr_schedule="cosine")
    rates = [cfg.lr_at(step, 100) for step in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[50] == pytest.approx(5e-4) and rates[100] == pytest.approx(0)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert TrainConfig(lr=1e-3).lr_at(99, 100) == 1e-3


@pytest.mark.parametrize(("options", "message"), [
    ({"objective": "iwae", "free_bits": 0.1}, "free_bits"),
    ({"train_k": 3}, "train_k"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"objective": "vi"}, "objective"),
])
def test_inconsistent_options_are_refused(options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)
