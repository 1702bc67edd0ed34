"""Training: model, loop, metrics, distributed setup."""
