"""--resume: a run interrupted after an epoch and resumed ends with the weights of one that was not;
early stopping counts its patience after the KL warm-up; --recipe fills only the options not given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.data import small_fashion_mnist
from model.config import VAEConfig
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.loop import train
from training.recipes import PUBLISHED, apply_recipe
from training.resume import Progress

# A VampPrior, a cosine schedule, the weight average and a KL warm-up that spans the interruption:
# every piece of state the next epoch depends on.
TINY = VAEConfig(hidden_sizes=(32,), latent_dim=4, prior="vampprior", pseudo_inputs=8)
CONFIG = TrainConfig(epochs=4, batch_size=50, lr=2e-3, seed=5, lr_schedule="cosine", kl_warmup_steps=30,
                     ema_decay=0.99)


@pytest.fixture(scope="module")
def small_data():  # type: ignore[no-untyped-def]
    return small_fashion_mnist(train_items=600, val_items=100)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {**{f"average.{k}": v for k, v in payload["state_dict"].items()},
            **{f"raw.{k}": v for k, v in payload["resume"]["model"].items()}}


def test_an_interrupted_and_resumed_run_ends_with_the_uninterrupted_runs_weights(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = train(TINY, CONFIG, small_data, tmp_path / "whole")
    # Interrupted after epoch 2 (as a kill between epochs leaves it), then resumed in a fresh call.
    train(TINY, CONFIG, small_data, tmp_path / "cut", on_epoch=lambda record, _: record["epoch"] == 2)
    assert json.loads((tmp_path / "cut/metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2
    resumed = train(TINY, CONFIG, small_data, tmp_path / "cut", resume=True)

    expected, got = _weights(tmp_path / "whole/last.pt"), _weights(tmp_path / "cut/last.pt")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert [r["val_neg_elbo"] for r in resumed.history] == [r["val_neg_elbo"] for r in whole.history]
    lines = (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    best, _ = load_checkpoint(tmp_path / "cut/best.pt")
    for a, b in zip(best.state_dict().values(), load_checkpoint(tmp_path / "whole/best.pt")[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_resume_refuses_a_run_with_other_options(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    train(TINY, TrainConfig(epochs=1, max_steps=3), small_data, tmp_path)
    with pytest.raises(ValueError, match="other options.*lr"):
        train(TINY, TrainConfig(epochs=2, lr=1e-4), small_data, tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        train(TINY, TrainConfig(epochs=2), small_data, tmp_path / "empty", resume=True)


def test_early_stopping_counts_patience_only_after_the_warm_up() -> None:
    progress = Progress()
    assert progress.observe(10.0, epoch=1, warming_up=True)
    for epoch in (2, 3, 4):  # worse, but inside the warm-up: the count restarts
        assert not progress.observe(11.0, epoch=epoch, warming_up=True)
    assert progress.stale_epochs == 0
    for epoch in (5, 6):
        progress.observe(11.0, epoch=epoch, warming_up=False)
    assert not progress.patience_exhausted(2)  # 2 stale epochs: not more than the patience yet
    progress.observe(11.0, epoch=7, warming_up=False)
    assert progress.patience_exhausted(2) and not progress.patience_exhausted(0)
    assert progress.observe(9.0, epoch=8, warming_up=False) and progress.stale_epochs == 0


def test_a_run_with_patience_stops_early_and_its_resume_runs_nothing_more(small_data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # lr 0: nothing improves after epoch 1 (the average still moves a little, so allow either).
    config = TrainConfig(epochs=20, batch_size=200, lr=1e-12, patience_epochs=2, seed=1)
    result = train(VAEConfig(hidden_sizes=(16,), latent_dim=2), config, small_data, tmp_path)
    assert len(result.history) < 20
    again = train(VAEConfig(hidden_sizes=(16,), latent_dim=2), config, small_data, tmp_path, resume=True)
    assert len(again.history) == len(result.history)


def test_a_recipe_fills_only_the_options_not_given() -> None:
    values = {"lr": 1e-3, "latent_dim": 20, "hidden": [512, 512]}
    applied = apply_recipe("published", values, given={"latent_dim"})
    assert values["lr"] == PUBLISHED["lr"] and values["hidden"] == [300, 300] and values["latent_dim"] == 20
    assert "latent_dim" not in applied
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe("nope", values, given=set())
