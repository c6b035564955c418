"""Training: a short real run lowers the loss, checkpoints round-trip, collapse is detected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import small_fashion_mnist
from model.config import VAEConfig
from model.vae import VAE
from training.averaging import WeightAverage
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.evaluate import auroc, collapsed_dimensions, latent_statistics, score_examples
from training.loop import train


@pytest.fixture(scope="module")
def small_data():  # type: ignore[no-untyped-def]
    return small_fashion_mnist(train_items=4000, val_items=500)


def test_a_short_real_training_run_lowers_the_validation_loss(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = VAEConfig(hidden_sizes=(128,), latent_dim=8)
    untrained = score_examples(VAE(config), small_data.val_x, k=1)["elbo_score"].mean()
    result = train(config, TrainConfig(epochs=3, batch_size=64, lr=2e-3), small_data, tmp_path)
    losses = [r["val_neg_elbo"] for r in result.history]
    assert losses[-1] < losses[0] < untrained
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert {"loss", "reconstruction_nll", "kl", "active_units", "seconds", "examples_per_s"} <= json.loads(lines[0]).keys()


def test_training_is_reproducible_for_a_seed(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = VAEConfig(hidden_sizes=(32,), latent_dim=4)
    runs = [train(config, TrainConfig(epochs=1, max_steps=20, seed=3), small_data, tmp_path / str(i)) for i in range(2)]
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_round_trip_restores_weights_and_config(tmp_path: Path) -> None:
    model = VAE(VAEConfig(input_shape=(6,), hidden_sizes=(8,), latent_dim=2, likelihood="gaussian"))
    save_checkpoint(tmp_path / "m.pt", model=model, extra={"train_config": {"epochs": 1}, "standardization": {"mean": [0.0] * 6, "std": [1.0] * 6}})
    restored, payload = load_checkpoint(tmp_path / "m.pt")
    assert restored.config == model.config
    assert payload["train_config"] == {"epochs": 1}
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_collapse_detection_flags_a_constructed_collapsed_model(small_data) -> None:  # type: ignore[no-untyped-def]
    model = VAE(VAEConfig(hidden_sizes=(32,), latent_dim=4))
    with torch.no_grad():  # q(z|x) = N(0, I) for every x: the posterior has collapsed onto the prior
        for layer in (model.encoder.to_mu, model.encoder.to_log_var):
            layer.weight.zero_()
            layer.bias.zero_()
        model.encoder.to_mu.weight[0].normal_()  # ...except dimension 0
    stats = latent_statistics(model, small_data.val_x)
    collapsed = collapsed_dimensions(stats["kl_per_dim"], stats["activity_per_dim"], kl_threshold=0.01, active_threshold=0.01)
    assert collapsed == [1, 2, 3]
    assert stats["active_units"] == 1


def test_auroc_matches_scikit_learn_including_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding makes ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_the_weight_average_warms_up_then_follows_its_decay() -> None:
    model = VAE(VAEConfig(hidden_sizes=(4,), latent_dim=2))
    first = model.decoder.net[0].weight
    with torch.no_grad():
        first.fill_(0.0)
    average = WeightAverage(model, decay=0.2)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], start=1):
        with torch.no_grad():
            first.fill_(value)
        average.update()
        keep = min(0.2, (1 + n) / (20 + n))  # the warm-up (2/21, 3/22, 4/23) then the decay (0.2)
        expected = keep * expected + (1 - keep) * value
    torch.testing.assert_close(average.module.decoder.net[0].weight, torch.full_like(first, expected))
    assert not average.module.decoder.net[0].weight.requires_grad


def test_checkpoints_and_the_returned_model_hold_the_averaged_weights(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = VAEConfig(hidden_sizes=(32,), latent_dim=4)
    plain = train(config, TrainConfig(epochs=1, max_steps=30, seed=1, ema_decay=0.0), small_data, tmp_path / "plain")
    ema = train(config, TrainConfig(epochs=1, max_steps=30, seed=1), small_data, tmp_path / "ema")
    raw_weight, ema_weight = plain.model.decoder.net[0].weight, ema.model.decoder.net[0].weight
    assert not torch.allclose(raw_weight, ema_weight)  # same run, so the difference is the averaging
    saved, _ = load_checkpoint(ema.last_path)
    torch.testing.assert_close(saved.decoder.net[0].weight, ema_weight)
