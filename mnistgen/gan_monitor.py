"""What a user watches while the GAN trains: progress lines, loss curves, fixed-noise grids
and judge scores (accuracy, Fréchet distance against a real-vs-real floor), to MLflow and
to the curves the stage writes as CSV plots. Passed to mnistgen.gan.train_loop as after_step."""
from __future__ import annotations

from pathlib import Path

import torch

from mnistgen.gan import GanParams, GanState, balanced_labels, generate, settle_ema
from mnistgen.images import grid
from mnistgen.judging import features_and_predictions, quick_score
from mnistgen.metrics import frechet_distance
from mnistgen.progress import Progress
from mnistgen.runtime import read_csv

# the columns of the curves the stage writes (plots/gan_losses.csv, plots/gan_quality.csv)
LOSS_COLUMNS = ("step", "loss_d", "loss_g")
QUALITY_COLUMNS = ("step", "images_seen", "accuracy", "frechet", "frechet_floor")


def loss_keys() -> dict[str, str]:
    """{column of plots/gan_losses.csv: MLflow metric}."""
    return {column: f"train/{column}" for column in LOSS_COLUMNS[1:]}


def quality_keys(eval_samples: int) -> dict[str, str]:
    """{column of plots/gan_quality.csv: MLflow metric}: the sample count is in the names,
    since these quick scores are not evaluate's (train/frechet_2k on 2,000 digits)."""
    n = eval_samples
    suffix = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return {"accuracy": f"train/judge_accuracy_{suffix}", "frechet": f"train/frechet_{suffix}",
            "frechet_floor": f"train/frechet_floor_{suffix}"}


def read_curves(losses: Path, quality: Path, *, eval_samples: int) -> list[tuple[int, dict]]:
    """[(step, {MLflow metric: value})] of the curves a finished run wrote: what its run
    logged during training, under the same names."""
    points = []
    for keys, path in ((loss_keys(), losses), (quality_keys(eval_samples), quality)):
        for row in read_csv(path):
            points.append((int(row["step"]), {keys[column]: float(row[column]) for column in keys}))
    return points


class Monitor:
    """Rank 0's view of training; build it only on rank 0. `record`: what logs the run
    (the stage's MLflow recorder: metrics, digits, final_digits)."""

    def __init__(self, *, params: GanParams, judge, arrays: dict, limit: int, record):
        self.p, self.judge, self.record = params, judge, record
        self.progress = None  # made at the first step, when the total is known
        fixed = torch.Generator().manual_seed(params.seed + 2)  # the same material every run
        self.eval_labels = balanced_labels(params.eval_samples)
        self.eval_z = torch.randn(params.eval_samples, params.latent_dim, generator=fixed)
        self.grid_labels = balanced_labels(100).view(10, 10).t().reshape(-1)  # row = digit
        ref_idx = torch.randperm(limit, generator=fixed)[:params.eval_samples].numpy()
        self.ref_features, _ = features_and_predictions(judge, arrays["train_images"][:limit][ref_idx])
        # what real test digits score against the same reference with as few samples: the
        # curve's floor (Fréchet distance is biased upward at small sample counts)
        test_idx = torch.randperm(len(arrays["test_images"]), generator=fixed)[:params.eval_samples]
        test_features, _ = features_and_predictions(judge, arrays["test_images"][test_idx.numpy()])
        self.floor = frechet_distance(self.ref_features, test_features)
        self.keys, self.loss_keys = quality_keys(params.eval_samples), loss_keys()

    def start(self, s: GanState):
        """The untrained generator's grid at step 0: MLflow's image chart opens on step 0."""
        settle_ema(s, self.p)
        self.log_grid(s, 0)

    def log_grid(self, s: GanState, step: int):
        picture = grid(generate(s.G_ema, self.grid_labels, self.eval_z[:100]), rows=10)
        self.record.digits(picture, step)
        return picture

    def __call__(self, s: GanState, step: int, total: int, loss_d: float, loss_g: float):
        p, last = self.p, step == total
        if self.progress is None:  # called after every step: a resumed run starts at step - 1
            self.progress = Progress("train_gan", total=total, per_step=p.batch_size,
                                     start_step=step - 1)
        self.progress.update(step, loss_d=loss_d, loss_g=loss_g)
        if step % p.log_every == 0 or last:
            s.losses.append([step, round(loss_d, 6), round(loss_g, 6)])
            self.record.metrics({self.loss_keys["loss_d"]: loss_d, self.loss_keys["loss_g"]: loss_g}, step=step)
        if step % p.sample_every == 0 or step % p.eval_every == 0 or last:
            settle_ema(s, p)  # the grid and scores show what sampling will draw
        if step % p.sample_every == 0 or last:
            picture = self.log_grid(s, step)
            if last:  # rows = digits 0-9, columns = fixed noise
                self.record.final_digits(picture)
        if step % p.eval_every == 0 or last:
            fakes = generate(s.G_ema, self.eval_labels, self.eval_z)
            q = quick_score(self.judge, fakes, self.eval_labels.numpy(), self.ref_features)
            s.quality.append([step, step * p.batch_size, round(q["accuracy"], 5), round(q["frechet"], 4),
                              round(self.floor, 4)])
            self.record.metrics({self.keys["accuracy"]: q["accuracy"], self.keys["frechet"]: q["frechet"],
                              self.keys["frechet_floor"]: self.floor}, step=step)
            self.progress.values.update(judge_accuracy=q["accuracy"], frechet=q["frechet"])
        if last:
            self.progress.done()
