"""Small real data for tests that train in seconds."""

from __future__ import annotations


def small_fashion_mnist(*, train_items: int, val_items: int):  # type: ignore[no-untyped-def]
    """The real Fashion-MNIST splits cut to their first items, for training tests that run in seconds."""
    from training.data import load_fashion_mnist

    data = load_fashion_mnist()
    data.train_x, data.val_x = data.train_x[:train_items], data.val_x[:val_items]
    return data
