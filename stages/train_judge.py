"""Stage train_judge: the CNN that scores generated digits (its test accuracy is a metric).

Usage: python -m stages.train_judge --data data/mnist.npz --model models/judge.pt \
           --metrics metrics/judge.json
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mnistgen import distributed
from mnistgen.classifier import TEST_ACCURACY, JudgeParams, accuracy, train_judge
from mnistgen.data import load_arrays
from mnistgen.images import to_model_input
from mnistgen.models import config_dict
from mnistgen.params import load_section
from mnistgen.progress import Progress
from mnistgen.runtime import prepare, resolve_precision, save_checkpoint, write_json
from mnistgen.stage import parse_args, run
from mnistgen.tracking import runs, store
from mnistgen.tracking.settings import TrackingParams


def main(argv=None):
    args = parse_args(__doc__, ["data", "model", "metrics"], argv)
    params = load_section(args.params, "train_judge", JudgeParams)
    settings = load_section(args.params, "tracking", TrackingParams)
    device, threads = prepare(params)
    world, device = distributed.start(device)
    precision = resolve_precision(params.precision, device, model="judge")
    if world.is_main:
        store.check_store(store.tracking_uri())  # before any work: fail fast
    arrays = load_arrays(args.data)
    limit = params.train_limit or len(arrays["train_images"])
    train_x = to_model_input(arrays["train_images"][:limit])  # (N, 1, 28, 28) in [-1, 1]
    train_y = torch.as_tensor(arrays["train_labels"][:limit]).long()
    fit = dict(params=params, images=train_x, labels=train_y, device=device, precision=precision,
               world=world)
    if not world.is_main:  # other ranks train and leave outputs and logging to rank 0
        train_judge(**fit)
        distributed.shutdown()
        return
    with runs.start_run(stage="train_judge", params=asdict(params), settings=settings) as record:
        record.tags(world_size=world.size, precision=precision)
        progress = Progress("train_judge", total=params.steps(len(train_x)), per_step=params.batch_size)
        start = time.perf_counter()
        model, steps = train_judge(**fit, on_log=record.metric_logger("loss", progress))
        seconds = time.perf_counter() - start
        test_x = to_model_input(arrays["test_images"])
        test_acc = accuracy(model, test_x, torch.as_tensor(arrays["test_labels"]).long(), device)
        progress.done(steps, test_accuracy=test_acc)
        save_checkpoint(Path(args.model), kind="judge", models={"model": model.cpu()},
                        config=config_dict(model), extra={"params": asdict(params)})
        test_acc = round(test_acc, 5)  # what metrics/judge.json says, in the store too
        write_json(Path(args.metrics), {TEST_ACCURACY: test_acc})
        record.dataset(Path(args.data))
        record.metrics({f"final/{TEST_ACCURACY}": test_acc, "final/train_seconds": seconds})
        record.model(Path(args.model))
    distributed.shutdown()
    print(f"train_judge: test accuracy {test_acc:.4f} in {seconds:.1f} s "
          f"({steps * params.batch_size / seconds:.1f} images/s, {threads} threads, {precision})")


if __name__ == "__main__":
    sys.exit(run("train_judge", main))
