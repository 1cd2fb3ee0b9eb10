"""The seed's classifier turned generator: one-hot label (10) -> W 10x784 + b -> pixels.

softmax (the seed): a softmax over the 784 pixels, loss -sum(y * log softmax) against the
real image y in [0, 1], plain gradient descent. sigmoid (a variant): the same linear map,
a sigmoid per pixel and binary cross-entropy. The model is mnistgen.models.InvertedGenerator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from mnistgen.data import TRAIN_SIZE
from mnistgen.images import grid, to_uint8
from mnistgen.models import InvertedGenerator
from mnistgen.params import ParamsError, RunParams, field

VARIANTS = ("softmax", "sigmoid")
LOSS_METRIC = "loss_per_image"  # what the curves hold: cross-entropy per image


@dataclass
class InvertedParams(RunParams):
    """params.yaml's `train_inverted` section."""
    variants: list[str] = field(choices=VARIANTS,
                                doc="softmax is the seed's model; each variant is its own run")
    lr: float = field(above=0.0, hi=10.0)
    batch_size: int = field(lo=1)
    steps: int = field(lo=1)
    log_every: int = field(lo=1)
    grid_every: int = field(lo=1, doc="log the ten digits to MLflow every N steps")

    def check(self, section):
        super().check(section)
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ParamsError(f"{section}.variants: list each of {list(VARIANTS)} at most once")
        self.check_batch(section, self.batch_size, TRAIN_SIZE)


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels.long(), 10).float()


def digits_picture(model: InvertedGenerator) -> np.ndarray:
    """The ten digits side by side: uint8 (32, 302)."""
    with torch.no_grad():
        digits = onehot(torch.arange(10, device=next(model.parameters()).device))
        return grid(to_uint8(model.intensities(digits), low=0.0), rows=1)


def train_inverted(*, model, images, labels, lr, batch_size, steps, seed, log_every=10,
                   on_log=None, on_grid=None, grid_every=100):
    """images (N, 784) in [0, 1]; labels (N,). Plain SGD on the summed loss, as the seed.
    Returns [(step, loss per image)] every `log_every` steps."""
    if batch_size > len(images):
        raise ParamsError(f"batch_size {batch_size} is larger than the {len(images)} training images")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order, cursor, history = torch.randperm(len(images), generator=gen), 0, []
    if on_grid:  # the untrained model at step 0: MLflow's image chart opens on step 0
        on_grid(0)
    for step in range(1, steps + 1):
        if cursor + batch_size > len(images):  # next epoch, reshuffled (like next_batch)
            order, cursor = torch.randperm(len(images), generator=gen), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        # objective: minimise -sum(y * log p(pixels | label)) (or the per-pixel BCE)
        loss = model.loss(model(onehot(labels[idx])), images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            history.append((step, loss.item() / batch_size))
            if on_log:
                on_log(step, loss.item() / batch_size)
        if on_grid and (step % grid_every == 0 or step == steps):
            on_grid(step)
    return history


def curves_table(curves: dict[str, dict[int, float]]) -> tuple[list[str], list[list[str]]]:
    """Wide table (step, one loss column per variant): one line per variant in `dvc plots`."""
    steps = sorted(set().union(*curves.values()))
    return ["step", *curves], [[str(step)] + [f"{curve[step]:.6f}" for curve in curves.values()]
                               for step in steps]


def read_curve(path, variant: str) -> list[tuple[int, float]]:
    """[(step, loss per image)] of one variant from the table curves_table made."""
    from mnistgen.runtime import read_csv

    return [(int(row["step"]), float(row[variant])) for row in read_csv(path) if row.get(variant)]
