"""Logs say what a user must act on, once: posterior collapse is one warning with its meaning and
remedies, and a real ONNX export prints none of torch's notices while other warnings still show."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch

from model.config import VAEConfig
from training.config import TrainConfig
from training.data import load_fashion_mnist
from training.export import _quiet_export, export_onnx
from training.loop import train


def test_collapse_is_one_warning_at_the_end_with_what_it_means(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = load_fashion_mnist()
    data.train_x, data.val_x = data.train_x[:4000], data.val_x[:500]
    with caplog.at_level(logging.INFO, logger="vaeserve"):
        # beta 20 collapses most of the 16 dimensions; a few come back epoch by epoch
        train(VAEConfig(hidden_sizes=(64,), latent_dim=16), TrainConfig(epochs=4, batch_size=128, beta=20.0),
              data, tmp_path)
    records = [r for r in caplog.records if r.name == "vaeserve.train"]
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["collapsed_dims"], "nothing collapsed: the test proves nothing"
    warned = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "posterior collapse" in warned[0].getMessage()
    best = min(history, key=lambda h: h["val_neg_elbo"])
    assert str(best["collapsed_dims"]) in warned[0].getMessage() and "--free-bits" in warned[0].getMessage()
    epoch_lines = [r.getMessage() for r in records if r.getMessage().startswith("epoch")]
    assert [f"active {h['active_units']}/16" in line for h, line in zip(history, epoch_lines)] == [True] * 4
    changes = sum(1 for before, now in zip([{"collapsed_dims": []}, *history], history)
                  if before["collapsed_dims"] != now["collapsed_dims"])
    assert sum("collapsed latent dimensions now" in r.getMessage() for r in records) == changes > 0


class Decoder(torch.nn.Module):
    """The decoder graph's signature, (z) -> x_mean, on a tiny network."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 784)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(z))


def test_export_prints_no_library_notices_but_keeps_other_warnings(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    decoder = Decoder().eval()  # in training mode torch rightly warns, and that warning shows
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_onnx(decoder, (torch.randn(4, 8),), tmp_path / "decoder.onnx", "decoder")
    out = capfd.readouterr()
    assert (tmp_path / "decoder.onnx").stat().st_size > 0
    assert "torchvision" not in out.out + out.err and not seen, (out.err, [str(w.message) for w in seen])

    registry = logging.getLogger("torch.onnx._internal.exporter._registration")  # the logger the notices come from
    kept: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = kept.append  # type: ignore[method-assign]
    registry.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")  # before _quiet_export's filters, which then take precedence
            with _quiet_export():
                registry.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
                registry.warning("Failed to register '%s'. Skipped", "custom::op")
                warnings.warn("# The axis name: batch will not be used, since it shares ...", UserWarning,
                              stacklevel=1)
                warnings.warn("parity looks wrong", UserWarning, stacklevel=1)
    finally:
        registry.removeHandler(handler)
    assert [r.getMessage() for r in kept] == ["Failed to register 'custom::op'. Skipped"]
    assert [str(w.message) for w in seen] == ["parity looks wrong"]
