"""Stage train_inverted: the seed's classifier turned generator, one model per variant.

softmax (the seed): one-hot label (10) -> W 10x784 + b -> softmax over the 784 pixels,
loss -sum(y * log softmax) against the real image y in [0, 1], plain gradient descent.
sigmoid (a variant): the same linear map, a sigmoid per pixel and binary cross-entropy.

Usage: python -m stages.train_inverted --data data/mnist.npz --models models/inverted \
           --plots plots/inverted_loss.csv
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mnistgen import tracking
from mnistgen.data import load_arrays, sha256_file
from mnistgen.images import grid, to_uint8
from mnistgen.models import InvertedConfig, InvertedGenerator, config_dict
from mnistgen.params import ParamsError, RunParams, field, load_section
from mnistgen.progress import Progress
from mnistgen.runtime import (atomic_write_bytes, pick_device, save_checkpoint, set_seed, set_threads,
                              staged)
from mnistgen.stage import parse_args, run

VARIANTS = ("softmax", "sigmoid")


@dataclass
class InvertedParams(RunParams):
    variants: list[str] = field(["softmax", "sigmoid"], choices=VARIANTS,
                                doc="softmax is the seed's model; each variant is its own run")
    lr: float = field(0.01, above=0.0, hi=10.0)
    batch_size: int = field(100, lo=1)
    steps: int = field(1000, lo=1)
    log_every: int = field(10, lo=1)
    grid_every: int = field(100, lo=1, doc="log the ten digits to MLflow every N steps")

    def check(self, section):
        super().check(section)
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ParamsError(f"{section}.variants: list each of {list(VARIANTS)} at most once")


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels.long(), 10).float()


def digits_picture(model: InvertedGenerator) -> np.ndarray:
    with torch.no_grad():
        digits = onehot(torch.arange(10, device=next(model.parameters()).device))
        return grid(to_uint8(model.intensities(digits), low=0.0), rows=1)


def train_inverted(*, model, images, labels, lr, batch_size, steps, seed, log_every=10,
                   on_log=None, on_grid=None, grid_every=100):
    """images (N, 784) in [0, 1]; labels (N,). Plain SGD on the summed loss, as the seed."""
    if batch_size > len(images):
        raise ParamsError(f"batch_size {batch_size} is larger than the {len(images)} training images")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order, cursor, history = torch.randperm(len(images), generator=gen), 0, []
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


def main(argv=None):
    args = parse_args(__doc__, ["data", "models", "plots"], argv)
    params = load_section(args.params, "train_inverted", InvertedParams)
    set_threads(params.threads)
    device = pick_device(params.device)  # params.yaml says cpu: a 10x784 model runs best there
    arrays = load_arrays(args.data)
    images = (torch.as_tensor(arrays["train_images"]).float() / 255.0).to(device)  # (60000, 784) in [0, 1]
    labels = torch.as_tensor(arrays["train_labels"]).long().to(device)
    tracking.check_store(tracking.tracking_uri())  # before any output is touched
    curves = {}
    with staged(Path(args.models)) as staging:
        for variant in params.variants:
            set_seed(params.seed)
            model = InvertedGenerator(InvertedConfig(output=variant)).to(device)
            run_params = {**asdict(params), "variant": variant}
            with tracking.start_run(stage="train_inverted", params=run_params):
                import mlflow

                tracking.log_mnist_input(Path(args.data))
                progress = Progress("train_inverted", total=params.steps, per_step=params.batch_size)

                history = train_inverted(
                    model=model, images=images, labels=labels, lr=params.lr,
                    batch_size=params.batch_size, steps=params.steps, seed=params.seed,
                    log_every=params.log_every, grid_every=params.grid_every,
                    on_log=tracking.metric_logger("loss_per_image", progress),
                    on_grid=lambda s, m=model: tracking.log_image(digits_picture(m), "digits", s))
                path = staging / f"{variant}.pt"
                save_checkpoint(path, kind="inverted", models={"model": model.cpu()},
                                config=config_dict(model), extra={"params": run_params})
                mlflow.set_tag("checkpoint_sha256", sha256_file(path))
                tracking.log_model(model.eval(), name="inverted", example=onehot(torch.arange(10)).numpy())
            progress.done(params.steps)
            curves[variant] = dict(history)
            print(f"train_inverted: {variant}: final loss per image {history[-1][1]:.4f}")
    # wide CSV (step, one loss column per variant): one line per variant in `dvc plots`
    steps = sorted(set().union(*curves.values()))
    rows = [",".join(["step", *curves])] + [
        ",".join([str(step)] + [f"{curve[step]:.6f}" for curve in curves.values()]) for step in steps]
    atomic_write_bytes(Path(args.plots), ("\n".join(rows) + "\n").encode())


if __name__ == "__main__":
    sys.exit(run("train_inverted", main))
