"""Small real data for tests that train in seconds."""

from __future__ import annotations


def small_fashion_mnist(*, train_items: int, val_items: int):  # type: ignore[no-untyped-def]
    """The real Fashion-MNIST splits cut to their first items, for training tests that run in seconds."""
    from training.data import load_fashion_mnist

    data = load_fashion_mnist()
    data.train_x, data.val_x = data.train_x[:train_items], data.val_x[:val_items]
    return data


def write_image_folder(root, *, normal: int, anomalies: tuple[int, ...], train_items: int, test_items: int,
                       colour: bool = True, sizes: tuple[int, ...] = (32, 40, 48), formats: tuple[str, ...] = ("PNG", "JPEG"),
                       seed: int = 0):  # type: ignore[no-untyped-def]
    """An MVTec AD-layout folder from real Fashion-MNIST: train/good and test/good hold class `normal`,
    test/<class name> the `anomalies`; colour images are the grey ones tinted by a random hue, written
    at mixed sizes and in mixed formats (what a camera folder looks like). Returns the root."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from training.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    data = load_fashion_mnist(val_fraction=0.5)
    rng = np.random.default_rng(seed)
    root = Path(root)

    def write(folder: Path, images: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, flat in enumerate(images):
            grey = (flat.reshape(28, 28) * 255).astype(np.uint8)
            if colour:
                tint = rng.uniform(0.4, 1.0, size=3)
                image = Image.fromarray((grey[..., None] * tint).astype(np.uint8), mode="RGB")
            else:
                image = Image.fromarray(grey, mode="L")
            side = int(rng.choice(sizes))
            fmt = str(rng.choice(formats))
            image.resize((side, side), Image.Resampling.BILINEAR).save(
                folder / f"{i:05d}.{'jpg' if fmt == 'JPEG' else fmt.lower()}", format=fmt)

    normal_train = data.train_x[data.train_y == normal]
    write(root / "train" / "good", normal_train[:train_items])
    write(root / "test" / "good", data.test_x[data.test_y == normal][:test_items])
    for cls in anomalies:
        name = FASHION_MNIST_CLASSES[cls].replace("/", "-").replace(" ", "-").lower()
        write(root / "test" / name, data.test_x[data.test_y == cls][:test_items // max(1, len(anomalies))])
    return root
