"""The `vaeserve` command (vaeserve/cli.py): one entry point for training and serving, importing neither."""
