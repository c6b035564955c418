"""The `vaeserve` command (vaeserve/cli.py): one entry point for training and serving, importing neither.

`vaeserve.export_model(model, ...)` exports a VAE of your own (docs/own-model.md); torch is imported
only when it is first used, so `import vaeserve` stays light for the serve image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real signature for type checkers and IDEs; at run time, __getattr__ below
    from training.own_model import export_model

__all__ = ["export_model"]


def __getattr__(name: str) -> Any:
    """export_model, imported on first use (PEP 562): it needs torch, which the serve image lacks."""
    if name == "export_model":
        from training.own_model import export_model

        return export_model
    raise AttributeError(f"module 'vaeserve' has no attribute {name!r}")
