"""Stage train_inverted: the seed's classifier turned generator, one model (and one MLflow
run) per variant of params.yaml's train_inverted.variants (see mnistgen.inverted).

Usage: python -m stages.train_inverted --data data/mnist.npz --models models/inverted \
           --plots plots/inverted_loss.csv
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch

from mnistgen.data import load_arrays
from mnistgen.inverted import LOSS_METRIC, InvertedParams, curves_table, digits_picture, train_inverted
from mnistgen.models import InvertedConfig, InvertedGenerator, config_dict
from mnistgen.params import load_section
from mnistgen.progress import Progress
from mnistgen.runtime import prepare, save_checkpoint, set_seed, staged, write_csv
from mnistgen.stage import parse_args, run
from mnistgen.tracking import runs, store
from mnistgen.tracking.settings import TrackingParams


def main(argv=None):
    args = parse_args(__doc__, ["data", "models", "plots"], argv)
    params = load_section(args.params, "train_inverted", InvertedParams)
    settings = load_section(args.params, "tracking", TrackingParams)
    device, _ = prepare(params)  # params.yaml says cpu: a 10x784 model runs best there
    arrays = load_arrays(args.data)
    images = (torch.as_tensor(arrays["train_images"]).float() / 255.0).to(device)  # (60000, 784) in [0, 1]
    labels = torch.as_tensor(arrays["train_labels"]).long().to(device)
    store.check_store(store.tracking_uri())  # before any output is touched
    curves = {}
    with staged(Path(args.models)) as staging:
        for variant in params.variants:
            set_seed(params.seed)
            model = InvertedGenerator(InvertedConfig(output=variant)).to(device)
            run_params = {**asdict(params), "variant": variant}
            with runs.start_run(stage="train_inverted", params=asdict(params), variant=variant,
                                settings=settings) as record:
                record.dataset(Path(args.data))
                progress = Progress("train_inverted", total=params.steps, per_step=params.batch_size)
                history = train_inverted(
                    model=model, images=images, labels=labels, lr=params.lr,
                    batch_size=params.batch_size, steps=params.steps, seed=params.seed,
                    log_every=params.log_every, grid_every=params.grid_every,
                    on_log=record.metric_logger(LOSS_METRIC, progress),
                    on_grid=lambda s, m=model: record.digits(digits_picture(m), s))
                path = staging / f"{variant}.pt"
                save_checkpoint(path, kind="inverted", models={"model": model.cpu()},
                                config=config_dict(model), extra={"params": run_params})
                record.model(path)
                record.final_digits(digits_picture(model))
            progress.done(params.steps)
            curves[variant] = dict(history)
            print(f"train_inverted: {variant}: final loss per image {history[-1][1]:.4f}")
    write_csv(Path(args.plots), *curves_table(curves))


if __name__ == "__main__":
    sys.exit(run("train_inverted", main))
