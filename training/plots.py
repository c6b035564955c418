"""Pictures of a trained model: samples, reconstructions, interpolation, traversals, curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.latent import interpolate, traverse  # noqa: E402
from model.prior import mixture_sample  # noqa: E402
from model.vae import VAE  # noqa: E402


def image_grid(images: np.ndarray, *, rows: int, cols: int, height: int, width: int) -> np.ndarray:
    """Tile (rows*cols, H*W) images into one (rows*H, cols*W) array with 1-pixel gaps."""
    grid = np.ones((rows * (height + 1) - 1, cols * (width + 1) - 1), dtype=np.float32)
    for i, img in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        grid[r * (height + 1): r * (height + 1) + height, c * (width + 1): c * (width + 1) + width] = img.reshape(height, width)
    return grid


def _save_grid(path: Path, grid: np.ndarray, title: str) -> None:
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 28 * 0.9 + 0.5, grid.shape[0] / 28 * 0.9 + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def save_pictures(model: VAE, x: np.ndarray, out_dir: Path, *, kl_per_dim: list[float], seed: int = 0) -> list[Path]:
    """Sample grid, reconstructions, interpolation strip and latent traversals (image models)."""
    model = model.cpu().eval()
    _, h, w = model.config.input_shape
    d = model.config.latent_dim
    gen = torch.Generator().manual_seed(seed)
    decode = lambda z: model.generate(torch.from_numpy(np.asarray(z, dtype=np.float32))).numpy()  # noqa: E731
    paths = []
    z = torch.randn(64, d, generator=gen)
    if model.prior is not None:  # a VampPrior: draw as /sample does, from the mixture
        with torch.no_grad():
            z = mixture_sample(torch.rand(64, generator=gen), z, *model.prior_components())
    samples = decode(z.numpy())
    paths.append(out_dir / "samples.png")
    _save_grid(paths[-1], image_grid(samples, rows=8, cols=8, height=h, width=w),
               "samples z ~ N(0, I)" if model.prior is None else "samples z ~ VampPrior")
    originals = x[:16]
    recon = model.reconstruct(torch.from_numpy(originals)).numpy()
    paths.append(out_dir / "reconstructions.png")
    _save_grid(paths[-1], image_grid(np.concatenate([originals, recon]), rows=2, cols=16, height=h, width=w),
               "top: inputs, bottom: reconstructions")
    mu, _ = model.encoder(torch.from_numpy(x[:2]))
    strips = [decode(interpolate(mu[0].numpy(), mu[1].numpy(), steps=10, method=m)) for m in ("linear", "slerp")]
    paths.append(out_dir / "interpolation.png")
    _save_grid(paths[-1], image_grid(np.concatenate(strips), rows=2, cols=10, height=h, width=w),
               "interpolation: linear (top), slerp (bottom)")
    dims = [int(j) for j in np.argsort(kl_per_dim)[::-1][:10]]  # the most informative dimensions
    values = np.linspace(-3, 3, 11, dtype=np.float32)
    paths.append(out_dir / "traversals.png")
    _save_grid(paths[-1], image_grid(decode(traverse(mu[0].numpy(), dims=dims, values=values)), rows=len(dims),
                                     cols=len(values), height=h, width=w),
               f"latent traversals -3..3, dims by KL: {dims}")
    return paths


def save_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Training loss, reconstruction, KL and validation -ELBO per epoch."""
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(epochs, [r["loss"] for r in history], label="train loss")
    axes[0].plot(epochs, [r["val_neg_elbo"] for r in history], label="validation -ELBO")
    axes[0].set_ylabel("nats")
    axes[1].plot(epochs, [r["reconstruction_nll"] for r in history], label="reconstruction NLL")
    axes[2].plot(epochs, [r["kl"] for r in history], label="KL")
    axes[2].plot(epochs, [r["active_units"] for r in history], label="active units")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
