"""Shared code for the draw-MNIST pipeline: params, data, models, metrics, tracking."""
