"""Stage train_gan: a class-conditional GAN (ask for a digit, get it); see mnistgen.gan.

Writes the generator (and its EMA), the discriminator and their configs to one checkpoint;
loss curves and in-training quality (judge accuracy, Fréchet distance) to CSV plots and
MLflow. A resume file, written every `checkpoint_every` steps and on Ctrl-C, lets a stopped
run continue where it stopped instead of starting over.

Usage: python -m stages.train_gan --data data/mnist.npz --judge models/judge.pt \
    --model models/gan.pt --losses plots/gan_losses.csv --quality plots/gan_quality.csv \
    --resume .resume/train_gan.pt
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from mnistgen import distributed
from mnistgen.data import load_arrays
from mnistgen.gan import GanParams, GanState, save_model, train_loop, try_resume
from mnistgen.gan_monitor import LOSS_COLUMNS, QUALITY_COLUMNS, Monitor
from mnistgen.images import to_model_input
from mnistgen.judging import load_judge
from mnistgen.params import load_section
from mnistgen.runtime import prepare, write_csv
from mnistgen.stage import parse_args, run
from mnistgen.tracking import runs, store
from mnistgen.tracking.settings import TrackingParams


def main(argv=None):
    args = parse_args(__doc__, ["data", "judge", "model", "losses", "quality", "resume"], argv)
    params = load_section(args.params, "train_gan", GanParams)
    settings = load_section(args.params, "tracking", TrackingParams)
    device, _ = prepare(params)
    world, device = distributed.start(device)
    arrays = load_arrays(args.data)
    limit = params.train_limit or len(arrays["train_images"])
    images = to_model_input(arrays["train_images"][:limit]).to(device)  # (N, 1, 28, 28) in [-1, 1]
    labels = torch.as_tensor(arrays["train_labels"][:limit]).long().to(device)
    params.check_world(world)
    judge = load_judge(Path(args.judge), device)
    if world.is_main:
        store.check_store(store.tracking_uri())  # before any training: fail fast

    state, digest, resume = GanState(params, device, world), params.digest(), Path(args.resume)
    resumed = try_resume(state, resume, digest)
    run_ = (runs.start_run(stage="train_gan", params=asdict(params), run_id=state.run_id,
                           settings=settings)
            if world.is_main else contextlib.nullcontext())
    with run_ as record:
        monitor = None
        if world.is_main:
            state.run_id = record.run_id
            monitor = Monitor(params=params, judge=judge, arrays=arrays, limit=limit, record=record)
            record.tags(resumed_from_step=state.step if resumed else None, world_size=world.size,
                     precision=state.precision)
            if not resumed:
                record.dataset(Path(args.data))
                monitor.start(state)
        train_loop(state, images=images, labels=labels, p=params, world=world, after_step=monitor,
                   save_resume=lambda s: s.save(resume, digest))
        if world.is_main:
            save_model(state, params, Path(args.model))
            write_csv(Path(args.losses), LOSS_COLUMNS, state.losses)
            write_csv(Path(args.quality), QUALITY_COLUMNS, state.quality)
            record.model(Path(args.model))
    world.barrier()
    distributed.shutdown()
    if world.is_main:
        resume.unlink(missing_ok=True)  # finished: the next run starts afresh
        step, seen, acc, fd, floor = state.quality[-1]
        print(f"train_gan: {state.step} steps{' (resumed)' if resumed else ''}; judge accuracy "
              f"{acc:.4f}, Fréchet distance {fd:.3f} (real test digits: {floor:.3f}) on "
              f"{params.eval_samples} samples")


if __name__ == "__main__":
    sys.exit(run("train_gan", main))
