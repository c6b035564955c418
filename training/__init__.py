"""Offline training, evaluation, pictures and export of the VAE."""
