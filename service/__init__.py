"""The HTTP service: loads exported artifacts and serves them with dynamic batching. No torch."""
