"""The VAE (Kingma & Welling 2013): configuration, networks, and the math, written once."""
